"""Files symgrad writes and the digests it stamps into them: written whole or not at all, never through a link.

The lowest layer of the package (it imports nothing of symgrad's): the code generator stamps modules with
`stamp`, the loader verifies and writes them, the Numba cache setup asks `cache_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

_DIGEST: dict[str, str] = {}
# Modules whose source never reaches generated text; every other module and template is part of the compiler,
# so a new compiler module is covered without being listed.
_RUNTIME_ONLY = {"__init__.py", "__main__.py", "blas.py", "checking.py", "cli.py", "cli_train.py", "cuda_mathfns.py",
                 "cuda_runtime.py", "data.py", "display.py", "distributed.py", "errors.py", "jitcache.py",
                 "loader.py", "mathfns.py", "optim.py", "render.py", "runtime.py", "schedules.py", "training.py",
                 "trainer.py", "checkpoint.py", "npzfile.py", "sampling.py", "reference.py"}


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def generator_digest() -> str:
    """A hash of all of symgrad's sources: a cached build from another symgrad is stale too."""
    if "all" not in _DIGEST:
        root = Path(__file__).parent
        _DIGEST["all"] = _digest(list(root.glob("*.py")) + list(root.glob("templates/**/*.j2")))
    return _DIGEST["all"]


def compiler_digest() -> str:
    """A hash of the sources that decide a generated module's text (stamped into its header)."""
    if "compiler" not in _DIGEST:
        root = Path(__file__).parent
        files = [f for f in root.glob("*.py") if f.name not in _RUNTIME_ONLY] + list(root.glob("templates/**/*.j2"))
        _DIGEST["compiler"] = _digest(files)
    return _DIGEST["compiler"]


def cache_dir() -> Path:
    return Path(os.environ.get("SYMGRAD_CACHE") or Path.home() / ".cache" / "symgrad")


def stamp(text: str) -> str:
    """Insert line 2 of a generated module: the SHA-256 of everything below it and the generator's digest, so an
    edited body or a build by another compiler is never imported as current."""
    first, _, rest = text.partition("\n")
    body = hashlib.sha256(rest.encode("utf-8")).hexdigest()
    return f"{first}\n# Body sha256 {body}, generator {compiler_digest()}. Regenerate with `symgrad build`.\n{rest}"


def _umask() -> int:
    if "umask" not in _DIGEST:
        mask = os.umask(0o022)
        os.umask(mask)
        _DIGEST["umask"] = str(mask)
    return int(_DIGEST["umask"])


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file whole or not at all: a fresh O_EXCL temporary in the target's folder (mkstemp: unpredictable
    name, never an existing file or link), fsync, then os.replace, which replaces a link at the target rather than
    writing through it. Concurrent writers each use their own temporary; the last rename wins, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".symgrad-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a build is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
