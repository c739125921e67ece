"""CUDA runtime glue: find a GPU (or say clearly why not), build/import `<name>_cuda.py`, run epochs on the device.

The generated CUDA module keeps the CPU module's private contract (docs/internals.md: `_train_epoch`, `_loss_grad`,
...), so the trainer can step with it unchanged; `CudaSession` goes further and keeps theta, the optimizer state and
the data resident on the GPU between epochs.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import numpy as np

from symgrad.errors import SymgradError

_CHECKED: list[bool] = []


class CudaUnavailable(SymgradError, RuntimeError):
    """CUDA was asked for but there is no usable GPU or driver."""

    exit_code = 2


def cuda_reason() -> str | None:
    """None when a GPU is usable (or Numba's simulator is on), else Numba's reason in one line."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - numba is a dependency
        return f"numba.cuda cannot be imported ({exc})"
    try:
        if cuda.is_available():
            cuda.get_current_device()
            return None
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    try:
        from numba.cuda.cudadrv.driver import driver

        driver.get_device_count()  # raises the driver's own error when the library or the device is missing
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return "no CUDA-capable GPU detected by numba.cuda"


def require_cuda() -> None:
    """Raise CudaUnavailable ("CUDA requested but no GPU/driver found: <reason>") unless a GPU can be used."""
    if _CHECKED:
        return
    reason = cuda_reason()
    if reason is not None:
        raise CudaUnavailable(f"CUDA requested but no GPU/driver found: {reason}")
    _CHECKED.append(True)


def build_cuda_source(spec_path: str | Path, display_path: str | None = None) -> str:
    from symgrad.cuda_codegen import render_cuda_module

    return render_cuda_module(str(spec_path), display_path)


def load_cuda(spec_path: str | Path, check_device: bool = True) -> ModuleType:
    """Build (if needed) and import `<name>_cuda.py`, as `symgrad.load` does for the CPU module.

    Order: `generated/<name>_cuda.py` beside the spec's folder when its header matches this spec and version, else
    the per-user cache (atomic write). `check_device=False` loads without a GPU (the kernels compile on first use).
    """
    from symgrad import loader

    if check_device:
        require_cuda()
    return loader.load_generated(spec_path, "_cuda", build_cuda_source)


def as_cuda(model: ModuleType) -> ModuleType:
    """The CUDA twin of a loaded CPU module (same spec), for `train(..., device="cuda")`."""
    if getattr(model, "TARGET", "cpu") == "cuda":
        return model
    spec = getattr(model, "__symgrad_spec__", None) or _spec_from_header(model)
    return load_cuda(spec)


def _spec_from_header(model: ModuleType) -> str:
    path = Path(getattr(model, "__spec_path__", None) or model.__file__)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    spec = first.split(" from ", 1)[1].rsplit(" (sha256", 1)[0]
    cand = Path(spec)
    if not cand.is_absolute() and not cand.exists():
        cand = path.resolve().parent.parent / spec
    if not cand.exists():
        raise CudaUnavailable(f"cannot find the spec {spec!r} of module {model.__name__} to build its CUDA twin")
    return str(cand)


def run_epoch_cuda(module_cuda: ModuleType, theta: np.ndarray, state: np.ndarray, kind: int, hyper: np.ndarray,
                   t0: int, lrs: np.ndarray, consts_steps: np.ndarray, clip_norm: float, gscale: float,
                   inputs: tuple) -> tuple[np.ndarray, int]:
    """`_train_epoch` of docs/internals.md on the GPU: theta and state are updated in place (copied back once)."""
    require_cuda()
    grad = np.zeros_like(theta)
    return module_cuda._train_epoch(theta, grad, state, kind, hyper, t0, lrs, consts_steps, clip_norm, gscale,
                                    *inputs)


class CudaSession:
    """Theta, optimizer state and (optionally) the whole data set resident on the GPU across epochs.

    `run(lrs, consts_steps, inputs_d | index)` runs n steps; `pull()` copies theta and state back to the host.
    """

    def __init__(self, module_cuda: ModuleType, theta: np.ndarray, state: np.ndarray, kind: int,
                 hyper: np.ndarray, clip_norm: float = 0.0):
        from numba import cuda

        require_cuda()
        self.m = module_cuda
        self.cuda = cuda
        self.theta_d = cuda.to_device(np.ascontiguousarray(theta))
        self.grad_d = cuda.device_array_like(self.theta_d)
        self.state_d = cuda.to_device(np.ascontiguousarray(state))
        self.kind = int(kind)
        self.hyper_d = cuda.to_device(np.asarray(hyper, np.float64))
        self.clip_norm = float(clip_norm)
        self.t = 0

    def to_device(self, *arrays: np.ndarray) -> tuple:
        return tuple(self.cuda.to_device(np.ascontiguousarray(a, dtype=self.theta_d.dtype)) for a in arrays)

    def run_async(self, lrs: np.ndarray, consts_steps: np.ndarray, gscale: float, inputs_d: tuple):
        """Launch len(lrs) steps; returns the device (losses, status) without waiting for the GPU."""
        n = int(len(lrs))
        lrs_d = self.cuda.to_device(np.asarray(lrs, np.float64))
        consts_d = self.cuda.to_device(np.asarray(consts_steps, np.float64).reshape(n, -1))
        out = self.m._train_steps_dev(self.theta_d, self.grad_d, self.state_d, self.kind, self.hyper_d, self.t,
                                      lrs_d, consts_d, self.clip_norm, float(gscale), n, *inputs_d)
        self.t += n
        return out

    def run(self, lrs: np.ndarray, consts_steps: np.ndarray, gscale: float, inputs_d: tuple):
        """Run the steps and return (losses float64 array, n_done), as `_train_epoch` does."""
        t_before = self.t
        losses_d, status_d = self.run_async(lrs, consts_steps, gscale, inputs_d)
        n_done = int(status_d.copy_to_host()[0])
        self.t = t_before + n_done
        losses = losses_d.copy_to_host()[:len(lrs)].copy()
        losses[n_done + 1:] = 0.0
        return losses, n_done

    def pull(self) -> tuple[np.ndarray, np.ndarray]:
        return self.theta_d.copy_to_host(), self.state_d.copy_to_host()
