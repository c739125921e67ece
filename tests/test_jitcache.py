"""Numba's on-disk cache never serves kernels compiled by another symgrad.

Numba checks a cached function against its own file only, but a cached generated `_loss_grad` or `_train_epoch`
carries the compiled code of the runtime it calls (the products, Adam, the finiteness gate). So every symgrad entry's
stamp includes `jitcache.package_digest()`: these tests change that digest and check Numba compiles again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
