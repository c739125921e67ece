"""symgrad: symbolic specs -> derived gradients -> generated Numba kernels -> training.

Public API (../shared/API.md): `load`, `train`, `Trainer`, `TrainResult`, `SGD`, `Adam`, and the schedules.
Imports are lazy so that `symgrad derive` does not pay for Numba start-up.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load": "symgrad.loader",
    "build_module_source": "symgrad.loader",
    "train": "symgrad.training",
    "Trainer": "symgrad.training",
    "TrainResult": "symgrad.training",
    "SGD": "symgrad.optim",
    "Adam": "symgrad.optim",
    "schedules": "symgrad.schedules",
    "SymgradError": "symgrad.errors",
    "SpecError": "symgrad.errors",
    "DataError": "symgrad.errors",
    "TrainingDiverged": "symgrad.errors",
    "UsageError": "symgrad.errors",
    "load_dataset": "symgrad.data",
    "DataWarning": "symgrad.data",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if name == "schedules" else getattr(module, name)
    raise AttributeError(f"module 'symgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API for `dir(symgrad)` and tab completion: the lazy names are not attributes until first use."""
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
