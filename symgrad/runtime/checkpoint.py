"""Checkpoints: written atomically, read defensively, and only resumed by the run that wrote them.

A checkpoint is an `.npz` of theta, the optimizer state, the step and epoch, the RNG state, the per-epoch logs and
`meta` (JSON): the spec's digest (`spec_digest`: a hash of what the generated module says about the model, so a
different spec with the same name and parameter count is refused) and the run settings a bit-identical resume needs.
`load_checkpoint` never trusts the file: a damaged or tampered one is one `UsageError` line naming the file and what
is wrong, never a traceback; `validate` checks it against the run about to resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from symgrad.backends.stepmath import ADAM_KIND, MOMENTUM_KIND, NESTEROV_KIND, SGD_KIND
from symgrad.errors import UsageError
from symgrad.runtime import npzfile

FORMAT = 2  # bumped when the layout changes; older checkpoints are refused with a clear line
REQUIRED = ("theta", "opt_state", "step", "epoch", "rng", "meta")
# optional members: the state before the last step (Trainer._before_last)
PREVIOUS = ("prev_theta", "prev_opt_state", "prev_step")


def spec_digest(model: ModuleType) -> str:
    """SHA-256 (16 hex digits) of the model as the module describes it: spec dict (sans description), layout."""
    spec = dict(getattr(model, "SPEC", {}) or {})
    spec.pop("description", None)
    described = {
        "spec": spec,
        "params": [[n, list(s)] for n, s in getattr(model, "PARAMS", ())],
        "inputs": [[n, list(s), smp] for n, s, smp in getattr(model, "INPUTS", ())],
        "constants": [[n, float(v)] for n, v in getattr(model, "CONSTANTS", ())],
        "sign": float(getattr(model, "SIGN", 1.0)),
        "reduction": str(getattr(model, "REDUCTION", "mean")),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, trainer: Any, epoch: int, logs: dict[str, list], meta: dict) -> None:
    """Write atomically (artifacts.write_atomic: a fresh temp file in the same folder, fsync, then `os.replace`;
    never half a file, never through a link, the umask's permissions like every other output)."""
    import io

    from symgrad.artifacts import write_atomic

    path = os.fspath(path)
    arrays = {
        "theta": trainer.theta,
        "opt_state": trainer.opt_state,
        "step": np.int64(trainer.step_count),
        "epoch": np.int64(epoch),
        "rng": np.array(json.dumps(trainer.rng.bit_generator.state)),
        "meta": np.array(json.dumps({**meta, "format": FORMAT}, sort_keys=True)),
    }
    prev = getattr(trainer, "_before_last", None)
    if prev is not None:  # the state before the last step: a divergence right after resuming rolls back to it
        arrays["prev_theta"], arrays["prev_opt_state"], arrays["prev_step"] = prev[0], prev[1], np.int64(prev[2])
    for key, values in logs.items():
        arrays[f"log_{key}"] = np.asarray(values, dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        write_atomic(Path(path), buf.getvalue())
    except OSError as exc:  # a full disk or a path turned into a folder mid-run: one line, not a traceback
        raise UsageError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def _int_scalar(raw: Mapping[str, np.ndarray], key: str, where: str) -> int:
    value = raw[key]
    if value.shape != () or value.dtype.kind not in "iu":
        raise UsageError(f"{where}: {key!r} must be one integer, found {value.dtype} of shape {value.shape}")
    out = int(value)
    if out < 0:
        raise UsageError(f"{where}: {key} {out} is negative")
    return out


def _json(raw: Mapping[str, np.ndarray], key: str, where: str) -> Any:
    value = raw[key]
    if value.shape != () or value.dtype.kind != "U":
        raise UsageError(f"{where}: {key!r} must be a JSON string, found {value.dtype} of shape {value.shape}")
    try:
        return json.loads(str(value))
    except ValueError as exc:
        raise UsageError(f"{where}: {key!r} is not valid JSON ({exc})") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint into plain values and arrays; any damage is one `UsageError` line naming the file."""
    path = os.fspath(path)
    where = f"checkpoint {path}"

    def error(message: str) -> UsageError:
        return UsageError(f"checkpoint {message}")

    members = npzfile.inspect(path, error)
    missing = [k for k in REQUIRED if k not in members]
    if missing:
        raise UsageError(f"{where}: not a symgrad checkpoint, missing {', '.join(map(repr, missing))}")
    wanted = [m for k, m in members.items() if k in REQUIRED or k in PREVIOUS or k.startswith("log_")]
    raw = npzfile.read(path, wanted, error)
    meta = _json(raw, "meta", where)
    if not isinstance(meta, dict):
        raise UsageError(f"{where}: 'meta' must be a JSON object")
    if meta.get("format") != FORMAT:
        raise UsageError(
            f"{where}: written by another symgrad version (format {meta.get('format', 1)!r}, this one reads "
            f"{FORMAT}); start afresh without --resume"
        )
    rng = _json(raw, "rng", where)
    if not isinstance(rng, dict) or "bit_generator" not in rng or "state" not in rng:
        raise UsageError(f"{where}: 'rng' is not a NumPy generator state")
    theta, opt_state = raw["theta"], raw["opt_state"]
    if theta.ndim != 1 or theta.dtype not in (np.float32, np.float64):
        raise UsageError(f"{where}: 'theta' must be a 1-d float array, found {theta.dtype} of shape {theta.shape}")
    if opt_state.dtype != theta.dtype:  # symgrad writes both in the training dtype
        raise UsageError(f"{where}: 'theta' is {theta.dtype} but 'opt_state' is {opt_state.dtype} (an edited file?)")
    if opt_state.shape != (2, theta.shape[0]):
        raise UsageError(
            f"{where}: 'opt_state' must be {theta.dtype} of shape (2, {theta.shape[0]}), found "
            f"{opt_state.dtype} of shape {opt_state.shape}"
        )
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(opt_state))):
        raise UsageError(f"{where}: the parameters or optimizer state contain NaN or infinite values")
    logs = {}
    for key, value in raw.items():
        if key.startswith("log_"):
            if value.ndim != 1 or value.dtype.kind != "f":
                raise UsageError(f"{where}: {key!r} must be a 1-d float array")
            if not np.all(np.isfinite(value)) and key != "log_val_history":
                raise UsageError(f"{where}: {key!r} holds NaN or infinite values")
            logs[key[4:]] = value.tolist()
    prev = None
    if any(k in raw for k in PREVIOUS):
        if not all(k in raw for k in PREVIOUS):
            raise UsageError(f"{where}: holds only part of the state before the last step ({', '.join(PREVIOUS)})")
        p_theta, p_opt = raw["prev_theta"], raw["prev_opt_state"]
        if p_theta.shape != theta.shape or p_theta.dtype != theta.dtype or p_opt.shape != opt_state.shape:
            raise UsageError(f"{where}: 'prev_theta' / 'prev_opt_state' do not match 'theta' / 'opt_state'")
        if not (np.all(np.isfinite(p_theta)) and np.all(np.isfinite(p_opt))):
            raise UsageError(f"{where}: the state before the last step contains NaN or infinite values")
        prev = (p_theta, p_opt, _int_scalar(raw, "prev_step", where))
    return {
        "prev": prev,
        "theta": theta,
        "opt_state": opt_state,
        "step": _int_scalar(raw, "step", where),
        "epoch": _int_scalar(raw, "epoch", where),
        "rng": rng,
        "meta": meta,
        "logs": logs,
    }


# meta keys newer than the checkpoint format: a checkpoint without one still resumes
ADDED_KEYS = frozenset({"optimizer", "clip_norm", "schedule", "constants"})
KIND_NAMES = {SGD_KIND: "sgd", MOMENTUM_KIND: "momentum", NESTEROV_KIND: "nesterov", ADAM_KIND: "adam"}


def validate(
    ck: Mapping[str, Any],
    path: str | os.PathLike,
    meta: Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    total_steps: int,
) -> None:
    """Refuse a checkpoint this run cannot continue identically: another spec or settings, an impossible position."""
    where = f"checkpoint {os.fspath(path)}"
    for key, mine in meta.items():
        if key in ADDED_KEYS and key not in ck["meta"]:
            continue  # written before symgrad recorded it: nothing to compare
        theirs = ck["meta"].get(key)
        if key == "schedule" and isinstance(theirs, list) and isinstance(mine, list):
            mine_at = {row[0]: row for row in mine}  # the steps both runs have
            theirs = [row for row in theirs if row[0] in mine_at]
            mine = [mine_at[row[0]] for row in theirs]
        if theirs != mine:
            shown = {"schedule": "a different lr or constant schedule", "constants": "different constants"}
            if key in shown:
                raise UsageError(f"{where} was written with {shown[key]}: cannot resume identically")
            if key == "kind":
                theirs, mine = KIND_NAMES.get(theirs, theirs), KIND_NAMES.get(mine, mine)
            raise UsageError(
                f"{where} was written with {key}={theirs!r}, this run has {mine!r}: cannot resume identically"
                + (" (a different spec, or a changed one)" if key == "spec" else "")
            )
    epoch, step = int(ck["epoch"]), int(ck["step"])
    if epoch > epochs:
        raise UsageError(f"{where} is at epoch {epoch}, past this run's {epochs} epochs")
    # written at an epoch's end: its step is that epoch's last, or the run's last when steps= ended it early
    high = epoch * steps_per_epoch
    if not (step == high or (step == total_steps and high - steps_per_epoch < step < high)) or step > total_steps:
        raise UsageError(
            f"{where} is at step {step} of epoch {epoch}, impossible with {steps_per_epoch} steps per epoch"
            + (f" and {total_steps} steps" if total_steps < epochs * steps_per_epoch else "")
        )
    if str(ck["theta"].dtype) != str(meta.get("dtype", ck["theta"].dtype)):
        raise UsageError(f"{where}: holds {ck['theta'].dtype} parameters, this run trains in {meta['dtype']}")
    n_logged = len(ck["logs"].get("history", []))
    if n_logged != epoch:
        raise UsageError(f"{where}: {n_logged} epochs logged but it claims epoch {epoch}")
    if math.prod(ck["theta"].shape) != int(meta.get("n_theta", ck["theta"].shape[0])):
        raise UsageError(f"{where}: holds {ck['theta'].shape[0]} parameters, the model has {meta['n_theta']}")
