"""Optimizer update kernels and the small optimizer objects that configure them.

One compiled `update` serves every model: parameters live in one flat `theta` (docs/internals.md), so the
generated `_train_epoch` fuses forward, backward and this update into a single compiled call per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from symgrad.backends import stepmath
from symgrad.backends.cpu import jitcache
from symgrad.backends.stepmath import ADAM_KIND, MOMENTUM_KIND, NESTEROV_KIND, SGD_KIND, TINY
from symgrad.errors import UsageError

jitcache.install()  # before the decorators below: their .nbc cache goes to the user cache, not the package

# NumPy's error model, stated here rather than inherited: under Python's, every float division checks for a zero
# divisor and may raise, and that branch keeps LLVM from vectorising the loop (Adam over W3's 670k float32 parameters:
# 1.3 ms scalar, 0.37 ms vectorised). Unset, Numba lets the first caller's choice decide (the generated epoch's is
# numpy's, a Python-level call's is Python's) and caches whichever came first, so speed depended on call order.
# No divisor here can be 0 (Adam's has eps > 0 added; clipping divides by a norm > clip_norm > 0).
_JIT: dict[str, Any] = {"cache": True, "error_model": "numpy"}

# The arithmetic of a step lives in symgrad.backends.stepmath, shared with the CUDA update kernel; here it is
# compiled for the CPU and inlined into the loops (no call per element).
_step_ok = njit(inline="always", **_JIT)(stepmath.step_ok)
_clip_scale = njit(inline="always", **_JIT)(stepmath.clip_scale)
_scaled_norm = njit(inline="always", **_JIT)(stepmath.scaled_norm)
_sgd = njit(inline="always", **_JIT)(stepmath.sgd)
_momentum = njit(inline="always", **_JIT)(stepmath.momentum)
_nesterov = njit(inline="always", **_JIT)(stepmath.nesterov)
_adam_el = njit(inline="always", **_JIT)(stepmath.adam)


def _adam(theta, g, ms, vs, lr, b1, b2, eps, t):
    """Compiled code calls the overload below; this Python body is what runs under NUMBA_DISABLE_JIT=1 (it raised
    NotImplementedError there, so Adam, the default optimizer, failed in that debugging mode)."""
    _adam_impl(np.float32 if theta.dtype == np.float32 else np.float64)(theta, g, ms, vs, lr, b1, b2, eps, t)


@overload(_adam, jit_options=_JIT)  # type: ignore[arg-type]  # numba's stub has no cache key
def _adam_ol(theta, g, ms, vs, lr, b1, b2, eps, t):
    """Adam in theta's own precision: float32 parameters get float32 vector arithmetic (as PyTorch does), twice
    the SIMD width of float64; float64 parameters keep float64 throughout."""
    return _adam_impl(np.float32 if theta.dtype == types.float32 else np.float64)


def _adam_impl(f):
    def impl(theta, g, ms, vs, lr, b1, b2, eps, t):
        step = f(lr / (1.0 - b1**t))  # lr * mhat / m
        inv_c2 = f(1.0 / (1.0 - b2**t))  # vhat / v
        fb1, fb2, feps = f(b1), f(b2), f(eps)
        ob1, ob2 = f(1.0 - b1), f(1.0 - b2)
        tiny = f(TINY)
        zero = f(0.0)
        for i in range(theta.shape[0]):
            th, m, v = _adam_el(theta[i], g[i], ms[i], vs[i], step, inv_c2, fb1, fb2, ob1, ob2, feps, tiny, zero)
            ms[i] = m
            vs[i] = v
            theta[i] = th

    return impl


@njit(**_JIT)
def update(theta, g, state, kind, lr, hyper, t):  # pragma: no cover - compiled
    """Descend on `g` in place: `theta`, `g` flat; `state` (2, n) zeros at start; `t` the 1-based step.

    `hyper` = [momentum, beta1, beta2, eps] (float64). SGD and momentum do their arithmetic in float64 and store
    it back in theta's dtype; Adam works in theta's dtype (see `_adam_ol`).
    """
    n = theta.shape[0]
    if kind == SGD_KIND:
        for i in range(n):
            theta[i] = _sgd(theta[i], g[i], lr)
    elif kind == MOMENTUM_KIND:
        mu = hyper[0]
        for i in range(n):
            th, v = _momentum(theta[i], g[i], state[0, i], lr, mu)
            state[0, i] = v
            theta[i] = th
    elif kind == NESTEROV_KIND:
        mu = hyper[0]
        for i in range(n):
            th, v = _nesterov(theta[i], g[i], state[0, i], lr, mu)
            state[0, i] = v
            theta[i] = th
    elif kind == ADAM_KIND:
        _adam(theta, g, state[0], state[1], lr, hyper[1], hyper[2], hyper[3], t)
    else:
        raise ValueError("unknown optimizer kind")


# A plain call, compiled once per signature and kept in Numba's cache: IR-inlined into each generated epoch loop it
# was typed again for every new spec (part of the cold start), for no measurable gain at run time.
@njit(nogil=True, **_JIT)
def gated_step(theta, grad, state, kind, lr, hyper, t, clip_norm, total):  # pragma: no cover - compiled
    """Everything after the gradient, in one place for every CPU loop (the fused epoch, MPI): finiteness gate,
    clipping, `update`. Returns False, theta and state untouched, when the loss `total` or the gradient is not
    finite. The CUDA update kernel runs the same stepmath functions per element.

    The norm is BLAS's dot in theta's dtype (vectorised) while that sum of squares is finite; when it is not, the
    gradient is read again by `grad_norm`, which tells a non-finite element from a finite gradient too long to square.
    Clipping rescales to `clip_norm` when the gradient is longer (`clip_norm <= 0` disables it).
    """
    sq = float(np.dot(grad, grad))
    norm = math.sqrt(sq) if math.isfinite(sq) else grad_norm(grad)
    if not _step_ok(total, norm):
        return False
    scale = _clip_scale(norm, clip_norm)
    if scale != 1.0:
        grad *= scale
    update(theta, grad, state, kind, lr, hyper, t)
    return True


@njit(nogil=True, **_JIT)
def grad_norm(g):  # pragma: no cover - compiled
    """||g|| in float64 without overflow (stepmath.scaled_norm); inf when some element is not finite."""
    amax = 0.0
    for i in range(g.shape[0]):
        a = abs(1.0 * g[i])
        if not math.isfinite(a):
            return math.inf
        amax = max(amax, a)
    if amax == 0.0:
        return 0.0
    ssq = 0.0
    for i in range(g.shape[0]):
        r = g[i] / amax
        ssq += r * r
    return _scaled_norm(amax, ssq)


@njit(**_JIT)
def grad_norm_ok(g):  # pragma: no cover - compiled
    """Return (||g||, finite?) so a step loop can stop before touching theta (internals: divergence)."""
    norm = grad_norm(g)
    return norm, math.isfinite(norm)


@njit(**_JIT)
def clip_(g, clip_norm, norm):  # pragma: no cover - compiled
    """Rescale `g` in place to norm `clip_norm` when it is longer (clip_norm <= 0 disables clipping)."""
    if clip_norm > 0.0 and norm > clip_norm:
        f = clip_norm / norm
        for i in range(g.shape[0]):
            g[i] = g[i] * f


class OptimizerError(UsageError, ValueError):
    """A bad optimizer argument: one line, exit 2 in the CLI; still a ValueError for callers that catch that."""


def _number(owner: str, name: str, value: object) -> float:
    """A real number (not a string, not a bool): `SGD("1e-3")` says so instead of failing inside a comparison."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptimizerError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise OptimizerError(f"{owner}: {name} must be finite, got {value!r}")
    return float(value)


def _hyper(momentum: float = 0.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> np.ndarray:
    return np.array([momentum, beta1, beta2, eps], dtype=np.float64)


@dataclass(frozen=True)
class SGD:
    """Plain, heavy-ball (`momentum > 0`) or Nesterov SGD; `lr` is the base rate that schedules multiply."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        lr, momentum = _number("SGD", "lr", self.lr), _number("SGD", "momentum", self.momentum)
        if not isinstance(self.nesterov, (bool, np.bool_)):
            raise OptimizerError(f"SGD: nesterov must be True or False, got {self.nesterov!r}")
        if not lr > 0:
            raise OptimizerError(f"SGD: lr must be positive, got {self.lr}")
        if not 0.0 <= momentum < 1.0:
            raise OptimizerError(f"SGD: momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and momentum == 0.0:
            raise OptimizerError("SGD: nesterov=True needs momentum > 0")

    @property
    def kind(self) -> int:
        if self.momentum == 0.0:
            return SGD_KIND
        return NESTEROV_KIND if self.nesterov else MOMENTUM_KIND

    @property
    def hyper(self) -> np.ndarray:
        return _hyper(momentum=self.momentum)


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction (MATH.md); `lr` is the base rate that schedules multiply."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        lr = _number("Adam", "lr", self.lr)
        b1, b2 = _number("Adam", "beta1", self.beta1), _number("Adam", "beta2", self.beta2)
        eps = _number("Adam", "eps", self.eps)
        if not lr > 0:
            raise OptimizerError(f"Adam: lr must be positive, got {self.lr}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise OptimizerError(f"Adam: beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not eps > 0:
            raise OptimizerError(f"Adam: eps must be positive, got {self.eps}")

    @property
    def kind(self) -> int:
        return ADAM_KIND

    @property
    def hyper(self) -> np.ndarray:
        return _hyper(beta1=self.beta1, beta2=self.beta2, eps=self.eps)


Optimizer = SGD | Adam


def make_optimizer(name: str, lr: float | None = None) -> Optimizer:
    """Build an optimizer from a CLI name (`sgd`, `momentum`, `nesterov`, `adam`) with sensible defaults."""
    if not isinstance(name, str):
        raise OptimizerError(f"optimizer must be SGD(...), Adam(...) or a name, got {type(name).__name__}")
    name = name.strip().lower()
    if name == "sgd":
        return SGD(lr if lr is not None else 0.1)
    if name == "momentum":
        return SGD(lr if lr is not None else 0.05, momentum=0.9)
    if name == "nesterov":
        return SGD(lr if lr is not None else 0.05, momentum=0.9, nesterov=True)
    if name == "adam":
        return Adam(lr if lr is not None else 1e-3)
    raise OptimizerError(f"unknown optimizer {name!r}: choose sgd, momentum, nesterov or adam")


def as_optimizer(value: object) -> Optimizer:
    """`train(optimizer=...)`: an `SGD`/`Adam` as is, or a name as the CLI takes it (default learning rate)."""
    if isinstance(value, (SGD, Adam)):
        return value
    if isinstance(value, str):
        return make_optimizer(value)
    raise OptimizerError(
        f"optimizer must be symgrad.SGD(...), symgrad.Adam(...) or one of 'sgd', 'momentum', 'nesterov', 'adam'; "
        f"got {type(value).__name__}"
    )
