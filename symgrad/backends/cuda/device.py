"""CUDA runtime glue: find a GPU (or say clearly why not) and keep training state resident on it.

Loading `<name>_cuda.py` is the loader's job (`symgrad.load(spec, "cuda")`, `symgrad.runtime.loader.as_cuda`), from its
backend table; this module never imports the loader. The generated CUDA module keeps the CPU module's private
contract (docs/internals.md: `_train_epoch`, `_loss_grad`, ...), so the trainer can step with it unchanged;
`CudaSession` goes further and keeps theta, the optimizer state and the data resident on the GPU between epochs.
"""

from __future__ import annotations

import os
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


class CudaSession:
    """Theta, optimizer state and (optionally) the whole data set resident on the GPU across epochs.

    `run(lrs, consts_steps, inputs_d | index)` runs n steps; `pull()` copies theta and state back to the host.
    """

    def __init__(
        self,
        module_cuda: ModuleType,
        theta: np.ndarray,
        state: np.ndarray,
        kind: int,
        hyper: np.ndarray,
        clip_norm: float = 0.0,
    ):
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
        out = self.m._train_steps_dev(
            self.theta_d,
            self.grad_d,
            self.state_d,
            self.kind,
            self.hyper_d,
            self.t,
            lrs_d,
            consts_d,
            self.clip_norm,
            float(gscale),
            n,
            *inputs_d,
        )
        self.t += n
        return out

    def run(self, lrs: np.ndarray, consts_steps: np.ndarray, gscale: float, inputs_d: tuple):
        """Run the steps and return (losses float64 array, n_done), as `_train_epoch` does."""
        t_before = self.t
        losses_d, status_d = self.run_async(lrs, consts_steps, gscale, inputs_d)
        n_done = int(status_d.copy_to_host()[0])
        self.t = t_before + n_done
        losses = losses_d.copy_to_host()[: len(lrs)].copy()
        losses[n_done + 1 :] = 0.0
        return losses, n_done

    def pull(self) -> tuple[np.ndarray, np.ndarray]:
        return self.theta_d.copy_to_host(), self.state_d.copy_to_host()
