"""The CUDA backend: @cuda.jit kernels over the same kernel IR (`codegen`), device discovery (`device`), device
math helpers (`mathfns`). Tested under Numba's simulator (`NUMBA_ENABLE_CUDASIM=1`) where there is no GPU."""

from __future__ import annotations

from typing import Any

SUFFIX = "_cuda"  # generated/<name>_cuda.py


def render(spec_path: str, display_path: str | None = None) -> str:
    from symgrad.backends.cuda.codegen import render_cuda_module

    return render_cuda_module(spec_path, display_path)


def unsupported(program: Any) -> tuple[str, int] | None:
    from symgrad.backends.cuda.codegen import unsupported as _unsupported

    return _unsupported(program)


def check_device() -> None:
    from symgrad.backends.cuda.device import require_cuda

    require_cuda()
