"""The generic mini-batch runner: `Trainer` (one compiled call per step or per epoch) and `train`.

Everything here talks to a generated module only through its private contract (docs/internals.md):
flat `theta`, `_train_epoch`, `_loss`, `INPUTS`, `SIGN`, `REDUCTION`. Decisions this file makes:

- **Batch objective** = what `model.loss(params, batch)` returns for that batch, in the spec's own
  sign: the loss sum / B for `reduction: mean`, the loss sum for `reduction: sum`. `history` is the
  per-epoch mean of the batch objectives (each taken before its update); `val_history` is the objective
  over the whole validation set (mean per sample, or the sum for `reduction: sum`).
- **Gradient scale** passed to the kernel: SIGN / B for mean; SIGN * N / B for sum (the unbiased m/b
  estimator of the full-data gradient, N = training-set size); SIGN for a spec with no inputs
  (full-batch, one step per epoch).
- **Trailing partial batch** of an epoch is dropped, so every step has the same B (and the same scale).
- **Randomness**: one `np.random.Generator(seed)` per run drives, in order, the epoch's permutation and
  then the epoch's sampled inputs (`sample: normal`, unless the data supplies them). Same seed ->
  bit-identical result. Validation draws use their own generator, so validating changes nothing.
- `steps=` caps the total number of steps (the last epoch may be partial); with only `steps=`, epochs
  run until the count is reached. A spec with no data inputs has one step per epoch.
- **Checkpoints** are written at each epoch end (atomically: temp file + `os.replace`); `resume=True`
  with a missing checkpoint file starts fresh, so the same command can be re-run after an interruption.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from symgrad import blas
from symgrad.errors import DataError, TrainingDiverged, UsageError
from symgrad.optim import Optimizer

CHUNK_BYTES = 64 * 2**20  # gathered mini-batches per compiled call: bounds memory on large data sets


@dataclass
class TrainResult:
    """What `train` returns (and what `TrainingDiverged.result` holds up to the failing step)."""

    params: dict[str, np.ndarray]
    history: np.ndarray
    step_history: np.ndarray | None = None
    val_history: np.ndarray | None = None
    accuracy: np.ndarray | None = None
    val_accuracy: np.ndarray | None = None
    train_time: float = 0.0
    steps: int = 0
    epochs: int = 0


@dataclass
class EpochInfo:
    """Passed to `train(callback=...)` after every epoch (the CLI prints one line from it)."""

    epoch: int
    epochs: int
    loss: float
    steps: int
    val_loss: float | None = None
    accuracy: float | None = None
    val_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _shape_str(shape: tuple, lead: tuple[str, ...] = ("N",)) -> str:
    dims = [*lead, *(str(d) for d in shape)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _params_dtype(params: Mapping[str, Any]) -> np.dtype:
    """float32 only when the given parameters are float32; float64 otherwise (the API's default)."""
    for value in params.values():
        if np.asarray(value).dtype == np.float32:
            return np.dtype(np.float32)
        break
    return np.dtype(np.float64)


def check_arrays(
    model: ModuleType,
    data: Mapping[str, Any] | None,
    dtype: np.dtype,
    *,
    what: str = "data",
    lead: tuple[str, ...] = ("N",),
) -> tuple[dict[str, np.ndarray], tuple[int, ...] | None]:
    """Validate arrays against the spec's inputs and cast them to `dtype` once.

    Returns the cast arrays and their common leading shape (None when no array was given). Every failure is a
    `DataError` naming the array and the expected shape.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise DataError(f"{what} must be a dict of arrays (one per input), got {type(data).__name__}")
    inputs = {name: (tuple(shape), sample) for name, shape, sample in model.INPUTS}
    for name in data:
        if name not in inputs:
            known = ", ".join(inputs) or "none"
            raise DataError(f"{what}: unknown array {name!r}; the spec's inputs are: {known}")
    out: dict[str, np.ndarray] = {}
    first: str | None = None
    leading: tuple[int, ...] | None = None
    for name, (shape, sample) in inputs.items():
        expected = _shape_str(shape, lead)
        if name not in data:
            if sample is None:
                raise DataError(f"{what}: missing input {name!r}, expected an array of shape {expected}")
            continue
        arr = np.asarray(data[name])
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"{what}[{name!r}] has non-numeric dtype {arr.dtype}; expected numbers of shape {expected}"
            )
        if arr.ndim != len(lead) + len(shape) or arr.shape[len(lead) :] != shape:
            raise DataError(f"{what}[{name!r}] has shape {arr.shape}, expected {expected}")
        if leading is None:
            first, leading = name, arr.shape[: len(lead)]
        elif arr.shape[: len(lead)] != leading:
            raise DataError(
                f"{what}[{name!r}] has leading shape {arr.shape[: len(lead)]} but {what}[{first!r}] has "
                f"{leading}; every input needs the same number of samples, shape {expected}"
            )
        cast = np.ascontiguousarray(arr, dtype=dtype)
        if not np.all(np.isfinite(cast)):
            raise DataError(f"{what}[{name!r}] contains NaN or infinite values (after casting to {dtype})")
        out[name] = cast
    if leading is not None and min(leading, default=1) == 0:
        raise DataError(f"{what}: the arrays are empty, expected shape {_shape_str(inputs[first][0], lead)}")
    return out, leading


def _split_schedule(schedule: Any, const_names: list[str]) -> tuple[Callable | None, dict[str, Callable]]:
    """`schedule=` is one lr-multiplier schedule or a dict {"lr": ..., constant name: absolute schedule}."""
    if schedule is None:
        return None, {}
    if callable(schedule):
        return schedule, {}
    if not isinstance(schedule, Mapping):
        raise UsageError(
            "schedule must be a callable step -> value or a dict of them keyed by 'lr' or constant names"
        )
    lr = schedule.get("lr")
    consts: dict[str, Callable] = {}
    for key, sched in schedule.items():
        if not callable(sched):
            raise UsageError(f"schedule[{key!r}] is not callable")
        if key == "lr":
            continue
        if key not in const_names:
            known = ", ".join(const_names) or "none"
            raise UsageError(
                f"schedule: {key!r} is neither 'lr' nor a constant of the spec (constants: {known})"
            )
        consts[key] = sched
    return lr, consts


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
        self.model = model
        self.optimizer = optimizer
        if params is None:
            params = model.init_params(seed)
        self.dtype = _params_dtype(params)
        try:
            self.theta = np.ascontiguousarray(model.flatten(dict(params), self.dtype))
        except KeyError as exc:
            raise UsageError(f"params: missing parameter {exc}") from None
        if self.theta.shape != (model.N_THETA,):
            raise UsageError(
                f"params flatten to {self.theta.shape[0]} numbers, the model has {model.N_THETA}"
            )
        self.grad = np.zeros_like(self.theta)
        self.opt_state = np.zeros((2, model.N_THETA), self.dtype)
        self.step_count = 0
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        try:
            self._consts = np.asarray(model.consts_vector(dict(constants) if constants else None), np.float64)
        except (KeyError, ValueError) as exc:
            raise UsageError(f"constants: {exc}") from None
        self.const_names = [name for name, _ in model.CONSTANTS]
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
        return np.array([base * float(self.lr_schedule(t)) for t in range(t0, t0 + n)], dtype=np.float64)

    def consts_steps(self, t0: int, n: int) -> np.ndarray:
        """Constants vector of each step: defaults, then `constants=`, then absolute constant schedules."""
        out = np.tile(self._consts, (n, 1))
        for name, sched in self.const_schedules.items():
            col = self.const_names.index(name)
            out[:, col] = [float(sched(t)) for t in range(t0, t0 + n)]
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

    def _inputs(
        self, batches: dict[str, np.ndarray], n_steps: int, batch_size: int
    ) -> tuple[np.ndarray, ...]:
        """Positional kernel inputs in INPUTS order, drawing sampled inputs the batches do not supply."""
        args = []
        for name, shape, _sample in self.model.INPUTS:
            if name in batches:
                args.append(batches[name])
            else:  # only sampled inputs reach here (check_arrays enforces the rest)
                draw = self.rng.standard_normal((n_steps, batch_size, *shape))
                args.append(np.ascontiguousarray(draw, dtype=self.dtype))
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

    def _run(self, batches: dict[str, np.ndarray], n_steps: int, batch_size: int) -> np.ndarray:
        t0 = self.step_count
        inputs = self._inputs(batches, n_steps, batch_size)
        with blas.limit(blas.threads_for(int(self.theta.size), batch_size)):
            losses, n_done = _interruptible(self, lambda: self._train_epoch_call(t0, n_steps, batch_size, inputs))
        n_done = int(n_done)
        self.step_count = t0 + n_done
        objectives = np.asarray(self.objective(np.asarray(losses[:n_done], np.float64), batch_size))
        if n_done < n_steps:
            step = t0 + n_done + 1
            exc = TrainingDiverged(
                f"training diverged at step {step}: non-finite loss or gradient (last good parameters kept)",
                step=step,
                params=self.params_copy(),
            )
            exc.objectives = objectives  # steps that completed before the failure
            raise exc
        return objectives

    def run_epoch(
        self, batches: Mapping[str, Any] | None = None, *, n_steps: int | None = None
    ) -> np.ndarray:
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
        return {
            "params": self.params_copy(),
            "theta": self.theta.copy(),
            "opt_state": self.opt_state.copy(),
            "step": self.step_count,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` (or a checkpoint's arrays)."""
        if "theta" in d:
            theta = np.asarray(d["theta"])
        else:
            theta = self.model.flatten(dict(d["params"]), self.dtype)
        if theta.shape != self.theta.shape:
            raise UsageError(f"state has {theta.shape[0]} parameters, the model has {self.theta.shape[0]}")
        opt_state = np.asarray(d["opt_state"])
        if opt_state.shape != self.opt_state.shape:
            raise UsageError(f"optimizer state has shape {opt_state.shape}, expected {self.opt_state.shape}")
        self.theta[:] = theta
        self.opt_state[:] = opt_state
        self.step_count = int(d["step"])
        rng_state = d["rng"]
        if isinstance(rng_state, (str, np.ndarray)):
            rng_state = json.loads(str(rng_state))
        self.rng.bit_generator.state = rng_state


# ---------------------------------------------------------------------------------------------- evaluation


def _classifier_label(model: ModuleType) -> tuple[int, ...] | None:
    """A classifier: a data input `y` of shape [K], K >= 2 (one-hot); its logits: an output of shape [K]."""
    for name, shape, sample in model.INPUTS:
        if name == "y" and sample is None and len(shape) == 1 and shape[0] >= 2:
            return tuple(shape)
    return None


def _chunks(n: int, size: int = 1024):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate(
    trainer: Trainer, data: dict[str, np.ndarray], n: int, rng: np.random.Generator, accuracy: bool
) -> tuple[float, float | None]:
    """Objective over `data` (mean or sum as the spec reduces) and, for classifiers, argmax accuracy."""
    model = trainer.model
    consts = trainer.consts_steps(trainer.step_count, 1)[0]
    total = 0.0
    for sl in _chunks(n):
        b = sl.stop - sl.start
        args = []
        for name, shape, _sample in model.INPUTS:
            if name in data:
                args.append(data[name][sl])
            else:
                args.append(np.ascontiguousarray(rng.standard_normal((b, *shape)), dtype=trainer.dtype))
        total += float(model._loss(trainer.theta, consts, *args))
    objective = total if model.REDUCTION == "sum" else total / n
    acc = None
    label_shape = _classifier_label(model) if accuracy else None
    if label_shape is not None:
        correct = 0
        constants = trainer.constants_at(trainer.step_count)
        for sl in _chunks(n):
            out = model.forward(trainer.params, {k: v[sl] for k, v in data.items()}, constants)
            logits = next(
                (
                    np.asarray(v)
                    for v in out.values()
                    if np.asarray(v).shape == (sl.stop - sl.start, *label_shape)
                ),
                None,
            )
            if logits is None:
                return objective, None
            correct += int(np.sum(np.argmax(logits, axis=1) == np.argmax(data["y"][sl], axis=1)))
        acc = correct / n
    return objective, acc


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: str | os.PathLike, trainer: Trainer, epoch: int, logs: dict[str, list], meta: dict[str, Any]
) -> None:
    """Write atomically (temp file in the same folder, then `os.replace`): never half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    arrays = {
        "theta": trainer.theta,
        "opt_state": trainer.opt_state,
        "step": np.int64(trainer.step_count),
        "epoch": np.int64(epoch),
        "rng": np.array(json.dumps(trainer.rng.bit_generator.state)),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    for key, values in logs.items():
        arrays[f"log_{key}"] = np.asarray(values, dtype=np.float64)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` into plain Python values and arrays."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read checkpoint {os.fspath(path)!r}: {exc}") from None
    out: dict[str, Any] = {
        "theta": raw["theta"],
        "opt_state": raw["opt_state"],
        "step": int(raw["step"]),
        "epoch": int(raw["epoch"]),
        "rng": json.loads(str(raw["rng"])),
        "meta": json.loads(str(raw["meta"])),
        "logs": {k[4:]: list(v) for k, v in raw.items() if k.startswith("log_")},
    }
    return out


# ---------------------------------------------------------------------------------------------- train


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _on_root(dist: Any, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)` here (one process) or on rank 0 only, every rank learning whether it failed (MPI)."""
    if dist is None:
        fn(*args)
    else:
        dist.on_root(what, fn, *args)


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


def train(
    model: ModuleType,
    data: Mapping[str, Any] | None = None,
    *,
    optimizer: Optimizer,
    batch_size: int,
    epochs: int | None = None,
    steps: int | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    clip_norm: float | None = None,
    schedule: Any = None,
    constants: Mapping[str, float] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    validation: Mapping[str, Any] | None = None,
    history_per_step: bool = False,
    callback: Callable[[EpochInfo], None] | None = None,
    comm: Any = None,
    device: str = "cpu",
    _dist: Any = None,
) -> TrainResult:
    """Train `model` on `data` with mini-batches; see the module docstring for every convention.

    `comm` (an mpi4py communicator, e.g. `MPI.COMM_WORLD`) splits every global batch across its ranks
    (`symgrad.distributed`, docs/distributed.md): the same result as one process up to summation order;
    rank 0 alone shows progress, writes checkpoints and calls `callback`.
    """
    if device not in ("cpu", "cuda"):
        raise UsageError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":  # the CUDA twin honours the same private contract, so the runner is unchanged
        from symgrad.cuda_runtime import as_cuda

        model = as_cuda(model)
    if comm is not None and _dist is None:
        kwargs = {k: v for k, v in locals().items() if k not in ("model", "data", "comm", "_dist")}
        from symgrad.distributed import train_distributed

        return train_distributed(model, data, comm=comm, **kwargs)
    root = _dist is None or _dist.is_root
    batch_size = _positive_int("batch_size", batch_size)
    epochs = _positive_int("epochs", epochs)
    steps = _positive_int("steps", steps)
    if epochs is None and steps is None:
        raise UsageError("train: give epochs= or steps=")
    if resume and checkpoint is None:
        raise UsageError("train: resume=True needs checkpoint=PATH")

    start_params = params if params is not None else model.init_params(seed)
    dtype = _params_dtype(start_params)
    arrays, leading = check_arrays(model, data, dtype, what="data")
    has_data = leading is not None
    n_train = leading[0] if has_data else 1
    if has_data:
        if batch_size > n_train:
            raise UsageError(f"batch_size {batch_size} is larger than the {n_train} training samples")
        steps_per_epoch = n_train // batch_size
        bsz = batch_size
    else:  # full batch: no inputs (B = 1) or only sampled ones (B = batch_size draws per step)
        steps_per_epoch = 1
        bsz = batch_size if any(s is not None for _, _, s in model.INPUTS) else 1
        n_train = bsz
    val_arrays, val_leading = (
        check_arrays(model, validation, dtype, what="validation") if validation is not None else ({}, None)
    )

    trainer = (Trainer if _dist is None else _dist.make_trainer)(
        model,
        optimizer,
        params=start_params,
        seed=seed,
        constants=constants,
        clip_norm=clip_norm,
        schedule=schedule,
        n_samples=n_train,
    )
    if epochs is None:
        epochs = math.ceil(steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch if steps is None else min(steps, epochs * steps_per_epoch)
    classifier = _classifier_label(model) is not None
    meta = {
        "model": str(getattr(model, "SPEC", {}).get("name", getattr(model, "__name__", "?"))),
        "n_theta": int(model.N_THETA),
        "batch_size": bsz,
        "seed": seed,
        "shuffle": bool(shuffle),
        "kind": int(optimizer.kind),
        "dtype": str(dtype),
    }
    logs: dict[str, list] = {
        "history": [],
        "step_history": [],
        "val_history": [],
        "accuracy": [],
        "val_accuracy": [],
    }
    first_epoch = 0
    if resume and os.path.exists(os.fspath(checkpoint)):
        ck = load_checkpoint(checkpoint)
        for key in ("model", "n_theta", "batch_size", "seed", "shuffle", "kind", "dtype"):
            if ck["meta"].get(key) != meta[key]:
                raise UsageError(
                    f"checkpoint {os.fspath(checkpoint)!r} was written with {key}="
                    f"{ck['meta'].get(key)!r}, this run has {meta[key]!r}: cannot resume identically"
                )
        trainer.load_state_dict(ck)
        first_epoch = ck["epoch"]
        for key in logs:
            logs[key] = list(ck["logs"].get(key, []))

    bytes_per_step = bsz * dtype.itemsize * max(1, sum(int(np.prod(s)) for _, s, _ in model.INPUTS))
    chunk_steps = max(1, CHUNK_BYTES // bytes_per_step)
    bar = None
    if progress and root:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_steps, initial=trainer.step_count, unit="step", desc=meta["model"], leave=False
        )

    def result_so_far(params_now: dict[str, np.ndarray], elapsed: float) -> TrainResult:
        return TrainResult(
            params=params_now,
            history=np.asarray(logs["history"]),
            step_history=np.asarray(logs["step_history"]) if history_per_step else None,
            val_history=np.asarray(logs["val_history"]) if val_leading is not None else None,
            accuracy=np.asarray(logs["accuracy"]) if (classifier and val_leading is not None) else None,
            val_accuracy=np.asarray(logs["val_accuracy"])
            if (classifier and val_leading is not None)
            else None,
            train_time=elapsed,
            steps=trainer.step_count,
            epochs=len(logs["history"]),
        )

    if _dist is not None:  # the one set-up collective: any rank's error, or different data, stops all
        _dist.setup_done(trainer, arrays)
    t_start = time.perf_counter()
    try:
        for epoch in range(first_epoch, epochs):
            n_this = min(steps_per_epoch, total_steps - trainer.step_count)
            if n_this <= 0:
                break
            perm = trainer.rng.permutation(n_train) if (has_data and shuffle) else None
            objectives: list[np.ndarray] = []
            for s0 in range(0, n_this, chunk_steps):
                n = min(chunk_steps, n_this - s0)
                batches = {}
                for name, arr in arrays.items():
                    rows = (
                        arr[s0 * bsz : (s0 + n) * bsz]
                        if perm is None
                        else arr[perm[s0 * bsz : (s0 + n) * bsz]]
                    )
                    batches[name] = rows.reshape(n, bsz, *arr.shape[1:])
                try:
                    objectives.append(trainer._run(batches, n, bsz))
                except TrainingDiverged as exc:
                    logs["step_history"].extend(np.concatenate([*objectives, exc.objectives]).tolist())
                    res = result_so_far(exc.params, time.perf_counter() - t_start)
                    raise TrainingDiverged(
                        f"training diverged at step {exc.step} (epoch {epoch + 1}): "
                        f"non-finite loss or gradient; last good parameters kept",
                        step=exc.step,
                        epoch=epoch + 1,
                        params=exc.params,
                        result=res,
                    ) from None
                if bar is not None:
                    bar.update(n)
            epoch_obj = np.concatenate(objectives)
            logs["step_history"].extend(epoch_obj.tolist())
            logs["history"].append(float(np.mean(epoch_obj)))
            info = EpochInfo(
                epoch=epoch + 1, epochs=epochs, loss=logs["history"][-1], steps=trainer.step_count
            )
            if val_leading is not None:
                eval_rng = np.random.default_rng([abs(int(seed)), 7919, epoch])
                info.val_loss, info.val_accuracy = evaluate(
                    trainer, val_arrays, val_leading[0], eval_rng, classifier
                )
                logs["val_history"].append(info.val_loss)
                if classifier and has_data:
                    _, info.accuracy = evaluate(trainer, arrays, n_train, eval_rng, True)
                    logs["accuracy"].append(np.nan if info.accuracy is None else info.accuracy)
                    logs["val_accuracy"].append(np.nan if info.val_accuracy is None else info.val_accuracy)
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{info.loss:.4g}")
            if checkpoint is not None:
                _on_root(_dist, "checkpoint", save_checkpoint, checkpoint, trainer, epoch + 1, logs, meta)
            if callback is not None:
                _on_root(_dist, "callback", callback, info)
    finally:
        if bar is not None:
            bar.close()
    return result_so_far(trainer.params_copy(), time.perf_counter() - t_start)


__all__ = [
    "Trainer",
    "TrainResult",
    "EpochInfo",
    "train",
    "check_arrays",
    "save_checkpoint",
    "load_checkpoint",
]
