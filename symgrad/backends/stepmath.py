"""The optimizer step's arithmetic, one element at a time, written once for every backend.

Plain Python on scalars: the CPU runtime compiles these with `numba.njit(inline="always")` into its loops
(symgrad.runtime.optim), the CUDA backend with `numba.cuda.jit(device=True)` into its update kernel
(symgrad.backends.cuda.step). So the finiteness gate, the clipping factor, the four update rules and the flush of
tiny optimizer state are one source, and a fix to one is a fix to all. Nothing here reaches generated text.
"""

from __future__ import annotations

import math

TINY = 1e-30  # optimizer state below this is flushed to 0: see `adam`

SGD_KIND = 0
MOMENTUM_KIND = 1
NESTEROV_KIND = 2
ADAM_KIND = 3


def step_ok(total, norm):  # untyped: numba types it at each call site
    """The divergence gate: the step's loss and its gradient's norm are both finite."""
    return math.isfinite(total) and math.isfinite(norm)


def scaled_norm(amax, ssq):
    """||g|| from amax = max |g_i| and ssq = sum (g_i / amax)**2, which cannot overflow while every g_i is finite
    (a plain sum of squares does past |g_i| ~ 1e154 in float64, ~ 1e19 in float32, and a finite gradient then read
    as a diverged step). amax is inf when some g_i is not finite, and the norm with it."""
    if amax == 0.0:
        return 0.0
    if not math.isfinite(amax):
        return math.inf
    return amax * math.sqrt(ssq)


def clip_scale(norm, clip_norm):
    """The factor that rescales a gradient of norm `norm` to norm `clip_norm` when it is longer (1 if not;
    `clip_norm <= 0` disables clipping)."""
    if clip_norm > 0.0 and norm > clip_norm:
        return clip_norm / norm
    return 1.0


def sgd(th, g, lr):
    return th - lr * g


def momentum(th, g, v, lr, mu):
    """Heavy ball: returns (theta, velocity); a velocity below TINY is flushed (see `adam`)."""
    v = mu * v + g
    v = v if abs(v) > TINY else 0.0 * v
    return th - lr * v, v


def nesterov(th, g, v, lr, mu):
    """Nesterov's look-ahead in the form PyTorch uses: returns (theta, velocity)."""
    v = mu * v + g
    v = v if abs(v) > TINY else 0.0 * v
    return th - lr * (g + mu * v), v


def adam(th, g, m, v, step, inv_c2, b1, b2, ob1, ob2, eps, tiny, zero):
    """Adam with bias correction folded into `step = lr / (1 - b1**t)` and `inv_c2 = 1 / (1 - b2**t)`; returns
    (theta, m, v). The caller passes every constant in the precision it wants the arithmetic in (`ob1 = 1 - b1`,
    `tiny = TINY`, `zero = 0`): float32 parameters on the CPU get float32 vector arithmetic, as PyTorch does.

    A moment whose gradient stays 0 decays geometrically into subnormal numbers, which cost the CPU ~100x per
    operation (W2 halved its speed after 100 epochs); below TINY it is 0 for Adam anyway, so it is flushed.
    """
    m = b1 * m + ob1 * g
    v = b2 * v + ob2 * g * g
    m = m if abs(m) > tiny else zero
    v = v if v > tiny else zero
    return th - step * m / (math.sqrt(v * inv_c2) + eps), m, v
