"""Scalar primitives in their numerically stable forms, compiled by Numba and called from generated kernels.

Each is finite for |x| up to 1e4 (and beyond): no exp of a large positive number is ever taken.
"""

from __future__ import annotations

import math

from numba import njit


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
