"""The CPU backend: Numba @njit kernels, NumPy/BLAS products, float64/float32 math helpers (`mathfns`)."""

from __future__ import annotations

from typing import Any

SUFFIX = ""  # generated/<name>.py


def render(spec_path: str, display_path: str | None = None) -> str:
    from symgrad.backends.cpu.codegen import render as _render

    return _render(spec_path, display_path)


def unsupported(program: Any) -> tuple[str, int] | None:
    """The CPU backend builds every program the compiler accepts."""
    return None


def check_device() -> None:
    """The CPU is always there."""
