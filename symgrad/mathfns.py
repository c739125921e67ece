"""Scalar primitives in their numerically stable forms, compiled by Numba and called from generated kernels.

Each is finite for |x| up to 1e4 (and beyond): no exp of a large positive number is ever taken.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import NumbaIRAssumptionWarning
from numba.extending import intrinsic, overload

from symgrad import jitcache

jitcache.install()  # before the decorators below: their .nbc cache goes to the user cache, not the package

# Inlining the float32 overloads trips a pedantic SSA self-check in Numba ("variable ... is not in scope"); the
# code is correct (every float32 path is tested against float64), so that one message is not shown to users.
warnings.filterwarnings("ignore", message=r".*is not in scope", category=NumbaIRAssumptionWarning)


@njit(cache=True, inline="always")
def sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True, inline="always")
def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, inline="always")
def log_sigmoid(x):
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


@njit(cache=True, inline="always")
def relu(x):
    return x if x > 0 else 0.0 * x


@njit(cache=True, inline="always")
def step(x):
    return 1.0 if x > 0 else 0.0


@njit(cache=True, inline="always")
def heaviside(x):
    """SymPy's Heaviside, H(0) = 1/2: what the derivative of Max/Min gives at a tie."""
    if x > 0:
        return 1.0
    if x < 0:
        return 0.0
    return 0.5


@njit(cache=True, inline="always")
def sign(x):
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return 0.0


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


@njit(cache=True, inline="always")
def exp32(x):
    x = _F(x)
    x = x if x > _F(-87.33654) else _F(-87.33654)
    x = x if x < _F(88.0) else _F(88.0)
    k = _F(math.floor(x * _F(1.44269504) + _F(0.5)))
    r = x - k * _F(0.693359375) + k * _F(2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    y = p * r * r + r + _F(1.0)
    return y * _f32_from_bits(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@njit(cache=True, inline="always")
def tanh32(x):
    x = _F(x)
    x = x if x > _F(-7.90531110763549805) else _F(-7.90531110763549805)
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
    return p / q


@njit(cache=True, inline="always")
def log32(x):
    x = _F(x)
    bits = _bits_from_f32(x)
    e = _F(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126))
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


@njit(cache=True, inline="always")
def log1p32(x):
    x = _F(x)
    u = _F(1.0) + x
    d = u - _F(1.0)
    # log(u) * x / (u - 1) corrects log(1 + x)'s rounding (Goldberg); where u == 1 the answer is x itself
    return x if d == _F(0.0) else log32(u) * (x / d)


def _is_f32(w) -> bool:
    return isinstance(w, types.Array) and w.dtype == types.float32


def exp(x, w):  # noqa: D103  (a stub for Python; kernels call the overload below)
    return math.exp(x)


def tanh(x, w):  # noqa: D103
    return math.tanh(x)


def log(x, w):  # noqa: D103
    return math.log(x)


def log1p(x, w):  # noqa: D103
    return math.log1p(x)


def sigmoid_w(x, w):  # noqa: D103
    return sigmoid(x)


def softplus_w(x, w):  # noqa: D103
    return softplus(x)


def log_sigmoid_w(x, w):  # noqa: D103
    return log_sigmoid(x)


@overload(exp, jit_options={"cache": True}, inline="always")
def _exp_ol(x, w):
    if _is_f32(w):
        return lambda x, w: exp32(x)
    return lambda x, w: math.exp(x)


@overload(tanh, jit_options={"cache": True}, inline="always")
def _tanh_ol(x, w):
    if _is_f32(w):
        return lambda x, w: tanh32(x)
    return lambda x, w: math.tanh(x)


@overload(log, jit_options={"cache": True}, inline="always")
def _log_ol(x, w):
    if _is_f32(w):
        return lambda x, w: log32(x)
    return lambda x, w: math.log(x)


@overload(log1p, jit_options={"cache": True}, inline="always")
def _log1p_ol(x, w):
    if _is_f32(w):
        return lambda x, w: log1p32(x)
    return lambda x, w: math.log1p(x)


@overload(sigmoid_w, jit_options={"cache": True}, inline="always")
def _sigmoid_ol(x, w):
    if _is_f32(w):
        def impl(x, w):
            e = exp32(-abs(_F(x)))
            s = _F(1.0) / (_F(1.0) + e)
            return s if x >= 0 else e * s

        return impl
    return lambda x, w: sigmoid(x)


@overload(softplus_w, jit_options={"cache": True}, inline="always")
def _softplus_ol(x, w):
    if _is_f32(w):
        return lambda x, w: (_F(x) if x > 0 else _F(0.0)) + log1p32(exp32(-abs(_F(x))))
    return lambda x, w: softplus(x)


@overload(log_sigmoid_w, jit_options={"cache": True}, inline="always")
def _log_sigmoid_ol(x, w):
    if _is_f32(w):
        return lambda x, w: (_F(x) if x < 0 else _F(0.0)) - log1p32(exp32(-abs(_F(x))))
    return lambda x, w: log_sigmoid(x)
