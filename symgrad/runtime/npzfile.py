"""Reading `.npz` files a user (or an attacker) hands us: look before reading, refuse in one line.

`np.load` trusts the file: a header claiming 7 TiB allocates it, a zip bomb is inflated before anything checks
it, and a damaged file surfaces as `BadZipFile`, `EOFError` or `KeyError` from deep inside numpy. Here the zip
directory and every member's `.npy` header are read first (a few hundred bytes each), so the caller can check
names, shapes and dtypes against what it expects, and the declared sizes against the available memory, before a
single array is inflated. Every failure is one `error(message)` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from symgrad.errors import SymgradError, UsageError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"
MAX_BYTES_ENV = "SYMGRAD_MAX_DATA_BYTES"  # an explicit cap on what one file may inflate to (bytes)


@dataclass(frozen=True)
class Member:
    """One array of an `.npz`, known from its header alone."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    info: zipfile.ZipInfo


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_bytes() -> int:
    """What one file may inflate to: `$SYMGRAD_MAX_DATA_BYTES`, else the memory the OS says is available."""
    env = os.environ.get(MAX_BYTES_ENV, "").strip()
    if env.isdigit():
        return int(env)
    if env:  # a limit the user set but mistyped must not be dropped in silence
        raise UsageError(f"${MAX_BYTES_ENV} must be a whole number of bytes, got {env!r}")
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not POSIX
        return 16 * 2**30


def _read_header(fh, version: tuple[int, int]):
    fmt = np.lib.format
    if version == (1, 0):
        return fmt.read_array_header_1_0(fh)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fh)
    if version == (3, 0):
        # 3.0 is 2.0's layout with a utf-8 header (for non-ASCII field names of structured dtypes, which symgrad
        # refuses anyway); numpy has no public reader of it, and its private one is gone in numpy 2.4. An ASCII
        # header reads the same as latin-1.
        return fmt.read_array_header_2_0(fh)
    raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")


def check_file(path: str, error: Callable[[str], Exception]) -> None:
    """Exists, is a regular file, is not empty: the three things `np.load` reports worst."""
    if not os.path.exists(path):
        raise error(f"{path}: no such file")
    if os.path.isdir(path):
        raise error(f"{path}: is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise error(f"{path}: the file is empty")


def inspect(path: str, error: Callable[[str], Exception]) -> dict[str, Member]:
    """The arrays of an `.npz` by key, from the zip directory and the `.npy` headers; nothing is inflated."""
    check_file(path, error)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if magic == NPY_MAGIC:
        raise error(f"{path}: is a single .npy array, not an .npz archive; save with np.savez(path, x=..., y=...)")
    if not magic.startswith(ZIP_MAGIC):
        raise error(f"{path}: is not an .npz file (a zip archive of .npy arrays, written by np.savez)")
    members: dict[str, Member] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if not info.filename.endswith(".npy"):
                    raise error(f"{path}: member {info.filename!r} is not a .npy array")
                if key in members:  # zipfile keeps both and np.load silently takes the last
                    raise error(f"{path}: array {key!r} appears twice in the archive")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _fortran, dtype = _read_header(fh, version)
                    header_len = fh.tell()
                if dtype.hasobject:
                    raise error(f"{path}: array {key!r} holds Python objects (pickled data), which symgrad never loads")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
                if header_len + nbytes > info.file_size:
                    raise error(
                        f"{path}: array {key!r} claims shape {tuple(shape)} ({human_bytes(nbytes)}) but the file "
                        f"holds {human_bytes(max(0, info.file_size - header_len))} for it (truncated or tampered)"
                    )
                members[key] = Member(key, tuple(int(d) for d in shape), dtype, nbytes, info)
    except SymgradError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in zipfile/zlib/numpy: one line
        raise error(_damaged(path, exc)) from None
    return members


def _damaged(path: str, exc: BaseException) -> str:
    what = str(exc) if isinstance(exc, zipfile.BadZipFile) else f"{type(exc).__name__}: {exc}"
    return f"{path}: damaged .npz file ({' '.join(what.split())[:200]})"


def read(path: str, members: Iterable[Member], error: Callable[[str], Exception]) -> dict[str, np.ndarray]:
    """Inflate the given members (after the caller checked them), refusing more than the available memory."""
    members = list(members)
    total = sum(m.nbytes for m in members)
    limit = available_bytes()
    if total > limit:
        raise error(
            f"{path}: the arrays {', '.join(repr(m.key) for m in members)} need {human_bytes(total)}, more than "
            f"the {human_bytes(limit)} of memory available (${MAX_BYTES_ENV} sets the limit)"
        )
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for m in members:
                with zf.open(m.info) as fh:
                    out[m.key] = np.lib.format.read_array(fh, allow_pickle=False)
    except SymgradError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in zipfile/zlib/numpy: one line
        raise error(_damaged(path, exc)) from None
    return out
