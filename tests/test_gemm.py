"""The products every CPU kernel calls (`_mf.gemm`: out <- a @ b, `_mf.gemm_acc`: out += a @ b): one BLAS ?gemm
call with beta 0 or 1, checked here against NumPy in float64 on every layout a kernel passes (C slots, their F
transposes), the strided views and outputs that take the NumPy path, and the empty and k == 0 cases BLAS is not
called for."""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from symgrad.backends.cpu import mathfns as mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = [(3, 4, 5), (1, 7, 1), (64, 1, 9), (1, 1, 1), (17, 33, 2)]


def _operands(rng, m, k, n, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return (a.T if ta else a), (b.T if tb else b)


def _tol(dtype, k):
    return (1e-5 * max(k, 1), 1e-5) if dtype == np.float32 else (1e-12 * max(k, 1), 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_product_matches_numpy_on_every_layout(dtype, m, k, n):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    atol, rtol = _tol(dtype, k)
    for ta, tb in itertools.product((False, True), repeat=2):
        a, b = _operands(rng, m, k, n, ta, tb, dtype)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        before = rng.standard_normal((m, n)).astype(dtype)
        out = before.copy()
        mf.gemm(a, b, out)
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=f"gemm ta={ta} tb={tb}")
        out = before.copy()
        mf.gemm_acc(a, b, out)
        np.testing.assert_allclose(out, before + ref, rtol=rtol, atol=atol, err_msg=f"gemm_acc ta={ta} tb={tb}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_operands_and_outputs_take_numpy_semantics(dtype):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 8)).astype(dtype)[:, ::2]  # neither C nor F contiguous
    b = rng.standard_normal((4, 3)).astype(dtype)
    out = np.full((6, 3), 9.0, dtype)
    mf.gemm(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    big = np.ones((6, 6), dtype)
    view = big[:, ::2]  # a strided output
    mf.gemm_acc(a, b, view)
    np.testing.assert_allclose(big[:, ::2], 1.0 + a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(big[:, 1::2], 1.0)  # nothing written between the output's columns


def test_empty_products():
    out = np.full((3, 2), 5.0)
    mf.gemm(np.zeros((3, 0)), np.zeros((0, 2)), out)
    np.testing.assert_array_equal(out, 0.0)  # k == 0: a sum of no terms
    out[:] = 5.0
    mf.gemm_acc(np.zeros((3, 0)), np.zeros((0, 2)), out)
    np.testing.assert_array_equal(out, 5.0)
    mf.gemm(np.zeros((0, 4)), np.zeros((4, 2)), np.zeros((0, 2)))  # m == 0, n == 0: nothing to do
    mf.gemm_acc(np.zeros((3, 4)), np.zeros((4, 0)), np.zeros((3, 0)))


def test_shape_mismatch_is_an_error_not_a_wild_write():
    with pytest.raises(ValueError, match="incompatible"):
        mf.gemm(np.ones((3, 4)), np.ones((5, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="incompatible"):
        mf.gemm_acc(np.ones((3, 4)), np.ones((4, 2)), np.zeros((2, 3)))


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="nothing is compiled")
def test_checked_core_is_compiled_once_per_dtype(tmp_path):
    """Transposed operands reach the BLAS core as their C base and a plain boolean flag: one compilation per
    dtype, not one per layout or per literal flag (each costs ~0.15 s on a machine's first start). Run with empty
    caches in a fresh process: a product loaded from Numba's cache lists no compiled signatures."""
    code = textwrap.dedent(
        """
        import itertools
        import numpy as np
        from symgrad.backends.cpu import mathfns as mf
        for dtype in (np.float64, np.float32):
            for ta, tb in itertools.product((False, True), repeat=2):
                a = np.ones((4, 3) if ta else (3, 4), dtype)
                b = np.ones((5, 4) if tb else (4, 5), dtype)
                out = np.zeros((3, 5), dtype)
                mf.gemm(a.T if ta else a, b.T if tb else b, out)
                mf.gemm_acc(a.T if ta else a, b.T if tb else b, out)
                assert (out == 8).all()
            mf.gemm(np.ones(4, dtype), np.ones((5, 4), dtype).T, np.zeros(5, dtype))
        print(repr([str(s) for s in mf._gemm_c.signatures]))
        """
    )
    env = dict(os.environ, SYMGRAD_CACHE=str(tmp_path / "s"), NUMBA_CACHE_DIR=str(tmp_path / "n"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    sigs = ast.literal_eval(p.stdout.strip().splitlines()[-1])
    assert len(sigs) == 2, sigs
    assert all("Literal" not in s for s in sigs), sigs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vector_products(dtype):
    """`w @ x.T` (a weight vector against a batch) and `A @ v` reach the same BLAS core as (1, k) and (k, 1)
    matrices; a strided vector is copied first."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(6).astype(dtype)
    x = rng.standard_normal((5, 6)).astype(dtype)
    atol, rtol = _tol(dtype, 6)
    for b in (x.T, np.ascontiguousarray(x.T)):  # F and C
        out = np.full(5, 2.0, dtype)
        mf.gemm(w, b, out)
        np.testing.assert_allclose(out, w.astype(np.float64) @ b, rtol=rtol, atol=atol)
        mf.gemm_acc(w, b, out)
        np.testing.assert_allclose(out, 2 * (w.astype(np.float64) @ b), rtol=rtol, atol=atol)
    for a in (x, np.asfortranarray(x)):
        out = np.zeros(5, dtype)
        mf.gemm(a, w, out)
        np.testing.assert_allclose(out, x.astype(np.float64) @ w, rtol=rtol, atol=atol)
    strided = rng.standard_normal(12).astype(dtype)[::2]
    out = np.zeros(5, dtype)
    mf.gemm(x, strided, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ strided, rtol=rtol, atol=atol)
    with pytest.raises(ValueError, match="incompatible"):
        mf.gemm(x, w, np.zeros(4, dtype))
