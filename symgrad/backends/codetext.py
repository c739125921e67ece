"""The one path by which text from a spec (or its file name) enters generated Python source.

Why a module of its own: a spec file name, a description or a name is data, and generated code must never execute
it. Every backend renders such text through these functions only (Jinja filters `comment`, `doc`, `pylit`, plus
`_pyrepr` for SPEC), so a newline cannot end a comment, a `\"\"\"` cannot end a docstring and a backslash cannot start
an escape that does not compile. Tests feed hostile names through every backend and import the result.
"""

from __future__ import annotations

import math
import re

from symgrad.errors import CodegenError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def comment_text(text: object) -> str:
    """Text safe on one `#` comment line: anything not printable (newline, CR, NUL, U+2028) is escaped."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def doc_text(text: object) -> str:
    """Text safe inside a triple-double-quoted docstring: backslashes and quotes are escaped, so the docstring's
    value is exactly the text; newlines are kept (readable), other non-printable characters escaped."""
    out = []
    for c in str(text):
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n" or c.isprintable():
            out.append(c)
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def py_literal(obj: object) -> str:
    """A Python literal for plain data (str, int, finite float, bool, None, tuples, lists, dicts): repr, which
    always round-trips, refusing non-finite floats, whose repr (`inf`, `nan`) is a name, not a literal."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise CodegenError(f"non-finite number {obj!r} cannot be written into generated code")
    if isinstance(obj, tuple | list):
        inner = ", ".join(py_literal(v) for v in obj)
        if isinstance(obj, tuple):
            return f"({inner},)" if len(obj) == 1 else f"({inner})"
        return f"[{inner}]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in obj.items()) + "}"
    if obj is None or isinstance(obj, bool | int | float | str):
        return repr(obj)
    raise CodegenError(f"cannot write a {type(obj).__name__} into generated code")


def identifier(name: object) -> str:
    """A name written bare into generated code: it must be a plain ASCII identifier (a spec name that is not one
    was refused by the parser; this is the last line of defence)."""
    s = str(name)
    if not _IDENTIFIER.fullmatch(s):
        raise CodegenError(f"refusing to write {s!r} into generated code: not a plain identifier")
    return s


FILTERS = {"comment": comment_text, "doc": doc_text, "pylit": py_literal, "ident": identifier}
