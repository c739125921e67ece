"""The step engine: `Trainer` (one flat parameter vector, one compiled call per step or per chunk of steps).

`runtime.training.train` runs epochs on it, `runtime.distributed.DistributedTrainer` splits its steps across MPI
ranks; both import this module, neither imports the other's caller (no import circle).

Divergence: a compiled call stops at the first step whose loss or gradient is not finite, leaving theta at the
parameters that produced it. The trainer then rolls back to the *last parameters whose loss was finite* (those of
the step before) by restoring the snapshot taken at the start of the call and re-running the steps before it on
the same inputs (deterministic, so bit-identical). The last step of every call runs in a call of its own, after a
snapshot, so a failure at the first step of the next call goes back to that snapshot without keeping any inputs.
While training goes well this costs two theta copies and one extra compiled call per chunk of steps.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from symgrad.errors import DataError, TrainingDiverged, UsageError
from symgrad.lang import sampling
from symgrad.runtime import blas, warmup
from symgrad.runtime.optim import Optimizer, as_optimizer
from symgrad.runtime.support import check_arrays, check_seed, number, params_dtype


def check_model(model: Any) -> None:
    """`model` must be what `symgrad.load` returns; a spec path passed straight in is the usual slip."""
    if not all(hasattr(model, a) for a in ("N_THETA", "_loss_grad", "init_params", "flatten")):
        hint = "; call symgrad.load(path) first" if isinstance(model, (str, os.PathLike)) else ""
        got = f"{type(model).__name__} {model!r}"[:160]
        raise UsageError(f"model must be a module returned by symgrad.load, got {got}{hint}")


def check_flag(name: str, value: Any) -> bool:
    """A yes/no argument: True or False, not a string (`shuffle="no"` would be truthy and shuffle)."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _params_dtype(params: Mapping[str, Any]) -> np.dtype:
    """`support.params_dtype` of the given parameters (taking the first array's dtype made a dict of one float32
    and one float64 array train, and come back, in float32)."""
    if not isinstance(params, Mapping):
        raise UsageError(f"params must be a dict of arrays (one per parameter), got {type(params).__name__}")
    return params_dtype(params.values())


def _schedule_values(sched: Callable, t0: int, n: int, what: str) -> np.ndarray:
    """sched(t0), ..., sched(t0 + n - 1) as float64, each a finite number: one conversion for the run of steps (this
    is per step of training), and only on a failure a look for the first bad value, to name its step."""
    values = [sched(t) for t in range(t0, t0 + n)]
    try:
        out = np.array(values)  # its dtype says what came back: numbers are i/u/f, a str 'U', None 'O', a bool 'b'
        if out.shape == (n,) and out.dtype.kind in "iuf" and np.isfinite(out).all():
            return out.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        pass
    for k, v in enumerate(values):
        number(v, f"{what} at step {t0 + k}")
    raise UsageError(f"{what}s are not one number per step")  # pragma: no cover - number() named the bad one


def _split_schedule(schedule: Any, const_names: list[str]) -> tuple[Callable | None, dict[str, Callable]]:
    """`schedule=` is one lr-multiplier schedule or a dict {"lr": ..., constant name: absolute schedule}."""
    if schedule is None:
        return None, {}
    if callable(schedule):
        return schedule, {}
    if not isinstance(schedule, Mapping):
        raise UsageError("schedule must be a callable step -> value or a dict of them keyed by 'lr' or constant names")
    lr = schedule.get("lr")
    consts: dict[str, Callable] = {}
    for key, sched in schedule.items():
        if not callable(sched):
            raise UsageError(f"schedule[{key!r}] is not callable")
        if key == "lr":
            continue
        if key not in const_names:
            known = ", ".join(const_names) or "none"
            raise UsageError(f"schedule: {key!r} is neither 'lr' nor a constant of the spec (constants: {known})")
        consts[key] = sched
    return lr, consts


def diverged_message(step: int, kept: int, where: str = "") -> str:
    """The one line of a divergence: the failing step and which parameters were kept."""
    if kept + 1 < step:
        keep = f"kept the parameters of step {kept + 1}, the last whose loss was finite"
    else:
        keep = "kept the starting parameters (no step had a finite loss)"
    return f"training diverged at step {step}{where}: non-finite loss or gradient; {keep}"


class Trainer:
    """Stateful training loop over one flat parameter vector: the step API that `train` is built on."""

    def __init__(
        self,
        model: ModuleType,
        optimizer: Optimizer,
        *,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
        constants: Mapping[str, float] | None = None,
        clip_norm: float | None = None,
        schedule: Any = None,
        n_samples: int | None = None,
    ):
        """`n_samples` (an extension) is the training-set size N for `reduction: sum`'s N/B gradient scale."""
        check_model(model)
        self.model = model
        self.optimizer = as_optimizer(optimizer)
        seed = check_seed(seed)
        if params is None:
            params = model.init_params(seed)
        self.dtype = _params_dtype(params)
        declared = {n for n, _ in model.PARAMS}
        unknown = [k for k in params if k not in declared]
        if unknown:
            known = ", ".join(n for n, _ in model.PARAMS)
            raise UsageError(f"params: unknown parameter {unknown[0]!r}; the spec's parameters are: {known}")
        try:
            self.theta = np.ascontiguousarray(model.flatten(dict(params), self.dtype))
        except KeyError as exc:
            raise UsageError(f"params: missing parameter {exc}") from None
        if self.theta.shape != (model.N_THETA,):
            raise UsageError(f"params flatten to {self.theta.shape[0]} numbers, the model has {model.N_THETA}")
        if not np.all(np.isfinite(self.theta)):  # bad input, not a divergence of training
            bad = next(k for k, v in model.unflatten(self.theta).items() if not np.all(np.isfinite(v)))
            raise DataError(f"param {bad!r} contains NaN or infinite values")
        self.grad = np.zeros_like(self.theta)
        self.opt_state = np.zeros((2, model.N_THETA), self.dtype)
        if getattr(model, "TARGET", "cpu") == "cpu":  # params are valid: a first run starts compiling on core 2
            warmup.start(self.dtype.name, model)
        self.step_count = 0
        self._before_last: tuple | None = None  # (theta, opt_state, step) before the last step of the last call
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        try:
            given = dict(constants) if isinstance(constants, Mapping) else constants  # a non-dict is refused there
            self._consts = np.asarray(model.consts_vector(given), np.float64)
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"constants: {exc}") from None
        self.const_names = [name for name, _ in model.CONSTANTS]
        if clip_norm is not None and (
            isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float, np.integer, np.floating))
        ):
            raise UsageError(f"clip_norm must be a positive number, got {type(clip_norm).__name__} {clip_norm!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise UsageError(f"clip_norm must be positive, got {clip_norm}")
        self.clip_norm = clip_norm
        self.lr_schedule, self.const_schedules = _split_schedule(schedule, self.const_names)
        self.n_samples = n_samples
        self._sampled = [(name, tuple(shape)) for name, shape, sample in model.INPUTS if sample is not None]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Views into the flat theta: they change as training proceeds (copy them to keep a snapshot)."""
        return self.model.unflatten(self.theta)

    def params_copy(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in self.model.unflatten(self.theta).items()}

    def lrs(self, t0: int, n: int) -> np.ndarray:
        """Learning rate of each of the steps t0 .. t0+n-1 (0-based): base lr times the schedule."""
        base = float(self.optimizer.lr)
        if self.lr_schedule is None:
            return np.full(n, base)
        mults = _schedule_values(self.lr_schedule, t0, n, "the lr schedule's value")
        bad = np.flatnonzero(mults < 0)
        if bad.size:  # a negative rate ascends a minimised loss without a word
            t = t0 + int(bad[0])
            raise UsageError(
                f"the lr schedule gave {mults[bad[0]]:g} at step {t}; a learning rate multiplier must be >= 0"
            )
        return base * mults

    def consts_steps(self, t0: int, n: int) -> np.ndarray:
        """Constants vector of each step: defaults, then `constants=`, then absolute constant schedules."""
        out = np.tile(self._consts, (n, 1))
        for name, sched in self.const_schedules.items():
            col = self.const_names.index(name)
            out[:, col] = _schedule_values(sched, t0, n, f"schedule[{name!r}]'s value")
        return np.ascontiguousarray(out)

    def constants_at(self, t: int) -> dict[str, float]:
        """The constants in effect at step t, as a dict (for `forward`/`loss` calls)."""
        vec = self.consts_steps(t, 1)[0]
        return {name: float(vec[i]) for i, name in enumerate(self.const_names)}  # vec may be padded

    def gscale(self, batch_size: int) -> float:
        sign = float(self.model.SIGN)
        if self.model.REDUCTION == "sum":
            n = self.n_samples if self.n_samples is not None else batch_size
            return sign * n / batch_size
        return sign / batch_size

    def objective(self, loss_sum: np.ndarray | float, batch_size: int) -> Any:
        """Batch objective from the kernel's loss sum: what `model.loss` would return for the batch."""
        return loss_sum if self.model.REDUCTION == "sum" else loss_sum / batch_size

    def _inputs(self, batches: dict[str, np.ndarray], n_steps: int, batch_size: int) -> tuple[np.ndarray, ...]:
        """Positional kernel inputs in INPUTS order, drawing sampled inputs the batches do not supply."""
        args = []
        for name, shape, sample in self.model.INPUTS:
            if name in batches:
                args.append(batches[name])
            else:  # only sampled inputs reach here (check_arrays enforces the rest)
                args.append(sampling.draw(self.rng, sample, (n_steps, batch_size, *shape), self.dtype))
        return tuple(args)

    def _train_epoch_call(self, t0: int, n_steps: int, batch_size: int, inputs: tuple):
        clip = float(self.clip_norm) if self.clip_norm is not None else 0.0
        return self.model._train_epoch(
            self.theta,
            self.grad,
            self.opt_state,
            int(self.optimizer.kind),
            self.optimizer.hyper,
            t0,
            self.lrs(t0, n_steps),
            self.consts_steps(t0, n_steps),
            clip,
            self.gscale(batch_size),
            *inputs,
        )

    def _call(self, t0: int, n: int, batch_size: int, inputs: tuple) -> tuple[np.ndarray, int]:
        """Steps t0 .. t0+n-1 in one compiled call on the first n rows of `inputs`; (losses, steps done)."""
        if n == 0:
            return np.zeros(0), 0
        with blas.limit(blas.threads_for(int(self.theta.size), batch_size)):
            losses, done = _interruptible(
                self, lambda: self._train_epoch_call(t0, n, batch_size, tuple(a[:n] for a in inputs))
            )
        return np.asarray(losses[: int(done)], np.float64), int(done)

    def _run(self, batches: dict[str, np.ndarray], n_steps: int, batch_size: int) -> np.ndarray:
        """Run n_steps; the last one in a call of its own, so the parameters before it are kept for a rollback."""
        t0 = self.step_count
        inputs = self._inputs(batches, n_steps, batch_size)
        start = (self.theta.copy(), self.opt_state.copy())
        losses, done = self._call(t0, n_steps - 1, batch_size, inputs)
        before_last = None
        if done == n_steps - 1:
            before_last = (self.theta.copy(), self.opt_state.copy(), t0 + done)
            last, n_last = self._call(t0 + done, 1, batch_size, tuple(a[done:] for a in inputs))
            losses, done = np.concatenate([losses, last]), done + n_last
        self.step_count = t0 + done
        objectives = np.asarray(self.objective(losses, batch_size))
        if done < n_steps:
            step = t0 + done + 1
            self._roll_back(start, t0, done, batch_size, inputs)
            exc = TrainingDiverged(diverged_message(step, self.step_count), step=step, params=self.params_copy())
            exc.objectives = objectives  # steps that completed before the failure
            raise exc
        self._before_last = before_last
        return objectives

    def _roll_back(self, start, t0: int, done: int, batch_size: int, inputs: tuple) -> None:
        """After step t0 + done + 1 failed (theta untouched by it): back to the parameters of the step before."""
        if done >= 1:  # restore the snapshot of this call's start and replay: deterministic, bit for bit
            self.theta[:] = start[0]
            self.opt_state[:] = start[1]
            self.step_count = t0
            _, redone = self._call(t0, done - 1, batch_size, inputs)
            if redone != done - 1:  # pragma: no cover - the same steps succeeded a moment ago
                raise RuntimeError("replaying finished steps did not reproduce them")
            self.step_count = t0 + redone
        elif self._before_last is not None and self._before_last[2] + 1 == t0:  # the first step of this call
            self.theta[:] = self._before_last[0]
            self.opt_state[:] = self._before_last[1]
            self.step_count = self._before_last[2]
        # else: the very first step (or the first after a restore) failed; theta is the starting point

    def run_epoch(self, batches: Mapping[str, Any] | None = None, *, n_steps: int | None = None) -> np.ndarray:
        """Run every batch in one compiled call; `batches[name]` has shape (n_batches, batch_size, ...).

        Returns the per-step batch objectives. A spec with no data inputs needs `n_steps=`.
        """
        arrays, leading = check_arrays(
            self.model, batches, self.dtype, what="batches", lead=("n_batches", "batch_size")
        )
        if leading is None:
            if n_steps is None:
                raise UsageError("run_epoch: no batches given, pass n_steps= for a spec without data inputs")
            return self._run({}, n_steps, 1)
        if n_steps is not None and n_steps != leading[0]:
            raise UsageError(f"run_epoch: n_steps={n_steps} but the batches hold {leading[0]}")
        return self._run(arrays, leading[0], leading[1])

    def step(self, batch: Mapping[str, Any] | None = None) -> float:
        """One compiled forward/backward/update; returns the batch objective before the update."""
        arrays, leading = check_arrays(self.model, batch, self.dtype, what="batch", lead=("B",))
        if leading is None:
            return float(self._run({}, 1, 1)[0])
        return float(self._run({k: v[None] for k, v in arrays.items()}, 1, leading[0])[0])

    def state_dict(self) -> dict[str, Any]:
        """Copies of everything needed to continue bit-identically: params, optimizer state, step, RNG."""
        prev = self._before_last
        return {
            "params": self.params_copy(),
            "theta": self.theta.copy(),
            "opt_state": self.opt_state.copy(),
            "step": self.step_count,
            "rng": self.rng.bit_generator.state,
            # the state before the last step, so that a divergence right after a restore still rolls back one step
            "prev": None if prev is None else (prev[0].copy(), prev[1].copy(), prev[2]),
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` (or a checkpoint's arrays). Everything is checked before anything is set, so a
        bad state leaves the trainer as it was; each problem is one UsageError naming the entry."""
        if not isinstance(d, Mapping):
            raise UsageError(f"state must be a dict from state_dict(), got {type(d).__name__}")
        missing = [k for k in ("opt_state", "step", "rng") if k not in d] + (
            [] if "theta" in d or "params" in d else ["theta"]
        )
        if missing:
            raise UsageError(f"state is missing {', '.join(map(repr, missing))} (a dict from state_dict())")
        if "theta" in d:
            theta = self._state_array(d["theta"], "theta", self.theta.shape)
        else:
            theta = self.model.flatten(dict(d["params"]), self.dtype)
        opt_state = self._state_array(d["opt_state"], "opt_state", self.opt_state.shape)
        step = d["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
            raise UsageError(f"state['step'] must be a non-negative integer, got {step!r}")
        rng_state = d["rng"]
        try:
            if isinstance(rng_state, (str, np.ndarray)):
                rng_state = json.loads(str(rng_state))
            probe = np.random.default_rng()
            probe.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as exc:
            raise UsageError(f"state['rng'] is not a NumPy generator state ({type(exc).__name__}: {exc})") from None
        prev = d.get("prev")
        if prev is not None:
            p_theta = self._state_array(prev[0], "prev theta", self.theta.shape)
            p_opt = self._state_array(prev[1], "prev opt_state", self.opt_state.shape)
            prev = (p_theta, p_opt, int(prev[2])) if int(prev[2]) + 1 == int(step) else None
        self.theta[:] = theta
        self.opt_state[:] = opt_state
        self.step_count = int(step)
        self._before_last = prev
        self.rng.bit_generator.state = rng_state

    def _state_array(self, value: Any, what: str, shape: tuple) -> np.ndarray:
        arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
        if arr is None or arr.dtype.kind not in "iuf" or arr.shape != shape:
            got = f"{arr.dtype} of shape {arr.shape}" if arr is not None else type(value).__name__
            raise UsageError(f"state[{what!r}] must be numbers of shape {shape}, got {got}")
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"state[{what!r}] contains NaN or infinite values")
        return arr


def _interruptible(trainer: Any, call: Callable[[], Any]) -> Any:
    """Run one compiled call so that Ctrl-C stops it promptly (issue 12: a 5-deep sum ignored SIGINT).

    Python runs signal handlers only between bytecodes, and a Numba kernel is one long call. So the call runs in a
    daemon thread (the kernels are compiled `nogil=True`) while the main thread waits in short, interruptible
    joins. On KeyboardInterrupt the trainer gets back the parameters and optimizer state from before the call
    (the abandoned kernel finishes writing into arrays nobody reads; at exit the daemon thread is dropped), and
    the interrupt propagates. Off the main thread, where no SIGINT arrives, the call runs directly; so does a call
    whose predecessor took under 20 ms (Python sees Ctrl-C between such calls, and tiny steps skip the thread).
    """
    import threading

    last = getattr(trainer, "_last_call_s", None)
    if threading.current_thread() is not threading.main_thread() or (last is not None and last < 0.02):
        t0 = time.perf_counter()
        out = call()
        trainer._last_call_s = time.perf_counter() - t0
        return out
    t0 = time.perf_counter()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = call()
        except BaseException as exc:  # re-raised in the caller's thread
            box["exc"] = exc

    theta, state = trainer.theta.copy(), trainer.opt_state.copy()
    worker = threading.Thread(target=run, name="symgrad-kernel", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        trainer.theta, trainer.opt_state, trainer.grad = theta, state, np.zeros_like(trainer.grad)
        raise
    trainer._last_call_s = time.perf_counter() - t0
    if "exc" in box:
        raise box["exc"]
    return box["out"]
