"""Output paths checked before any work: a checkpoint, `--out`, `--log` or `--plot` that cannot be written must
fail in the first second with one line, not with a traceback after an hour of training."""

from __future__ import annotations

import os
from typing import Any

from symgrad.errors import UsageError


def output_path(path: Any, what: str) -> str:
    """`path` as a string if a file can be created there (its folder exists or can be made, and is writable);
    otherwise a UsageError naming `what`. Writing itself stays atomic (write_atomic, save_checkpoint)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise UsageError(f"{what} must be a file path, got {type(path).__name__} {path!r}"[:200])
    text = os.fspath(path)
    if not text.strip():
        raise UsageError(f"{what} must be a file path, got an empty string")
    if os.path.isdir(text):
        raise UsageError(f"{what} {text!r} is a folder; name a file in it")
    folder = os.path.dirname(os.path.abspath(text))
    probe = folder
    while not os.path.exists(probe):  # the first ancestor that exists decides: it must be a writable folder
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UsageError(f"cannot write {what} {text}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {what} {text}: {probe} is not writable")
    if probe == folder:  # the folder exists: try it (root passes os.access everywhere, /proc refuses files)
        import tempfile

        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".symgrad-probe-"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot write {what} {text}: {exc.strerror or exc}") from None
    return text
