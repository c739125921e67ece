"""Where Numba's on-disk cache (`cache=True`, `.nbi`/`.nbc` files) goes: the per-user symgrad cache, never the
installed package's or a project's `__pycache__`.

Why a locator and not `NUMBA_CACHE_DIR`: setting Numba's global cache directory would move the cache of every
other library in the process too. A locator placed first in Numba's list answers only for symgrad's own modules and
the generated modules `symgrad.load` imports; everything else keeps Numba's defaults. When the user sets
`NUMBA_CACHE_DIR` themselves, symgrad's entries go there (as Numba's own locator would put them), still stamped
with `package_digest`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_GENERATED: set[str] = set()
_PACKAGE = str(Path(__file__).resolve().parents[2])  # the symgrad package: its own cached kernels
_INSTALLED: list[bool] = []
_DIGEST: list[str] = []


def tree_digest(root: Path) -> str:
    """SHA-256 over the relative paths and bytes of every `.py` file below `root`, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def package_digest() -> str:
    """SHA-256 of every symgrad source file, part of each cache entry's stamp.

    Numba checks a cached function only against its own file's stamp, yet a cached caller carries the compiled code
    of everything it calls: a generated `_train_epoch` holds `gated_step`, Adam and the products of the symgrad it
    was compiled with. Without this, editing or upgrading symgrad's runtime kept serving the old code (measured:
    a vectorised Adam did not reach a cached W3 epoch). With it, any change to symgrad recompiles its kernels once.
    """
    if not _DIGEST:
        _DIGEST.append(tree_digest(Path(_PACKAGE)))
    return _DIGEST[0]


def entries_root() -> Path:
    """Where symgrad's Numba entries are: `NUMBA_CACHE_DIR` when the user set it, else `cache_root()`."""
    from numba.core import config

    given = getattr(config, "CACHE_DIR", "")
    return Path(given) if given else cache_root()


def cache_root() -> Path:
    from symgrad.artifacts import cache_dir

    return cache_dir() / "numba"


def register(path: str | os.PathLike) -> None:
    """A generated module about to be executed: its kernels cache under the user cache."""
    _GENERATED.add(os.path.abspath(path))


def _ours(py_file: str) -> bool:
    path = os.path.abspath(py_file)
    return path in _GENERATED or path.startswith(_PACKAGE + os.sep)


def install() -> None:
    """Put symgrad's locator first in Numba's list (idempotent). Call before any `@njit(cache=True)` of symgrad's
    is decorated: the locator is chosen when the decorator runs."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    from symgrad.backends.cpu import blasload

    blasload.preload()  # also before any kernel: Numba's first compile or cache load imports SciPy's BLAS
    from numba.core import caching, config

    base = getattr(caching, "UserProvidedCacheLocator", None)
    impl = getattr(caching, "CacheImpl", None)
    if base is None or impl is None or not hasattr(impl, "_locator_classes"):  # pragma: no cover - other Numba
        # CACHE_DIR is set at import from the environment; numba's config stub does not list it
        if not config.CACHE_DIR:  # type: ignore[attr-defined]
            config.CACHE_DIR = str(cache_root())  # type: ignore[attr-defined]
        return

    class SymgradCacheLocator(base):  # type: ignore[valid-type, misc]  # a base found at run time (getattr)
        """Numba's user-provided-directory locator, pointed at the symgrad cache, for symgrad's files only."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(entries_root() / self.get_suitable_cache_subpath(py_file))

        def get_source_stamp(self):
            return super().get_source_stamp(), package_digest()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _ours(py_file):
                return None
            return super(base, cls).from_function(py_func, py_file)

    impl._locator_classes.insert(0, SymgradCacheLocator)
