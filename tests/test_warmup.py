"""The background warm-up (symgrad.runtime.warmup): what it compiles is what a first training step looks up, it
starts once per machine, and it stays out of the way where it cannot help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from symgrad.runtime import warmup

ROOT = Path(__file__).resolve().parents[1]

FIRST_STEP = r"""
import json
import sys
import numpy as np
from numba.core import event

compiled = []


class Listener(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        fn = ev.data["dispatcher"].py_func
        compiled.append(fn.__module__.split(".")[0] + ":" + fn.__qualname__)


event.register("numba:compile", Listener())
import symgrad

dtype = np.dtype(sys.argv[2])
m = symgrad.load(sys.argv[1])
params = {k: v.astype(dtype) for k, v in m.init_params(0).items()}
rng = np.random.default_rng(0)
data = {name: rng.random((16, *shape)).astype(dtype) for name, shape, _ in m.INPUTS}
symgrad.train(m, data, optimizer=symgrad.Adam(1e-3), params=params, epochs=1, batch_size=8, progress=False)
print("COMPILED", json.dumps(sorted(set(compiled))))
"""


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYMGRAD_CACHE": str(cache), **extra}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def _py(code: str, *args: str, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_first_step_finds_the_warmed_runtime_in_the_cache(tmp_path, dtype):
    """Argument types must match exactly for Numba to reuse an entry: a warm-up that compiles other signatures
    would cost a core and save nothing. After it, a first step (a spec new to this cache, products, tanh, exp,
    softplus, Adam) compiles none of symgrad's own kernels, the dtype dispatch of the scalar forms included (it
    used to be a closure whose cache key changed in every process)."""
    cache = tmp_path / "cache"
    env = _env(cache, SYMGRAD_WARMUP="0")
    _py(f"from symgrad.runtime import warmup; warmup.compile_runtime({dtype!r})", env=env)
    spec = tmp_path / "vae.yaml"
    spec.write_text((ROOT / "specs" / "vae.yaml").read_text())
    out = _py(FIRST_STEP, str(spec), dtype, env=env)
    names = json.loads(out.split("COMPILED", 1)[1])
    assert any(n.startswith("symgrad_generated:") for n in names), f"the spec's own kernels compile: {names}"
    assert [n for n in names if n.startswith("symgrad:")] == []


@pytest.mark.slow
def test_start_runs_one_worker_then_the_machine_is_warm(tmp_path):
    code = r"""
from symgrad.runtime import warmup
first = warmup.start("float32")
second = warmup.start("float32")  # the worker holds the lock
warmup.wait()
print("RESULT", first, second, warmup._marker("float32").exists(), warmup.start("float32"))
"""
    out = _py(code, env=_env(tmp_path / "cache", SYMGRAD_WARMUP="1"))
    assert "RESULT True False True False" in out
    assert not list((tmp_path / "cache").rglob("*.lock"))


def test_no_worker_where_it_cannot_help(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path))
    monkeypatch.setenv("SYMGRAD_WARMUP", "0")
    assert warmup.start("float32") is False  # turned off (as in this suite)
    monkeypatch.setenv("SYMGRAD_WARMUP", "1")
    assert warmup.start("float16") is False  # not a dtype symgrad trains in
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    assert warmup.start("float32") is False  # nothing to compile
    monkeypatch.delenv("NUMBA_DISABLE_JIT")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert warmup.start("float32") is False  # an MPI job: its ranks take the cores
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert warmup.start("float32") is False  # one core: it would only compete with the first step
    assert not list(tmp_path.rglob("*"))  # and none of these wrote anything


class _FakeWorker:
    pid = 4242

    def __init__(self, argv, **kwargs):
        self.argv = argv
        _FakeWorker.started.append(argv)

    started: list = []


def test_on_by_default_and_a_dead_workers_lock_is_taken_over(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path))
    monkeypatch.delenv("SYMGRAD_WARMUP")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    monkeypatch.setattr(warmup.subprocess, "Popen", _FakeWorker)
    monkeypatch.setattr(warmup, "_WORKERS", [])
    _FakeWorker.started = []
    marker = warmup._marker("float32")
    lock = marker.with_name(marker.name + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(gone.stdout)  # the PID of a process that has exited
    assert warmup.start("float32") is True  # on without SYMGRAD_WARMUP; the dead worker's lock is taken over
    assert lock.read_text() == "4242\n"  # the new worker's PID, for the next check
    assert _FakeWorker.started[0][1] == "-c"  # not -m: the working directory is not searched first
    lock.write_text(f"{os.getpid()}\n")  # a live worker's lock
    assert warmup.start("float32") is False


@pytest.mark.slow
def test_the_worker_imports_symgrad_from_where_training_did(tmp_path):
    """A user's own `symgrad/` in the working directory is not what the worker runs."""
    shadow = tmp_path / "work" / "symgrad"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("open(__file__ + '.imported', 'w').close()\nraise SystemExit(3)\n")
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from symgrad.runtime import warmup\n"
        "print('STARTED', warmup.start('float64')); warmup.wait()\n"
        "print('MARK', warmup._marker('float64').read_text())\n"
    )
    env = _env(tmp_path / "cache", SYMGRAD_WARMUP="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=shadow.parent, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "STARTED True" in r.stdout and " ok" in r.stdout.split("MARK", 1)[1]
    assert not (shadow / "__init__.py.imported").exists()


def test_used_forms_are_read_from_the_module_in_call_order():
    import symgrad

    vae = symgrad.load(ROOT / "specs" / "vae.yaml")
    forms = warmup.used_forms(vae)
    assert {"tanh", "exp"} <= set(forms) and len(forms) == len(set(forms))
    assert set(forms) <= set(warmup._FORMS) | set(warmup._PLAIN)
    assert warmup.used_forms(None) == []
