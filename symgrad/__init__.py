"""symgrad: symbolic specs -> derived gradients -> generated Numba kernels -> training.

Public API (docs/api.md): `load`, `derive`, `train`, `Trainer`, `TrainResult`, `SGD`, `Adam`, and the schedules.
Imports are lazy so that `symgrad derive` does not pay for Numba start-up.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_LAZY = {
    "load": "symgrad.loader",
    "derive": "symgrad.display",
    "Derivation": "symgrad.display",
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


class _Package(types.ModuleType):
    """`symgrad.derive` is the public function, although the compiler has a submodule of that name: importing the
    submodule must not replace the function on the package (`from symgrad.derive import ...` still works)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "derive" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

def __dir__() -> list[str]:
    """The public API for `dir(symgrad)` and tab completion: the lazy names are not attributes until first use."""
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
