"""symgrad: symbolic specs -> derived gradients -> generated Numba kernels -> training.

Public API (docs/api.md): `load`, `derive`, `train`, `Trainer`, `TrainResult`, `SGD`, `Adam`, and the schedules.
Imports are lazy so that `symgrad derive` does not pay for Numba start-up.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load": "symgrad.runtime.loader",
    "derive": "symgrad.display.derivation",
    "Derivation": "symgrad.display.derivation",
    "build_module_source": "symgrad.runtime.loader",
    "train": "symgrad.runtime.training",
    "Trainer": "symgrad.runtime.training",
    "TrainResult": "symgrad.runtime.training",
    "SGD": "symgrad.runtime.optim",
    "Adam": "symgrad.runtime.optim",
    "schedules": "symgrad.runtime.schedules",
    "SymgradError": "symgrad.errors",
    "SpecError": "symgrad.errors",
    "DataError": "symgrad.errors",
    "TrainingDiverged": "symgrad.errors",
    "UsageError": "symgrad.errors",
    "load_dataset": "symgrad.runtime.data",
    "DataWarning": "symgrad.runtime.data",
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
