"""The products every CPU kernel calls (`_mf.gemm`: out <- a @ b, `_mf.gemm_acc`: out += a @ b): one BLAS ?gemm
call with beta 0 or 1, checked here against NumPy in float64 on every layout a kernel passes (C slots, their F
transposes), the strided views and outputs that take the NumPy path, and the empty and k == 0 cases BLAS is not
called for."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from symgrad.backends.cpu import mathfns as mf

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
def test_checked_core_is_compiled_once_per_dtype():
    """Transposed operands reach the BLAS core as their C base and a plain boolean flag: one compilation per
    dtype, not one per layout or per literal flag (each costs ~0.15 s on a machine's first start)."""
    for dtype in (np.float64, np.float32):
        for ta, tb in itertools.product((False, True), repeat=2):
            a, b = _operands(np.random.default_rng(0), 3, 4, 5, ta, tb, dtype)
            mf.gemm(a, b, np.zeros((3, 5), dtype))
            mf.gemm_acc(a, b, np.zeros((3, 5), dtype))
    sigs = mf._gemm_c.signatures
    assert len(sigs) == 2, sigs
    assert all("Literal" not in str(s) for s in sigs), sigs
