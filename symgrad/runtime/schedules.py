"""Schedules: small callables `step -> value`, `step` the 0-based global training step.

How `schedule=` is read by `symgrad.train` / `symgrad.Trainer` (one design, two forms):

- a single schedule, e.g. `schedule=cosine(1000)`: a **multiplier** of the optimizer's base lr,
  so `lr(step) = optimizer.lr * schedule(step)`;
- a dict, e.g. `schedule={"lr": inverse_time(0.01), "beta": linear_ramp(0.0, 1.0, 500)}`: the `"lr"` entry is
  the lr multiplier as above; every other key names a spec constant and its schedule gives the constant's
  **absolute** value at that step (KL annealing, temperature ramps), overriding `constants=` and the default.

Multipliers (not absolute rates) for lr because the optimizer already carries a rate: `SGD(0.1)` with
`step_decay(10, 0.5)` reads as "0.1, halved every 10 steps". Absolute values for constants because a
constant has no base value worth scaling (a KL weight ramps from 0, where a multiplier would be meaningless).
Schedules are plain callables, so any `lambda step: ...` works too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from symgrad.errors import UsageError
from symgrad.runtime.support import number

Schedule = Callable[[int], float]


def _steps(value: object, what: str) -> None:
    """A count of steps: a whole number >= 1 (2.5 steps or True is a mistake, not a count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{what} must be a whole number >= 1, got {value!r}")


def _real(value: object, what: str, low: float | None = None) -> None:
    """A finite real number (>= low when given): NaN or a negative factor would make the lr NaN or negative."""
    x = number(value, what)
    if low is not None and x < low:
        raise UsageError(f"{what} must be a finite number >= {low:g}, got {value!r}")


@dataclass(frozen=True)
class constant:  # noqa: N801 - reads as a function at the call site, like the others
    """Always `value` (1.0: the optimizer's base lr unchanged)."""

    value: float = 1.0

    def __post_init__(self) -> None:
        _real(self.value, "constant: value")

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class step_decay:  # noqa: N801
    """`gamma ** (step // every)`: multiply by gamma every `every` steps."""

    every: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _steps(self.every, "step_decay: every")
        _real(self.gamma, "step_decay: gamma", 0.0)

    def __call__(self, step: int) -> float:
        return float(self.gamma ** (step // self.every))


@dataclass(frozen=True)
class inverse_time:  # noqa: N801
    """`1 / (1 + decay * step)`: the decreasing rate that SGD's convergence theory asks for (eta ~ 1/t)."""

    decay: float

    def __post_init__(self) -> None:
        _real(self.decay, "inverse_time: decay", 0.0)

    def __call__(self, step: int) -> float:
        return 1.0 / (1.0 + self.decay * step)


@dataclass(frozen=True)
class cosine:  # noqa: N801
    """Cosine from 1 at step 0 to `final` at `total_steps`, then flat at `final`."""

    total_steps: int
    final: float = 0.0

    def __post_init__(self) -> None:
        _steps(self.total_steps, "cosine: total_steps")
        _real(self.final, "cosine: final", 0.0)

    def __call__(self, step: int) -> float:
        frac = min(step, self.total_steps) / self.total_steps
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class linear_warmup:  # noqa: N801
    """`(step + 1) / warmup_steps` for `warmup_steps` steps, then `then(step - warmup_steps)` (or 1)."""

    warmup_steps: int
    then: Schedule | None = None

    def __post_init__(self) -> None:
        _steps(self.warmup_steps, "linear_warmup: warmup_steps")
        if self.then is not None and not callable(self.then):
            raise UsageError(f"linear_warmup: then must be a schedule (a callable step -> value), got {self.then!r}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 1.0 if self.then is None else float(self.then(step - self.warmup_steps))


@dataclass(frozen=True)
class linear_ramp:  # noqa: N801
    """From `start` at step 0 linearly to `end` at step `steps`, then flat (KL annealing of `beta`)."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        _steps(self.steps, "linear_ramp: steps")
        _real(self.start, "linear_ramp: start")
        _real(self.end, "linear_ramp: end")

    def __call__(self, step: int) -> float:
        frac = min(step, self.steps) / self.steps
        return self.start + (self.end - self.start) * frac


__all__ = ["Schedule", "constant", "step_decay", "inverse_time", "cosine", "linear_warmup", "linear_ramp"]
