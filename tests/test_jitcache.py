"""Numba's on-disk cache never serves a wrong kernel: not one compiled by another symgrad, not one another process
wrote under the same entry, not another function's.

Numba checks a cached function against its own file only, but a cached generated `_loss_grad` or `_train_epoch`
carries the compiled code of the runtime it calls (the products, Adam, the finiteness gate). So every symgrad entry's
stamp includes `jitcache.package_digest()`: these tests change that digest and check Numba compiles again.

Numba's index update is unlocked and its load does not check what it loads; CI once computed exp where expm1 was
asked (the dtype dispatch of all scalar forms shared one index, appended to by every new spec's compile). The
tests below tamper with entries, race processes on one index, and check that a new spec adds nothing to the
runtime's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from symgrad.backends.cpu import jitcache

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys
import numpy as np
import symgrad
from symgrad.backends.cpu import jitcache
if sys.argv[2] != "-":
    jitcache._DIGEST[:] = [sys.argv[2]]  # as if symgrad's sources were different
m = symgrad.load(sys.argv[1])
m.loss_and_grad(m.init_params(), {"x": np.ones(3), "y": np.zeros(3)})
print("STATS", sum(m._loss_grad.stats.cache_hits.values()), sum(m._loss_grad.stats.cache_misses.values()))
"""


def _run(spec: Path, cache: Path, digest: str) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYMGRAD_CACHE": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(spec), digest], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("STATS"))
    hits, misses = line.split()[1:]
    return int(hits), int(misses)


def test_the_digest_changes_with_any_source_file(tmp_path):
    tree = tmp_path / "pkg"
    (tree / "runtime").mkdir(parents=True)
    (tree / "runtime" / "optim.py").write_text("x = 1\n")
    (tree / "notes.txt").write_text("not source")
    before = jitcache.tree_digest(tree)
    (tree / "notes.txt").write_text("edited")  # not a source file: same digest
    assert jitcache.tree_digest(tree) == before
    (tree / "runtime" / "optim.py").write_text("x = 2\n")
    assert jitcache.tree_digest(tree) != before
    assert jitcache.package_digest() == jitcache.tree_digest(Path(jitcache._PACKAGE))  # symgrad's own sources


@pytest.mark.slow
def test_cached_kernels_are_recompiled_when_symgrad_changes(tmp_path):
    spec = tmp_path / "linreg.yaml"
    spec.write_text((ROOT / "specs" / "linreg.yaml").read_text())
    cache = tmp_path / "cache"
    assert _run(spec, cache, "a")[0] == 0  # first load: compiled
    assert _run(spec, cache, "a")[0] > 0  # same symgrad: served from the cache
    hits, misses = _run(spec, cache, "b")  # another symgrad: compiled again, not served
    assert hits == 0 and misses > 0


FORMS = "exp(w[i]) + expm1(w[i]) + tanh(w[i]) + sigmoid(w[i]) + softplus(w[i]) + log(1 + w[i]**2) + log1p(w[i]**2)"

LOSS = r"""
import sys
import numpy as np
import symgrad
m = symgrad.load(sys.argv[1])
for dtype in (np.float64, np.float32):
    print("LOSS", dtype.__name__, repr(float(m.loss(m.init_params(0, dtype=dtype)))))
"""


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYMGRAD_CACHE": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def _losses(spec: Path, cache: Path) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, "-c", LOSS, str(spec)], env=_env(cache), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {w[1]: float(w[2]) for w in (x.split() for x in r.stdout.splitlines()) if w[0] == "LOSS"}


def _spec(tmp_path: Path, name: str, loss: str, init: float = 0.3) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nparams: {{w: {{shape: [3], init: {init}}}}}\nloss: sum({loss}, i)\n")
    return path


def _runtime_entries(cache: Path) -> dict[str, bytes]:
    """symgrad's own runtime entries (not the generated modules'): file name -> bytes."""
    return {
        p.name: p.read_bytes()
        for d in (cache / "numba").iterdir()
        if "-" not in d.name  # a generated module's directory is named <spec>-<hash>-<version>-...
        for p in d.glob("*.nb*")
    }


@pytest.mark.slow
def test_a_new_spec_adds_nothing_to_the_runtime_cache(tmp_path):
    """Every runtime function's cache key is the same in every process: a second spec calling the same scalar
    forms and products compiles its own kernels only. (The dtype dispatch was a closure over a dispatcher, whose
    pickle carries a random uuid: each new spec appended ~4 entries to an index all the forms shared.)"""
    cache = tmp_path / "cache"
    _losses(_spec(tmp_path, "first", FORMS), cache)
    before = _runtime_entries(cache)
    assert any("_expm1_64" in n for n in before) and any("_expm1_32" in n for n in before)
    _losses(_spec(tmp_path, "second", FORMS + " + w[i]**3"), cache)
    after = _runtime_entries(cache)
    assert sorted(after) == sorted(before)
    assert [n for n in after if after[n] != before[n]] == []


@pytest.mark.slow
def test_a_wrong_entry_is_never_served(tmp_path):
    """The entry of another function (same bytecode: Numba's key alone cannot tell `math.exp` from `math.expm1`)
    or of another signature of the same function, put in an entry's place, is refused and compiled again."""
    cache = tmp_path / "cache"
    x = 1e-3
    _losses(_spec(tmp_path, "seed", "exp(w[i]) + expm1(w[i])", init=x), cache)
    [runtime] = [d for d in (cache / "numba").iterdir() if d.name.startswith("cpu_")]
    exp64, expm1_64 = (next(runtime.glob(f"mathfns.{f}-*.1.nbc")) for f in ("_exp_64", "_expm1_64"))
    expm1_64.write_bytes(exp64.read_bytes())  # expm1's entry now holds exp's code: what CI served
    totals = sorted(runtime.glob("mathfns.total-*.nbc"))
    assert len(totals) == 2  # float64 and float32
    one, two = (p.read_bytes() for p in totals)
    totals[0].write_bytes(two)  # each signature's entry holds the other's code
    totals[1].write_bytes(one)
    got = _losses(_spec(tmp_path, "probe", "expm1(w[i])", init=x), cache)
    assert got["float64"] == pytest.approx(3 * np.expm1(x), rel=1e-12)
    assert got["float32"] == pytest.approx(3 * np.expm1(x), rel=1e-5)


@pytest.mark.slow
def test_an_entry_that_cannot_be_read_is_compiled_again(tmp_path):
    """A cache entry that does not unpickle (truncated by a full disk, or saved by a module loaded under a name that
    cannot be imported now: Numba raised `ModuleNotFoundError: '<dynamic>'` from inside its cache) is a miss, in
    symgrad's cache and in Numba's own one alike, never a traceback."""
    cache = tmp_path / "cache"
    spec = _spec(tmp_path, "seed", "exp(w[i]) + expm1(w[i])", init=1e-3)
    _losses(spec, cache)
    entries = sorted((cache / "numba").rglob("*.nbc"))
    assert entries
    for p in entries:
        p.write_bytes(p.read_bytes()[:7])  # every entry truncated
    got = _losses(spec, cache)
    assert got["float64"] == pytest.approx(3 * (np.exp(1e-3) + np.expm1(1e-3)), rel=1e-12)

    user = tmp_path / "usermod.py"  # a user's own cached function, in Numba's cache, beside symgrad
    user.write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1.0\n")
    env = {**_env(cache), "NUMBA_CACHE_DIR": str(tmp_path / "nb"), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    script = "import symgrad.runtime.optim, usermod; print('F', usermod.f(1.0))"
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "F 2.0" in r.stdout, r.stderr[-3000:]
        for p in (tmp_path / "nb").rglob("*.nbc"):
            p.write_bytes(p.read_bytes()[:7])


RACE = r"""
import sys
import time
import numpy as np
from symgrad.backends.cpu import mathfns
ndim, dtype, start = int(sys.argv[1]), np.dtype(sys.argv[2]), float(sys.argv[3])
a = np.ones((3,) * ndim, dtype)
time.sleep(max(0.0, start - time.time()))  # all processes compile and save at the same moment
print("TOTAL", float(mathfns.total(a)))
"""


@pytest.mark.slow
def test_processes_saving_one_function_at_once_keep_every_entry(tmp_path):
    """Four processes compile four signatures of one runtime function together (as MPI ranks and the warm-up
    worker do): afterwards each signature loads from the cache with its own code, none lost or crossed."""
    cache = tmp_path / "cache"
    sigs = [(1, "float64"), (1, "float32"), (2, "float64"), (2, "float32")]
    for rnd in range(2):
        start = time.time() + 4.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, str(nd), dt, str(start)],
                env=_env(cache / str(rnd)),
                stdout=subprocess.PIPE,
                text=True,
            )
            for nd, dt in sigs
        ]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        [runtime] = [d for d in (cache / str(rnd) / "numba").iterdir() if d.name.startswith("cpu_")]
        assert len(list(runtime.glob("mathfns.total-*.nbc"))) == len(sigs)  # no entry lost
        check = r"""
import json
import sys
import numpy as np
from symgrad.backends.cpu import mathfns
for nd, dt in json.loads(sys.argv[1]):
    a = np.arange(3.0 ** nd, dtype=dt).reshape((3,) * nd)
    assert float(mathfns.total(a)) == float(a.sum()), (nd, dt)
    assert mathfns.total.stats.cache_hits, (nd, dt)
print("OK", sum(mathfns.total.stats.cache_misses.values()))
"""
        r = subprocess.run(
            [sys.executable, "-c", check, json.dumps(sigs)],
            env=_env(cache / str(rnd)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "OK 0" in r.stdout  # every signature served from the cache, each with its own code


def test_the_index_lock_never_stops_a_compile(tmp_path, monkeypatch):
    """No directory yet, a link in the lock's place, a file system without flock: the compile goes on unlocked
    (the entry check alone keeps wrong code out)."""
    import fcntl

    ran = []
    with jitcache._dir_lock(str(tmp_path / "absent"), exclusive=True):
        ran.append("absent")
    (tmp_path / ".index.flock").symlink_to(tmp_path / "target")  # dangling: following it would create the target
    with jitcache._dir_lock(str(tmp_path), exclusive=True):
        ran.append("link")
    assert not (tmp_path / "target").exists()

    def no_locks(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "nfs").mkdir()
    with jitcache._dir_lock(str(tmp_path / "nfs"), exclusive=False):
        ran.append("nfs")
    assert ran == ["absent", "link", "nfs"]
