"""Run-time helpers of generated CPU kernels: scalar primitives in their numerically stable forms, and the array
plumbing (views, BLAS products, scratch) every kernel uses.

Each scalar primitive is finite for |x| up to 1e4 (and beyond): no exp of a large positive number is ever taken.

Why everything a kernel calls is a small `@njit(cache=True)` function here and not inline code or an IR-inlined
(`inline="always"`) function: Numba types and compiles a called dispatcher once per signature and keeps it in its
on-disk cache, while inline code and IR inlining are typed again at every call site of every new spec. The scalar
primitives carry `forceinline=True`, an LLVM attribute: LLVM still inlines and vectorises them (float32 tanh, exp
and log in a loop), at no typing cost. Measured on the benchmark's VAE (W4, float32): 11.8 s -> 4.6 s from a new
spec to its first step, 7,720 steps/s either way.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import NumbaIRAssumptionWarning
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, lower_builtin, overload, type_callable
from numba.np.arrayobj import make_array, make_view

from symgrad.backends.cpu import jitcache

jitcache.install()  # before the decorators below: their .nbc cache goes to the user cache, not the package

# Numba's SSA self-check can flag the float32 branches ("variable ... is not in scope"); the code is correct
# (every float32 path is tested against float64), so that one message is not shown to users.
warnings.filterwarnings("ignore", message=r".*is not in scope", category=NumbaIRAssumptionWarning)

_SCALAR: dict[str, Any] = {"cache": True, "error_model": "numpy", "forceinline": True}
_ARRAY: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy", "forceinline": True}


# -- array plumbing: compiled once per signature (a handful per dtype) and cached, whatever the spec ------------


def slot(flat, lo, shape):
    """flat[lo:lo + prod(shape)] seen as a C-contiguous array of `shape`, no copy: a parameter, its gradient, or a
    workspace slot (the renderer lays them out, so every slot lies inside its buffer).

    In a kernel this is a Numba builtin (typing and lowering below), not a jitted function: it costs no compilation
    per call site or per new spec (a dispatcher called from a kernel is compiled again for the literal offsets and
    shapes of each), and the kernel's own optimisation sees the shape's constants, as it did with
    `flat[lo:hi].reshape(shape)`. Called from Python (NUMBA_DISABLE_JIT, tests) it is exactly that expression.
    """
    size = 1
    for d in shape:
        size *= d
    return flat[lo : lo + size].reshape(shape)


@type_callable(slot)
def _slot_type(context):
    def typer(flat, lo, shape):
        if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
            return None
        if not isinstance(lo, types.Integer) or not isinstance(shape, types.BaseTuple):
            return None
        if not all(isinstance(t, types.Integer) for t in shape.types):
            return None
        return types.Array(flat.dtype, len(shape.types), "C")

    return typer


@lower_builtin(slot, types.Array, types.Integer, types.BaseTuple)
def _slot_lower(context, builder, sig, args):
    aryty, loty, shapety = sig.args
    ary = make_array(aryty)(context, builder, args[0])
    start = context.cast(builder, args[1], loty, types.intp)
    dims = [context.cast(builder, builder.extract_value(args[2], k), t, types.intp) for k, t in enumerate(shapety)]
    steps = []
    step = ary.itemsize
    for d in reversed(dims):
        steps.append(step)
        step = builder.mul(step, d)
    steps.reverse()
    intp = context.get_value_type(types.intp)
    view = make_view(
        context,
        builder,
        aryty,
        ary,
        sig.return_type,
        builder.gep(ary.data, [start]),
        cgutils.pack_array(builder, dims, ty=intp),
        cgutils.pack_array(builder, steps, ty=intp),
    )
    return impl_ret_borrowed(context, builder, sig.return_type, view._getvalue())


def scratch(n, like):
    """An uninitialised workspace of n elements of `like`'s dtype (every kernel writes a slot before reading it)."""
    return np.empty(n, dtype=like.dtype)


# An overload (plain argument types first): `n` is a literal in specs without inputs, and a jitted function would
# be compiled once per such size.
overload(scratch, jit_options=_ARRAY)(lambda n, like: scratch)  # type: ignore[arg-type]


@njit(**_ARRAY)
def zeros(n):
    return np.zeros(n)


@njit(**_ARRAY)
def total(a):
    """The sum of a per-sample array (the batch's objective)."""
    return a.sum()


# -- products: Numba's own BLAS entry point, called with beta 0 (out <- a @ b) or 1 (out += a @ b) ---------------
#
# Why not `np.dot(a, b, out)` and `out += np.dot(a, b)`: the accumulating form allocates a temporary each step and
# adds it in a second pass over `out`, and Numba's np.dot lowering carries its gemv/dot special cases, typed and
# compiled for every layout (0.6 s of W4's first-ever start went to `gemm_acc` alone). `numba_xxgemm` is the C
# helper np.dot itself ends in (it calls SciPy's cython_blas ?gemm): the same BLAS, one call, beta as asked.
# A transposed operand is passed as its C-contiguous base and a flag, so the checked core below is compiled once
# per dtype; only the three-line layout wrappers are typed per layout.

_F_INT_MAX = 2**31 - 1  # SciPy's BLAS takes C ints


def _c_float_matrix(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" and t.dtype in (types.float32, types.float64)


@intrinsic
def _xgemm(typingctx, a, ta, b, tb, out, m, n, k, beta):
    """One ?gemm call: out <- op(a) @ op(b) + beta * out, where op(x) is x.T when its flag is set; a, b and out are
    C-contiguous matrices of one float dtype and m, n, k the (checked, non-zero) sizes of the product."""
    from numba.np.linalg import ensure_blas, get_blas_kind

    if not all(_c_float_matrix(t) for t in (a, b, out)) or not a.dtype == b.dtype == out.dtype:
        return None
    ensure_blas()  # SciPy's BLAS, found as np.dot finds it (a clear ImportError without SciPy)
    sig = types.none(a, ta, b, tb, out, m, n, k, beta)

    def codegen(context, builder, signature, args):
        dtype = a.dtype
        char = ir.IntType(8)
        intp = context.get_value_type(types.intp)
        voidp = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(
            ir.IntType(32),
            [char, char, char, intp, intp, intp, voidp, voidp, intp, voidp, intp, voidp, voidp, intp],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        xa, xb, xo = (make_array(t)(context, builder, args[i]) for t, i in ((a, 0), (b, 2), (out, 4)))
        flag_a, flag_b = (context.cast(builder, args[i], signature.args[i], types.boolean) for i in (1, 3))
        sm, sn, sk = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (5, 6, 7))
        alpha = cgutils.alloca_once_value(builder, context.get_constant(dtype, 1.0))
        beta_p = cgutils.alloca_once_value(builder, context.cast(builder, args[8], signature.args[8], dtype))
        n_char, t_char = ir.Constant(char, ord("n")), ir.Constant(char, ord("t"))

        def lead(ary):  # a C matrix's rows are its leading dimension, transposed or not
            return cgutils.unpack_tuple(builder, ary.shape)[1]

        # Column-major BLAS sees row-major C = A @ B as C^T = B^T @ A^T: b goes first, m and n swap.
        res = builder.call(
            fn,
            (
                ir.Constant(char, ord(get_blas_kind(dtype))),
                builder.select(flag_b, t_char, n_char),
                builder.select(flag_a, t_char, n_char),
                sn, sm, sk,
                builder.bitcast(alpha, voidp),
                builder.bitcast(xb.data, voidp), lead(xb),
                builder.bitcast(xa.data, voidp), lead(xa),
                builder.bitcast(beta_p, voidp),
                builder.bitcast(xo.data, voidp), lead(xo),
            ),
        )  # fmt: skip
        with builder.if_then(cgutils.is_not_null(builder, res), likely=False):
            pyapi = context.get_python_api(builder)
            pyapi.gil_ensure()
            pyapi.fatal_error("BLAS wrapper returned with an error")  # what np.dot does: it cannot happen
        return context.get_dummy_value()

    return sig, codegen


@njit(**_ARRAY)
def _gemm_c(a, ta, b, tb, out, beta):
    """out <- op(a) @ op(b) + beta * out (beta 0 or 1) for C-contiguous a, b, out: shapes checked, empty cases done
    without BLAS (k == 0 is a product of zeros)."""
    m, k = (a.shape[1], a.shape[0]) if ta else (a.shape[0], a.shape[1])
    k2, n = (b.shape[1], b.shape[0]) if tb else (b.shape[0], b.shape[1])
    if k != k2 or out.shape[0] != m or out.shape[1] != n:
        raise ValueError("gemm: incompatible shapes")
    if m == 0 or n == 0:
        return
    if k == 0:
        if beta == 0:
            out[...] = 0
        return
    if max(m, n, k) > _F_INT_MAX:
        raise ValueError("gemm: a dimension is too large for BLAS")
    _xgemm(a, ta, b, tb, out, m, n, k, beta)


@njit(**_ARRAY)
def _store(res, out, beta):
    """out <- res + beta * out (beta 0 or 1) for a product computed outside BLAS's output."""
    if res.shape != out.shape:
        raise ValueError("gemm: incompatible shapes")
    if beta:
        out += res
    else:
        out[...] = res


def _product(a, b, out, beta):
    """out <- a @ b + beta * out (beta 0 or 1); Python's own form (NUMBA_DISABLE_JIT, tests)."""
    try:
        res = a @ b
    except ValueError as e:
        raise ValueError("gemm: incompatible shapes") from e
    _store(res, out, beta)


def _operand(x):
    """In a kernel: x as a C-contiguous matrix and whether it stands transposed (an F matrix is the transpose of
    its C base; a strided view is copied)."""
    return x, False


@intrinsic
def _stands_transposed(typingctx, x):
    """x's layout is F, as a plain (not literal) boolean: `_gemm_c` is then compiled once, not once per flag."""
    return types.boolean(x), lambda context, builder, sig, args: context.get_constant(types.boolean, x.layout == "F")


def _operand_impl(x):
    if x.layout == "C":
        return lambda x: (x, _stands_transposed(x))
    if x.layout == "F":
        return lambda x: (x.T, _stands_transposed(x))
    return lambda x: (np.ascontiguousarray(x), _stands_transposed(x))


def _row(x):
    """In a kernel: a vector left of a product as a (1, n) matrix, a matrix as itself."""
    return x


def _col(x):
    """In a kernel: a vector right of a product as an (n, 1) matrix, a matrix as itself."""
    return x


def _vector_as(row: bool):
    # np.ascontiguousarray returns a C vector itself (no copy) and copies a strided one
    def impl(x):
        if x.ndim == 2:
            return lambda x: x
        if row:
            return lambda x: np.ascontiguousarray(x).reshape((1, x.shape[0]))
        return lambda x: np.ascontiguousarray(x).reshape((x.shape[0], 1))

    return impl


def _out_matrix(out, m, n):
    """In a kernel: the product's output seen as the (m, n) matrix BLAS writes (a vector output has m or n == 1)."""
    return out


def _out_matrix_impl(out, m, n):
    if out.ndim == 2:
        return lambda out, m, n: out

    def impl(out, m, n):
        if out.shape[0] != m * n:
            raise ValueError("gemm: incompatible shapes")
        return out.reshape((m, n))

    return impl


def _blas_product(a, b, out) -> bool:
    """Typing-time: the (matrix or vector) product a @ b -> out goes to BLAS (not vector . vector, which has no
    array output, and not a strided output or mixed dtypes, which take NumPy's path)."""
    arrays = (a, b, out)
    if not all(isinstance(t, types.Array) for t in arrays) or a.ndim not in (1, 2) or b.ndim not in (1, 2):
        return False
    return (
        out.ndim == a.ndim + b.ndim - 2 >= 1
        and out.layout == "C"
        and a.dtype == b.dtype == out.dtype
        and a.dtype in (types.float32, types.float64)
    )


def _product_impl(a, b, out, beta):
    if _blas_product(a, b, out):

        def blas(a, b, out, beta):
            ca, ta = _operand(_row(a))
            cb, tb = _operand(_col(b))
            m = ca.shape[1] if ta else ca.shape[0]
            n = cb.shape[0] if tb else cb.shape[1]
            _gemm_c(ca, ta, cb, tb, _out_matrix(out, m, n), beta)

        return blas

    def generic(a, b, out, beta):  # a strided output, other dtypes: NumPy's semantics
        _store(np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b)), out, beta)

    return generic


overload(_row, jit_options=_ARRAY)(_vector_as(row=True))  # type: ignore[arg-type]
overload(_col, jit_options=_ARRAY)(_vector_as(row=False))  # type: ignore[arg-type]
overload(_out_matrix, jit_options=_ARRAY)(_out_matrix_impl)  # type: ignore[arg-type]
overload(_operand, jit_options=_ARRAY)(_operand_impl)  # type: ignore[arg-type]
overload(_product, jit_options=_ARRAY)(_product_impl)  # type: ignore[arg-type]


@njit(**_ARRAY)
def gemm(a, b, out):
    """out <- a @ b, one BLAS call (operands may be transposed views)."""
    _product(a, b, out, 0.0)


@njit(**_ARRAY)
def gemm_acc(a, b, out):
    """out += a @ b in the same single call (a product adding into an adjoint that another term already wrote)."""
    _product(a, b, out, 1.0)


@njit(**_SCALAR)
def sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(**_SCALAR)
def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(**_SCALAR)
def log_sigmoid(x):
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


@njit(**_SCALAR)
def relu(x):
    return x if x > 0 else 0.0 * x


@njit(**_SCALAR)
def step(x):
    return 1.0 if x > 0 else 0.0


@njit(**_SCALAR)
def heaviside(x):
    """SymPy's Heaviside, H(0) = 1/2: what the derivative of Max/Min gives at a tie."""
    if x > 0:
        return 1.0
    if x < 0:
        return 0.0
    return 0.5


@njit(**_SCALAR)
def sign(x):
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return 0.0


@njit(**_SCALAR)
def clip(x, lo, hi):
    return min(max(x, lo), hi)


@njit(cache=True)
def digamma(x):
    """psi(x), lgamma's derivative: reflection below 0, recurrence up to 10, then the asymptotic series (1e-15)."""
    if x <= 0.0 and x == math.floor(x):
        return math.nan  # a pole
    r = 0.0
    if x < 0.0:
        r = -math.pi / math.tan(math.pi * x)  # psi(x) = psi(1 - x) - pi cot(pi x)
        x = 1.0 - x
    while x < 10.0:
        r -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    t = f * (
        -1.0 / 12
        + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132 + f * (691.0 / 32760 - f / 12.0)))))
    )
    return r + math.log(x) - 0.5 / x + t


# -- float32 fast paths ---------------------------------------------------------------------------------------
# libm's scalar exp/tanh/log are not vectorised by LLVM; in float32 kernels they dominate small models (a VAE
# step spends most of its time in tanh). These are the classic Cephes/Eigen forms (Cody-Waite range reduction
# and polynomials, a rational tanh), pure arithmetic that LLVM vectorises, accurate to a few float32 ulps.
# Float64 kernels keep libm exactly: the witness argument `w` (the kernel's theta array) picks the version at
# compile time, so one generated kernel serves both dtypes.


@intrinsic
def _f32_from_bits(typingctx, i):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_from_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


_F = np.float32


@njit(**_SCALAR)
def exp32(x):
    """e**x in float32 over the whole range: overflow to inf above ln(FLT_MAX), gradual underflow to 0 below -87.3
    (the scale 2**k is applied as two factors, so neither leaves the normal range), NaN kept."""
    x = _F(x)
    xc = x if x > _F(-104.0) else _F(-104.0)  # selects, not min/max: NaN must not be clamped away (handled last)
    xc = xc if xc < _F(88.72283935546875) else _F(88.72283935546875)
    k = np.floor(xc * _F(1.44269504) + _F(0.5))  # a float floor (vectorises; math.floor goes through int64)
    r = xc - k * _F(0.693359375) + k * _F(2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    y = p * r * r + r + _F(1.0)
    ki = np.int32(k)
    k1 = ki >> np.int32(1)  # k in [-150, 128]: k1 and k - k1 in [-75, 64], both normal exponents
    s1 = _f32_from_bits(np.int32((k1 + np.int32(127)) << np.int32(23)))
    s2 = _f32_from_bits(np.int32((ki - k1 + np.int32(127)) << np.int32(23)))
    y = (y * s1) * s2
    y = y if x < _F(88.72283935546875) else _F(np.inf)
    y = y if x >= _F(-104.0) else _F(0.0)
    return y if x == x else x


@njit(**_SCALAR)
def tanh32(x):
    x0 = _F(x)
    x = x0 if x0 > _F(-7.90531110763549805) else _F(-7.90531110763549805)
    x = x if x < _F(7.90531110763549805) else _F(7.90531110763549805)
    x2 = x * x
    p = _F(-2.76076847742355e-16)
    p = x2 * p + _F(2.00018790482477e-13)
    p = x2 * p + _F(-8.60467152213735e-11)
    p = x2 * p + _F(5.12229709037114e-08)
    p = x2 * p + _F(1.48572235717979e-05)
    p = x2 * p + _F(6.37261928875436e-04)
    p = x2 * p + _F(4.89352455891786e-03)
    p = x * p
    q = _F(1.19825839466702e-06)
    q = x2 * q + _F(1.18534705686654e-04)
    q = x2 * q + _F(2.26843463243900e-03)
    q = x2 * q + _F(4.89352518554385e-03)
    return p / q if x0 == x0 else x0  # the clamps above would turn NaN into -1


@njit(**_SCALAR)
def log32(x):
    x = _F(x)
    sub = x < _F(1.1754943508222875e-38)  # a subnormal is scaled by 2**23 into the normal range first
    xs = x * _F(8388608.0) if sub else x
    bits = _bits_from_f32(xs)
    e = _F(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126)) - (_F(23.0) if sub else _F(0.0))
    m = _f32_from_bits((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000))
    small = m < _F(0.707106781186547524)
    e = e - _F(1.0) if small else e  # branch-free selects only, so loops over it vectorise
    m = m + m - _F(1.0) if small else m - _F(1.0)
    z = m * m
    y = _F(7.0376836292e-2)
    y = y * m + _F(-1.1514610310e-1)
    y = y * m + _F(1.1676998740e-1)
    y = y * m + _F(-1.2420140846e-1)
    y = y * m + _F(1.4249322787e-1)
    y = y * m + _F(-1.6668057665e-1)
    y = y * m + _F(2.0000714765e-1)
    y = y * m + _F(-2.4999993993e-1)
    y = y * m + _F(3.3333331174e-1)
    y = y * m * z
    y = y + _F(-2.12194440e-4) * e - _F(0.5) * z
    r = m + y + _F(0.693359375) * e
    r = r if x < _F(np.inf) else x  # log(inf) = inf, log(nan) = nan
    r = r if x > _F(0.0) else (_F(-np.inf) if x == _F(0.0) else _F(np.nan))
    return r


@njit(**_SCALAR)
def log1p32(x):
    x = _F(x)
    u = _F(1.0) + x
    d = u - _F(1.0)
    # log(u) * x / (u - 1) corrects log(1 + x)'s rounding (Goldberg); where u == 1 the answer is x itself; where
    # x > 1 there is nothing to correct (and log(u) * x could overflow once the product is reassociated)
    if x > _F(1.0):
        return log32(u)
    return x if d == _F(0.0) else log32(u) * (x / d)


@njit(**_SCALAR)
def expm1_32(x):
    x = _F(x)
    u = exp32(x)
    d = u - _F(1.0)
    # (u - 1) * x / log(u) corrects exp's rounding (Kahan); where u == 1 the answer is x itself, where u - 1
    # rounds to -1 it is -1
    # where x > 0.5, u - 1 has no cancellation to correct (and d * x could overflow once the product is reassociated)
    if u == _F(1.0):
        return x
    if x > _F(0.5):
        return d
    return _F(-1.0) if d == _F(-1.0) else d * (x / log32(u))


@njit(**_SCALAR)
def sigmoid32(x):
    e = exp32(-abs(_F(x)))
    s = _F(1.0) / (_F(1.0) + e)
    return s if x >= 0 else e * s


@njit(**_SCALAR)
def softplus32(x):
    return (_F(x) if x > 0 else _F(0.0)) + log1p32(exp32(-abs(_F(x))))


@njit(**_SCALAR)
def log_sigmoid32(x):
    return (_F(x) if x < 0 else _F(0.0)) - log1p32(exp32(-abs(_F(x))))


# dtype-aware entry (a row's `cpu32` in symgrad.lang.primitives) -> (float64 form, float32 form). Kernels call
# `_mf.NAME(x, _theta)`; the overload made below picks the form from the witness's dtype at compile time.
FAST32 = {
    "exp": (math.exp, exp32),
    "tanh": (math.tanh, tanh32),
    "log": (math.log, log32),
    "log1p": (math.log1p, log1p32),
    "expm1": (math.expm1, expm1_32),
    "sigmoid_w": (sigmoid, sigmoid32),
    "softplus_w": (softplus, softplus32),
    "log_sigmoid_w": (log_sigmoid, log_sigmoid32),
}

# What each overload compiles: module-level functions with no closure, one per form and dtype, each in its own
# cache index. Why not one closure `lambda x, w: f(x)` made in a loop (as before): Numba keys a cached function by
# its bytecode and the pickled contents of its closure cells, and a closed-over dispatcher pickles differently in
# every process (it carries a random uuid). Every new spec's first compile then appended ~4 fresh entries to one
# index shared by all sixteen forms (measured: 9 entries after three specs, growing without end), and two
# processes appending at once could leave an entry pointing at another form's code (CI: expm1 computed exp).
# Named functions have stable keys: a form is compiled once per machine, and no two forms share an index.


def _exp_64(x, w):
    return math.exp(x)


def _exp_32(x, w):
    return exp32(x)


def _tanh_64(x, w):
    return math.tanh(x)


def _tanh_32(x, w):
    return tanh32(x)


def _log_64(x, w):
    return math.log(x)


def _log_32(x, w):
    return log32(x)


def _log1p_64(x, w):
    return math.log1p(x)


def _log1p_32(x, w):
    return log1p32(x)


def _expm1_64(x, w):
    return math.expm1(x)


def _expm1_32(x, w):
    return expm1_32(x)


def _sigmoid_w_64(x, w):
    return sigmoid(x)


def _sigmoid_w_32(x, w):
    return sigmoid32(x)


def _softplus_w_64(x, w):
    return softplus(x)


def _softplus_w_32(x, w):
    return softplus32(x)


def _log_sigmoid_w_64(x, w):
    return log_sigmoid(x)


def _log_sigmoid_w_32(x, w):
    return log_sigmoid32(x)


def _is_f32(w) -> bool:
    return isinstance(w, types.Array) and w.dtype == types.float32


def _dtype_aware(name: str):
    """A Python stub `name(x, w)` and its Numba overload: the float32 form when the witness w is a float32 array."""
    f64, f32 = globals()[f"_{name}_64"], globals()[f"_{name}_32"]

    def stub(x, w):
        return f64(x, w)

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = f"{name}(x, w): float64 or float32 form, by the dtype of the witness array w."

    def impl(x, w):
        return f32 if _is_f32(w) else f64

    overload(stub, jit_options=_SCALAR)(impl)  # type: ignore[arg-type]  # numba's stub omits cache
    return stub


for _name in FAST32:
    globals()[_name] = _dtype_aware(_name)
