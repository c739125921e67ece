"""Load SciPy's BLAS for Numba without importing all of `scipy.linalg`.

Numba finds its BLAS (`np.dot` in a kernel) in `scipy.linalg.cython_blas`, and it imports that module whenever it
compiles or loads any kernel, even one without a product. Importing it the ordinary way runs `scipy.linalg`'s
`__init__` first, which imports most of SciPy's linear algebra and, through SciPy's array-API layer, NumPy's f2py:
0.12-0.2 s of a warm start of about 0.5 s, for one extension module that needs none of it (measured on the
benchmark's W1: 0.53 -> 0.40 s from process start to the first step).

`preload()` loads that one extension module from its file and registers it under its own name, so Numba's import
finds it in `sys.modules`. Whoever imports `scipy.linalg` later gets the whole package as usual, and the finder below
hangs the preloaded module on it as the attribute `cython_blas`, where an ordinary import would have put it.
Anything unexpected (no SciPy, another layout, `scipy.linalg` already imported) leaves the import to Numba's usual
path: the cost is only the time this saves.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_NAME = "scipy.linalg.cython_blas"


class _AttachOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `scipy.linalg` is imported, sets its `cython_blas` attribute once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "scipy.linalg":
            return None
        sys.meta_path.remove(self)  # one use; also keeps the lookup below from finding this finder again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            if _NAME in sys.modules and not hasattr(module, "cython_blas"):
                module.cython_blas = sys.modules[_NAME]

        loader.exec_module = exec_module
        return spec


def preload() -> bool:
    """Put SciPy's `cython_blas` in `sys.modules` without running `scipy.linalg`'s `__init__`; True if done now."""
    if _NAME in sys.modules or "scipy.linalg" in sys.modules:
        return False
    try:
        top = importlib.util.find_spec("scipy")
        if top is None or not top.submodule_search_locations:
            return False
        folder = os.path.join(list(top.submodule_search_locations)[0], "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.isfile(path):
                break
        else:
            return False
        import scipy  # noqa: F401  (the package itself is light; its submodules load lazily)

        spec = importlib.util.spec_from_file_location(_NAME, path)
        if spec is None or spec.loader is None:
            return False
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_NAME]
            raise
        sys.meta_path.insert(0, _AttachOnImport())
        return True
    except Exception:  # pragma: no cover - any surprise: Numba imports SciPy its usual way
        return False
