"""Scalar primitives as CUDA device functions: the same stable forms as `symgrad.backends.cpu.mathfns`, for
`@cuda.jit` kernels.

The printer names a primitive once (a row of `symgrad.lang.primitives.TABLE`, field `cuda`); a CUDA module imports these
instead of the CPU ones (its import line is `primitives.helper_imports("cuda")`).
"""

from __future__ import annotations

import math

from numba import cuda


@cuda.jit(device=True, inline=True)
def sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@cuda.jit(device=True, inline=True)
def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@cuda.jit(device=True, inline=True)
def log_sigmoid(x):
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


@cuda.jit(device=True, inline=True)
def relu(x):
    return x if x > 0 else 0.0 * x


@cuda.jit(device=True, inline=True)
def step(x):
    return 1.0 if x > 0 else 0.0


@cuda.jit(device=True, inline=True)
def heaviside(x):
    """SymPy's Heaviside, H(0) = 1/2: what the derivative of Max/Min gives at a tie."""
    if x > 0:
        return 1.0
    if x < 0:
        return 0.0
    return 0.5


@cuda.jit(device=True, inline=True)
def sign(x):
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return 0.0


@cuda.jit(device=True, inline=True)
def clip(x, lo, hi):
    return min(max(x, lo), hi)


@cuda.jit(device=True)
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
