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
# The compiler is every module of these stages (and every template); a new compiler module is covered without being
# listed. Backend modules that generated code only imports at run time never reach generated text.
_COMPILER = ("lang", "frontend", "ir", "backends")
_RUNTIME_ONLY = {
    "backends/cpu/mathfns.py",
    "backends/cpu/jitcache.py",
    "backends/cpu/blasload.py",
    "backends/cuda/mathfns.py",
    "backends/cuda/device.py",
    "backends/cuda/step.py",
    "backends/stepmath.py",
}
_ROOT = Path(__file__).parent


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(_ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def generator_digest() -> str:
    """A hash of all of symgrad's sources: a cached build from another symgrad is stale too."""
    if "all" not in _DIGEST:
        _DIGEST["all"] = _digest(list(_ROOT.rglob("*.py")) + list(_ROOT.rglob("*.j2")))
    return _DIGEST["all"]


def compiler_digest() -> str:
    """A hash of the sources that decide a generated module's text (stamped into its header)."""
    if "compiler" not in _DIGEST:
        files = [_ROOT / "artifacts.py"]
        for stage in _COMPILER:
            files += [
                f
                for f in (_ROOT / stage).rglob("*")
                if f.suffix in (".py", ".j2") and f.relative_to(_ROOT).as_posix() not in _RUNTIME_ONLY
            ]
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
