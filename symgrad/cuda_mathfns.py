"""Scalar primitives as CUDA device functions: the same stable forms as `symgrad.mathfns`, for `@cuda.jit` kernels.

The printer names a primitive once (`library.PRIMITIVES`); a CUDA module imports these instead of the CPU ones, so
the printed kernel bodies are identical text on both backends.
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
