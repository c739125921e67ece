"""`train`: the epoch loop over the step engine `runtime.trainer.Trainer` (one compiled call per chunk of steps).

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
  with a missing checkpoint file starts fresh, so the same command can be re-run after an interruption. A
  checkpoint carries the spec's digest and the run's settings and is validated before resuming
  (`symgrad.runtime.checkpoint`).
- **Divergence** (a non-finite loss or gradient) raises `TrainingDiverged` naming the step; its parameters are the
  last ones whose loss was finite (those of the step before).
- `comm=` hands the same loop to `symgrad.runtime.distributed` hooks (one object, no re-entry): ranks agree on the
  configuration before the first step, and an error on one rank ends all of them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from symgrad import backends
from symgrad.errors import TrainingDiverged, TrainingInterrupted, UsageError
from symgrad.lang import sampling
from symgrad.runtime.checkpoint import load_checkpoint, save_checkpoint, spec_digest, validate
from symgrad.runtime.optim import Optimizer, as_optimizer
from symgrad.runtime.paths import output_path
from symgrad.runtime.support import check_arrays, check_seed
from symgrad.runtime.trainer import Trainer, _params_dtype, check_flag, check_model, diverged_message

CHUNK_BYTES = 64 * 2**20  # gathered mini-batches per compiled call: bounds memory on large data sets
DEFAULT_BATCH_SIZE = 64


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


# ---------------------------------------------------------------------------------------------- evaluation


def objective_word(model: ModuleType) -> str:
    """`objective` for a maximised spec (an ELBO or log-likelihood: it goes up), `loss` otherwise."""
    return "objective" if float(getattr(model, "SIGN", 1.0)) < 0 else "loss"


def label_kind(model: ModuleType) -> str | None:
    """`onehot` for a data input `y` of shape [K >= 2], `binary` for `y` of shape [] with a bce/sigmoid loss, else
    None (not a classifier: no accuracy)."""
    spec = getattr(model, "SPEC", None) or {}
    loss_text = str(spec.get("loss", "")) if isinstance(spec, dict) else ""
    for name, shape, sample in model.INPUTS:
        if name != "y" or sample is not None:
            continue
        if len(shape) == 1 and shape[0] >= 2:
            return "onehot"
        if not shape and ("bce" in loss_text or "sigmoid" in loss_text):
            return "binary"
    return None


def count_correct(model: ModuleType, outputs: dict, y: np.ndarray, n: int) -> int | None:
    """Correct predictions among n samples: argmax against a one-hot `y`, or a binary output thresholded (a logit at
    0, a probability at 0.5) against `y`. None when no output has the label's shape."""
    kind = label_kind(model)
    label = next((tuple(shape) for name, shape, _ in model.INPUTS if name == "y"), None)
    if kind is None or label is None:
        return None
    for name in getattr(model, "OUTPUTS", outputs):
        pred = np.asarray(outputs[name])
        if pred.shape != (n, *label):
            continue
        y = np.asarray(y)
        if kind == "onehot":
            return int(np.sum(np.argmax(pred, axis=1) == np.argmax(y, axis=1)))
        return int(np.sum((pred > (0.0 if _is_logit(model, name) else 0.5)) == (y > 0.5)))
    return None


def _is_logit(model: ModuleType, name: str) -> bool:
    """A binary output is a logit when the loss passes it to a *_with_logits function or a sigmoid."""
    import re

    spec = getattr(model, "SPEC", None) or {}
    text = str(spec.get("loss", "")) if isinstance(spec, dict) else ""
    return re.search(rf"(with_logits|sigmoid)\(\s*{re.escape(name)}\b", text) is not None


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
        for name, shape, sample in model.INPUTS:
            if name in data:
                args.append(data[name][sl])
            else:
                args.append(sampling.draw(rng, sample, (b, *shape), trainer.dtype))
        total += float(model._loss(trainer.theta, consts, *args))
    objective = total if model.REDUCTION == "sum" else total / n
    acc = None
    if accuracy and label_kind(model) is not None:
        correct = 0
        constants = trainer.constants_at(trainer.step_count)
        for sl in _chunks(n):
            out = model.forward(trainer.params, {k: v[sl] for k, v in data.items()}, constants)
            c = count_correct(model, out, data["y"][sl], sl.stop - sl.start)
            if c is None:
                return objective, None
            correct += c
        acc = correct / n
    return objective, acc


# ---------------------------------------------------------------------------------------------- checkpoints


# ---------------------------------------------------------------------------------------------- train


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class _Run:
    """Everything `train` was asked, validated once; the loop and the distributed hooks read it."""

    optimizer: Optimizer
    batch_size: int
    epochs: int | None
    steps: int | None
    params: Mapping[str, Any] | None
    seed: int
    shuffle: bool
    clip_norm: float | None
    schedule: Any
    constants: Mapping[str, float] | None
    progress: bool
    checkpoint: str | None
    resume: bool
    validation: Mapping[str, Any] | None
    history_per_step: bool
    callback: Callable[[EpochInfo], None] | None
    device: str


class _Local:
    """The loop's hooks for one process (`symgrad.runtime.distributed.Dist` is the MPI twin)."""

    is_root = True

    def make_trainer(self, model: ModuleType, optimizer: Optimizer, **kwargs: Any) -> Trainer:
        return Trainer(model, optimizer, **kwargs)

    def setup_done(self, trainer: Trainer, arrays: Mapping[str, np.ndarray], config: dict[str, Any]) -> None:
        """Nothing to agree on alone."""

    def on_root(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)


def train(
    model: ModuleType,
    data: Mapping[str, Any] | None = None,
    *,
    optimizer: Optimizer | str,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
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
) -> TrainResult:
    """Train `model` on `data` with mini-batches; see the module docstring for every convention.

    `optimizer` is an `SGD`/`Adam` or a name as the CLI takes it (`"sgd"`, `"momentum"`, `"nesterov"`, `"adam"`,
    default learning rates). `batch_size` (64) is ignored for a spec without data inputs.
    `comm` (an mpi4py communicator, e.g. `MPI.COMM_WORLD`) splits every global batch across its ranks
    (`symgrad.runtime.distributed`, docs/distributed.md): the same result as one process up to summation order;
    rank 0 alone shows progress, writes checkpoints and calls `callback`.
    """

    def run(hooks: Any) -> TrainResult:
        check_model(model)
        backends.get(device, "device")  # one UsageError naming the registered backends
        positive_batch = _positive_int("batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        assert positive_batch is not None  # None only for None, and the default replaced it
        cfg = _Run(
            optimizer=as_optimizer(optimizer),
            batch_size=positive_batch,
            epochs=_positive_int("epochs", epochs),
            steps=_positive_int("steps", steps),
            params=params,
            seed=check_seed(seed),
            shuffle=check_flag("shuffle", shuffle),
            clip_norm=clip_norm,
            schedule=schedule,
            constants=constants,
            progress=check_flag("progress", progress),
            checkpoint=None if checkpoint is None else output_path(checkpoint, "checkpoint"),
            resume=check_flag("resume", resume),
            validation=validation,
            history_per_step=check_flag("history_per_step", history_per_step),
            callback=callback,
            device=device,
        )
        if callback is not None and not callable(callback):
            raise UsageError(f"callback must be callable (it gets an EpochInfo), got {type(callback).__name__}")
        if cfg.epochs is None and cfg.steps is None:
            raise UsageError("train: give epochs= or steps=")
        if cfg.resume and cfg.checkpoint is None:
            raise UsageError("train: resume=True needs checkpoint=PATH")
        m = model
        if device != "cpu":  # another backend's twin honours the same private contract: the runner is unchanged
            from symgrad.runtime.loader import as_target

            m = as_target(model, device)
        return _fit(m, data, cfg, hooks)

    if comm is None:
        return run(_Local())
    if not all(callable(getattr(comm, a, None)) for a in ("Get_rank", "Get_size", "allreduce", "Barrier")):
        raise UsageError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, got {type(comm).__name__}")
    from symgrad.runtime.distributed import Dist

    dist = Dist(comm)
    return dist.run(lambda: run(dist))


def _schedule_digest(trainer: Trainer, total_steps: int) -> str:
    """The lr and constant schedules' values at up to 1000 steps spread over the run, hashed: what ranks compare."""
    import hashlib

    at = np.unique(np.linspace(0, max(0, total_steps - 1), min(total_steps, 1000)).astype(np.int64))
    h = hashlib.sha256()
    for t in at.tolist():
        h.update(np.float64(trainer.lrs(t, 1)[0]).tobytes())
        h.update(trainer.consts_steps(t, 1).tobytes())
    return h.hexdigest()[:16]


def _schedule_probes(trainer: Trainer, total_steps: int) -> list[list[float]]:
    """[step, lr, *constants] at steps 0..15 and then every ~1.5x, up to the run's end: what a checkpoint records of
    the schedules. A resume compares the steps both runs have, so training on for more epochs under the same
    schedule resumes, while a changed rate, ramp or cosine length does not."""
    at = set(range(min(16, total_steps)))
    t = 16.0
    while t < total_steps:
        at.add(int(t))
        t *= 1.5
    return [[s, float(trainer.lrs(s, 1)[0]), *trainer.consts_steps(s, 1)[0].tolist()] for s in sorted(at)]


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__
    return False


def _fit(model: ModuleType, data: Mapping[str, Any] | None, cfg: _Run, hooks: Any) -> TrainResult:
    """The epoch loop, for one process or (through `hooks`) one rank of many."""
    root = hooks.is_root
    start_params = cfg.params if cfg.params is not None else model.init_params(cfg.seed)
    dtype = _params_dtype(start_params)
    arrays, leading = check_arrays(model, data, dtype, what="data")
    has_data = leading is not None
    n_train = leading[0] if leading is not None else 1  # leading is not None: has_data
    if has_data:
        if cfg.batch_size > n_train:
            raise UsageError(f"batch_size {cfg.batch_size} is larger than the {n_train} training samples")
        steps_per_epoch = n_train // cfg.batch_size
        bsz = cfg.batch_size
    else:  # full batch: no inputs (B = 1) or only sampled ones (B = batch_size draws per step)
        steps_per_epoch = 1
        bsz = cfg.batch_size if any(s is not None for _, _, s in model.INPUTS) else 1
        n_train = bsz
    val_arrays, val_leading = (
        check_arrays(model, cfg.validation, dtype, what="validation") if cfg.validation is not None else ({}, None)
    )

    trainer = hooks.make_trainer(
        model,
        cfg.optimizer,
        params=start_params,
        seed=cfg.seed,
        constants=cfg.constants,
        clip_norm=cfg.clip_norm,
        schedule=cfg.schedule,
        n_samples=n_train,
    )
    if cfg.epochs is not None:
        epochs = cfg.epochs
    else:
        assert cfg.steps is not None  # train() refuses neither epochs= nor steps=
        epochs = math.ceil(cfg.steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch if cfg.steps is None else min(cfg.steps, epochs * steps_per_epoch)
    classifier = label_kind(model) is not None
    name = str(getattr(model, "SPEC", {}).get("name", getattr(model, "__name__", "?")))
    meta = {
        "model": name,
        "spec": spec_digest(model),
        "n_theta": int(model.N_THETA),
        "n_train": int(n_train),
        "batch_size": bsz,
        "seed": cfg.seed,
        "shuffle": cfg.shuffle,
        "optimizer": repr(cfg.optimizer),  # kind, lr and every hyperparameter: a resume must not change them
        "kind": int(cfg.optimizer.kind),
        "dtype": str(dtype),
        "clip_norm": None if cfg.clip_norm is None else float(cfg.clip_norm),
        "schedule": _schedule_probes(trainer, total_steps),
        "constants": trainer.consts_steps(0, 1).tolist(),
    }
    logs: dict[str, list] = {
        "history": [],
        "step_history": [],
        "val_history": [],
        "accuracy": [],
        "val_accuracy": [],
    }
    first_epoch = 0
    if cfg.resume and cfg.checkpoint is not None and os.path.exists(cfg.checkpoint):  # train(): resume needs one
        ck = load_checkpoint(cfg.checkpoint)
        validate(ck, cfg.checkpoint, meta, epochs=epochs, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        try:
            trainer.load_state_dict(ck)
        except UsageError as exc:
            raise UsageError(f"checkpoint {cfg.checkpoint}: cannot restore its state ({exc})") from None
        first_epoch = ck["epoch"]
        for key in logs:
            logs[key] = list(ck["logs"].get(key, []))

    bytes_per_step = bsz * dtype.itemsize * max(1, sum(int(np.prod(s)) for _, s, _ in model.INPUTS))
    chunk_steps = max(1, CHUNK_BYTES // bytes_per_step)

    def result_so_far(params_now: dict[str, np.ndarray], elapsed: float) -> TrainResult:
        with_val = classifier and val_leading is not None
        return TrainResult(
            params=params_now,
            history=np.asarray(logs["history"]),
            step_history=np.asarray(logs["step_history"]) if cfg.history_per_step else None,
            val_history=np.asarray(logs["val_history"]) if val_leading is not None else None,
            accuracy=np.asarray(logs["accuracy"]) if with_val else None,
            val_accuracy=np.asarray(logs["val_accuracy"]) if with_val else None,
            train_time=elapsed,
            steps=trainer.step_count,
            epochs=len(logs["history"]),
        )

    late = ("schedule", "constants")  # last: the first difference is reported, and a plain setting says more
    config = {  # what every rank must agree on before the first step (symgrad.runtime.distributed)
        **{k: v for k, v in meta.items() if k not in late},
        "data": {k: (tuple(v.shape), str(v.dtype)) for k, v in sorted(arrays.items())},
        "validation": {k: (tuple(v.shape), str(v.dtype)) for k, v in sorted(val_arrays.items())},
        "epochs": epochs,
        "steps": total_steps,
        "hyper": cfg.optimizer.hyper.tolist(),
        "lr": float(cfg.optimizer.lr),
        "device": cfg.device,
        "checkpoint": cfg.checkpoint is not None,
        "resume": cfg.resume,
        # up to 1000 steps of the schedules, hashed (the checkpoint's ~40 probes are for resuming, not for this)
        "schedule": _schedule_digest(trainer, total_steps),
        "constants": meta["constants"],
    }
    hooks.setup_done(trainer, arrays, config)  # MPI: the one set-up collective; alone: nothing
    bar = None
    if cfg.progress and root:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=trainer.step_count, unit="step", desc=name, leave=False)
    t_start = time.perf_counter()
    try:
        for epoch in range(first_epoch, epochs):
            n_this = min(steps_per_epoch, total_steps - trainer.step_count)
            if n_this <= 0:
                break
            perm = trainer.rng.permutation(n_train) if (has_data and cfg.shuffle) else None
            objectives: list[np.ndarray] = []
            for s0 in range(0, n_this, chunk_steps):
                n = min(chunk_steps, n_this - s0)
                batches = {}
                for key, arr in arrays.items():
                    rows = arr[s0 * bsz : (s0 + n) * bsz] if perm is None else arr[perm[s0 * bsz : (s0 + n) * bsz]]
                    batches[key] = rows.reshape(n, bsz, *arr.shape[1:])
                try:
                    objectives.append(trainer._run(batches, n, bsz))
                except TrainingDiverged as exc:
                    logs["step_history"].extend(np.concatenate([*objectives, exc.objectives]).tolist())
                    assert exc.params is not None  # both trainers attach the last good parameters
                    res = result_so_far(exc.params, time.perf_counter() - t_start)
                    where = f" (epoch {epoch + 1}){getattr(exc, 'where', '')}"
                    raise TrainingDiverged(
                        diverged_message(exc.step, trainer.step_count, where),
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
            info = EpochInfo(epoch=epoch + 1, epochs=epochs, loss=logs["history"][-1], steps=trainer.step_count)
            if val_leading is not None:
                eval_rng = np.random.default_rng([cfg.seed, 7919, epoch])
                info.val_loss, info.val_accuracy = evaluate(trainer, val_arrays, val_leading[0], eval_rng, classifier)
                logs["val_history"].append(info.val_loss)
                if classifier and has_data:
                    _, info.accuracy = evaluate(trainer, arrays, n_train, eval_rng, True)
                    logs["accuracy"].append(np.nan if info.accuracy is None else info.accuracy)
                    logs["val_accuracy"].append(np.nan if info.val_accuracy is None else info.val_accuracy)
            if bar is not None:
                bar.set_postfix({"epoch": epoch + 1, objective_word(model): f"{info.loss:.4g}"})  # as the epoch line
            if cfg.checkpoint is not None:
                hooks.on_root("checkpoint", save_checkpoint, cfg.checkpoint, trainer, epoch + 1, logs, meta)
            if cfg.callback is not None:
                hooks.on_root("callback", cfg.callback, info)
    except (KeyboardInterrupt, SystemError) as exc:  # the compiled call in flight was abandoned (see _interruptible)
        # Ctrl-C inside a compiled call made on this thread (an evaluation's forward pass) surfaces as "SystemError:
        # ... returned a result with an exception set", a chain of them (one per nested call) caused by it
        if isinstance(exc, SystemError) and not _caused_by_interrupt(exc):
            raise
        params_now = trainer.params_copy()
        res = result_so_far(params_now, time.perf_counter() - t_start)
        epoch_now = -(-trainer.step_count // steps_per_epoch) if steps_per_epoch else 0
        stop = TrainingInterrupted(
            f"interrupted at step {trainer.step_count} (epoch {max(epoch_now, 1)})",
            step=trainer.step_count,
            epoch=max(epoch_now, 1),
            params=params_now,
            result=res,
        )
        stop.all_ranks = getattr(exc, "all_ranks", False)  # every rank stopped at this step (distributed.py)
        raise stop from None
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
