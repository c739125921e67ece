"""How a failed command's error is printed: shared by every command (main.py) and `train` (train.py)."""

from __future__ import annotations

import click

from symgrad.errors import CheckFailed, SpecError


def one_line(exc: BaseException) -> str:
    """The one line a failed command prints: a spec error as `FILE:LINE: message` (editors and CI parse that),
    anything else as `error: message`."""
    if isinstance(exc, click.ClickException):
        text = exc.format_message()
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())  # a multi-line message is still one line
    if isinstance(exc, SpecError) or text.startswith("error: ") or isinstance(exc, CheckFailed):
        return text
    return f"error: {text}"
