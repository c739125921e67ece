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

from symgrad.backends.cpu import jitcache

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


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
def exp32(x):
    x = _F(x)
    x = x if x > _F(-87.33654) else _F(-87.33654)
    x = x if x < _F(88.0) else _F(88.0)
    k = np.floor(x * _F(1.44269504) + _F(0.5))  # a float floor (vectorises; math.floor goes through int64)
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


@njit(cache=True, inline="always")
def expm1_32(x):
    x = _F(x)
    u = exp32(x)
    d = u - _F(1.0)
    # (u - 1) * x / log(u) corrects exp's rounding (Kahan); where u == 1 the answer is x itself, where u - 1
    # rounds to -1 it is -1
    if u == _F(1.0):
        return x
    return _F(-1.0) if d == _F(-1.0) else d * (x / log32(u))


@njit(cache=True, inline="always")
def sigmoid32(x):
    e = exp32(-abs(_F(x)))
    s = _F(1.0) / (_F(1.0) + e)
    return s if x >= 0 else e * s


@njit(cache=True, inline="always")
def softplus32(x):
    return (_F(x) if x > 0 else _F(0.0)) + log1p32(exp32(-abs(_F(x))))


@njit(cache=True, inline="always")
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


def _is_f32(w) -> bool:
    return isinstance(w, types.Array) and w.dtype == types.float32


def _dtype_aware(name: str, f64, f32):
    """A Python stub `name(x, w)` and its Numba overload: f32(x) when the witness w is a float32 array."""

    def stub(x, w):
        return f64(x)

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = f"{name}(x, w): float64 or float32 form, by the dtype of the witness array w."

    def impl(x, w):
        if _is_f32(w):
            return lambda x, w: f32(x)
        return lambda x, w: f64(x)

    overload(stub, jit_options={"cache": True}, inline="always")(impl)  # type: ignore[typeddict-unknown-key]
    return stub


for _name, (_f64, _f32) in FAST32.items():
    globals()[_name] = _dtype_aware(_name, _f64, _f32)
