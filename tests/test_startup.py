"""Start-up cost guards: what a kernel calls is compiled once per signature, SciPy's BLAS loads without scipy.linalg.

Speed itself is measured in bench/ (`python -m bench`: cold, new-spec and warm first step); these tests pin the
properties those figures rest on, so a change that quietly brings back per-call-site compilation fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from numba import types

import symgrad
from symgrad.backends.cpu import mathfns as mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_loss_grad(path: str, dtype) -> None:
    m = symgrad.load(path)
    theta = m.flatten(m.init_params(0), dtype)
    ins = [np.zeros((3, *shape), dtype) for _, shape, _ in m.INPUTS]
    m._loss_grad(theta, np.zeros_like(theta), np.zeros(max(1, len(m.CONSTANTS))), 1.0, *ins)


def _literal(t) -> bool:
    if isinstance(t, types.Literal):
        return True
    return isinstance(t, types.BaseTuple) and any(_literal(x) for x in t.types)


def test_helpers_compile_per_type_not_per_literal(tmp_path, monkeypatch):
    """Offsets and shapes are literals at every call site; a helper compiled for them would be compiled again for
    every parameter of every new spec (the cold start this design removed)."""
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path))  # fresh modules: their kernels are typed, not loaded
    for path in ("bench/specs/w3.yaml", "specs/vae.yaml", "specs/cnn_digits.yaml"):
        _run_loss_grad(os.path.join(ROOT, path), np.float32)
    for fn in (mf.gemm, mf.gemm_acc, mf.total, mf.zeros):
        for sig in fn.signatures:
            assert not any(_literal(t) for t in sig), (fn, sig)
    assert mf.gemm.signatures, "the products were never typed"
    # slot (views of theta, grad and the workspace) is a Numba builtin: nothing is compiled for it at all
    assert not hasattr(mf.slot, "signatures")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_blas_preload_keeps_scipy_linalg_whole():
    """symgrad's kernels run without importing scipy.linalg; importing it afterwards gives the whole package, with
    `cython_blas` where an ordinary import puts it, and scipy.linalg already imported is left alone."""
    p = _python(
        """
        import sys
        import numpy as np
        import symgrad
        m = symgrad.load("specs/linreg.yaml")
        v = m.loss(m.init_params(0), {"x": np.arange(3.0), "y": np.ones(3)})
        assert "scipy.linalg" not in sys.modules and "scipy.linalg.cython_blas" in sys.modules
        import scipy.linalg
        import scipy.linalg.cython_blas as cb
        assert scipy.linalg.cython_blas is cb is sys.modules["scipy.linalg.cython_blas"]
        assert np.allclose(scipy.linalg.inv(np.diag([2.0, 4.0])), np.diag([0.5, 0.25]))
        print("ok", v)
        """
    )
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-2000:]
    q = _python(
        """
        import sys
        import scipy.linalg
        import numpy as np
        import symgrad
        from symgrad.backends.cpu import blasload
        assert not blasload.preload()
        m = symgrad.load("specs/linreg.yaml")
        print("ok", m.loss(m.init_params(0), {"x": np.arange(3.0), "y": np.ones(3)}))
        """
    )
    assert q.returncode == 0 and q.stdout.startswith("ok"), q.stderr[-2000:]


def test_slot_is_the_reshaped_slice():
    """The intrinsic view equals flat[lo:lo + size].reshape(shape) for every rank, literal or run-time offsets and
    shapes, both dtypes; writes go through to the buffer, and a view outlives the caller's reference to it."""
    from numba import njit

    @njit
    def views(flat, n):
        return (
            mf.slot(flat, 3, ()),
            mf.slot(flat, 1, (4,)),
            mf.slot(flat, n, (n, 3)),
            mf.slot(flat, 2, (2, n, 2)),
        )

    @njit
    def fresh(n):
        return mf.slot(np.arange(n * 1.0), 2, (2, 3))  # the only reference to the buffer is the view's

    for dtype in (np.float64, np.float32):
        flat = np.arange(40, dtype=dtype)
        a, b, c, d = views(flat, 5)
        assert a.shape == () and a[()] == 3
        np.testing.assert_array_equal(b, flat[1:5])
        np.testing.assert_array_equal(c, flat[5:20].reshape(5, 3))
        np.testing.assert_array_equal(d, flat[2:22].reshape(2, 5, 2))
        assert c.flags.c_contiguous and c.dtype == dtype
        c[1, 2] = -1.0
        assert flat[5 + 5] == -1.0
    np.testing.assert_array_equal(fresh(10), np.arange(2.0, 8.0).reshape(2, 3))
    flat = np.arange(40.0)  # and the pure-Python form (NUMBA_DISABLE_JIT, the fuzzers' reference runs) agrees
    for got, want in zip(views.py_func(flat, 5), views(flat, 5), strict=True):
        np.testing.assert_array_equal(got, want)
