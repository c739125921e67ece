"""Stage 3: kernel IR -> a generated Python module, one package per backend behind the registry below.

A backend is a folder `backends/<name>/` whose `__init__` exposes four names (see `Backend`): `SUFFIX` (the generated
file is `<spec name><SUFFIX>.py`), `render(spec_path, display_path)` (the module text), `unsupported(program)` (why
it cannot build a program, or None) and `check_device()` (raise one clear error when its hardware is missing).
Shared pieces (the printer, the op writer, the render context, stamping) live in `backends/base.py`. The loader,
the CLI and the trainer ask this registry; nothing else names a backend. Backends are imported on first use, so
`import symgrad` never pays for a backend's dependencies.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from symgrad.errors import UsageError


@dataclass(frozen=True)
class Backend:
    """One registry row: the backend's name and its package (imported on first use)."""

    name: str
    package: str

    def module(self) -> ModuleType:
        return importlib.import_module(self.package)

    @property
    def suffix(self) -> str:
        return self.module().SUFFIX

    def render(self, spec_path: Any, display_path: str | None = None) -> str:
        return self.module().render(str(spec_path), display_path)

    def unsupported(self, program: Any) -> tuple[str, int] | None:
        return self.module().unsupported(program)

    def check_device(self) -> None:
        self.module().check_device()


REGISTRY: dict[str, Backend] = {
    "cpu": Backend("cpu", "symgrad.backends.cpu"),
    "cuda": Backend("cuda", "symgrad.backends.cuda"),
}


def names() -> tuple[str, ...]:
    """Every registered backend, in registry order (the CLI's `--target`/`--device` choices)."""
    return tuple(REGISTRY)


def get(name: str, what: str = "target") -> Backend:
    """The backend called `name`, or one UsageError listing the registered ones."""
    backend = REGISTRY.get(name) if isinstance(name, str) else None
    if backend is None:
        raise UsageError(f"{what} must be one of {', '.join(map(repr, REGISTRY))}, got {name!r}")
    return backend
