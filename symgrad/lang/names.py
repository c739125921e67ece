"""One allocator for every name the compiler makes, so none can equal a spec name or another made name.

Generated code uses three kinds of names:

- spec names (arrays, constants) as kernel locals, verbatim, so the kernels read like the spec;
- names the compiler makes *readable* (hidden reductions `s_h`, `lse_z`, the loss `L`, adjoints `w_bar`): these
  come from `NameAllocator.take`, which is seeded with every identifier the spec text contains, and reserves each
  name the moment it hands it out (two nested hoists can never both get `s_L`);
- names the compiler makes *private* (`_b`, `_B`, `_t0`, `_acc`, `_theta`, ...): they start with `_`, which no spec
  name may (frontend/spec.py and frontend/exprs.py refuse it), so they are out of reach by construction.

`RESERVED` is what a spec name must never be, because generated kernels read it as a global (modules, builtins)
or Python forbids it; `tests/test_names.py` checks every generated module reads no other global.
"""

from __future__ import annotations

import ast
import keyword
from collections.abc import Iterable

# Globals the generated kernels read (CPU and CUDA templates, printers, helpers).
KERNEL_GLOBALS = frozenset(
    {
        "math",
        "np",
        "numba",
        "njit",
        "cuda",
        "config",
        "float32",
        "float64",
        "prange",
        "range",
        "max",
        "min",
        "abs",
        "float",
        "int",
        "len",
        "bool",
        "tuple",
        "id",
        "print",
        "ValueError",
        "RuntimeError",
        "sigmoid",
        "relu",
        "step",
        "softplus",
        "log_sigmoid",
        "heaviside",
        "sign",
    }
)
RESERVED = frozenset(keyword.kwlist) | KERNEL_GLOBALS


class NameAllocator:
    """Hands out fresh identifiers: `take("s_h")` gives `s_h`, or `s_h2`, `s_h3`, ... if that is taken."""

    def __init__(self, taken: Iterable[str] = ()):
        self.taken: set[str] = set(RESERVED) | set(taken)

    def reserve(self, *names: str) -> None:
        self.taken.update(names)

    def take(self, stem: str) -> str:
        name, n = stem, 1
        while name in self.taken:
            n += 1
            name = f"{stem}{n}"
        self.taken.add(name)
        return name


def identifiers(text: str) -> set[str]:
    """Every identifier an expression's source text mentions (a failed parse mentions none: reported later)."""
    try:
        tree = ast.parse(str(text).strip() or "0", mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out
