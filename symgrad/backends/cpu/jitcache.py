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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_GENERATED: set[str] = set()
_OUR_DIRS: set[str] = set()  # cache directories symgrad's locator chose: only their entries are wrapped below
_ENTRY = "symgrad-entry-1"  # the tag of a self-checking entry: (tag, index file, source stamp, key, payload)
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


_SCRATCH: list[Path] = []


def _scratch_root() -> Path:
    """A private temp folder for kernels when the symgrad cache is not writable (made once per process)."""
    if not _SCRATCH:
        import tempfile

        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="symgrad-numba-")))
    return _SCRATCH[0]


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

        def __init__(self, py_func, py_file, root: Path | None = None):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str((root or entries_root()) / self.get_suitable_cache_subpath(py_file))
            _OUR_DIRS.add(self._cache_path)

        def get_source_stamp(self):
            return super().get_source_stamp(), package_digest()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _ours(py_file):
                return None
            found = super(base, cls).from_function(py_func, py_file)
            if found is not None:
                return found
            # the symgrad cache cannot be written ($SYMGRAD_CACHE names a file, say): Numba's next locator would
            # write into the installed package's __pycache__, so this process compiles into a scratch folder
            scratch = cls(py_func, py_file, root=_scratch_root())
            try:
                scratch.ensure_cache_path()
            except OSError:  # pragma: no cover - not even the temp folder is writable: no caching at all
                return None
            return scratch

    impl._locator_classes.insert(0, SymgradCacheLocator)
    _guard_entries(getattr(caching, "IndexDataCacheFile", None))


def _guard_entries(index_file: Any) -> None:
    """Make symgrad's cache entries safe to share between processes.

    Numba updates a function's index by load, pick the first free `.N.nbc`, save, with no lock, and loads an entry
    without checking that the data is the one its key names (numba/numba#10128). Two processes saving different
    signatures of one function at once (MPI ranks, parallel jobs, the warm-up worker) can lose an entry or leave
    one pointing at another's code, which is then served as if it were right. Numba's key does not even tell
    `math.exp(x)` from `math.expm1(x)` (same bytecode; the names differ only in co_names), only the index file
    does. For symgrad's directories only: saves hold an exclusive lock on the directory's `.index.flock` (loads
    a shared one), so no update is lost, and every entry stores its index file's name (the function: qualified
    name and line), its source stamp (file and package digest) and its key, and is refused (compiled again)
    unless all match what was asked for, so a wrong entry is never served, with or without the lock (Windows has
    no flock: there the check alone stands).
    """
    if index_file is None or getattr(index_file, "_symgrad_guarded", False):  # pragma: no cover - other Numba
        return
    if not all(hasattr(index_file, a) for a in ("save", "load")):  # pragma: no cover
        return
    save, load = index_file.save, index_file.load

    def guarded_save(self, key, data):
        if self._cache_path not in _OUR_DIRS:
            return save(self, key, data)
        with _dir_lock(self._cache_path, exclusive=True):
            return save(self, key, (*_entry_id(self), key, data))

    def guarded_load(self, key):
        try:
            if self._cache_path not in _OUR_DIRS:
                return load(self, key)
            with _dir_lock(self._cache_path, exclusive=False):
                got = load(self, key)
        except Exception:  # an entry that cannot be unpickled (saved by a module loaded under a name that is not
            return None  # importable now, a truncated file): a cache miss, compiled again, not a traceback
        if isinstance(got, tuple) and len(got) == 5 and got[:3] == _entry_id(self) and got[3] == key:
            return got[4]
        return None  # absent, written by another symgrad, or another key's data: compile again (and resave)

    index_file.save, index_file.load = guarded_save, guarded_load
    index_file._symgrad_guarded = True


def _entry_id(cache_file: Any) -> tuple[str, str, Any]:
    return _ENTRY, cache_file._index_name, cache_file._source_stamp


@contextmanager
def _dir_lock(directory: str, exclusive: bool) -> Iterator[None]:
    """flock on `directory/.index.flock` (never through a link); no lock where there is none to take."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(os.path.join(directory, ".index.flock"), flags, 0o644)
    except OSError:  # no directory yet (nothing to load) or not writable: the entry check still stands
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # a file system without locks (some NFS mounts): the entry check still stands
            pass
        yield
    finally:
        os.close(fd)
