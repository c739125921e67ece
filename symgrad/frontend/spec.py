"""Parse stage, part 1: YAML text -> a validated, typed `Spec` whose every value remembers its line.

Why compose instead of load: `yaml.compose` with the safe loader gives nodes that carry marks, so every error can
point at `FILE:LINE`. Nodes are walked by hand (never constructed by PyYAML), which also means no tag is ever
honoured: `!!python/...` tags are rejected, and aliases are rejected outright, so an alias bomb cannot expand.
"""

from __future__ import annotations

import hashlib
import keyword
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from symgrad.errors import SpecError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # always fullmatch: `$` would accept a trailing newline
_MAX_NAME = 100  # characters in any name: file and cache-folder names are built from them
_DECIMAL_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
# YAML 1.1 (PyYAML) resolves `1e308` (no dot) as a string; in a spec a number is meant
_PLAIN_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)([eE][-+]?[0-9]+)?")
_MAX_BYTES = 1_000_000
# spec names whose generated/<name>.py would shadow a module a symgrad script imports (the standard library, the
# project's dependencies, symgrad itself); dunder names (`__init__`) are refused as well
_SHADOWING = frozenset(sys.stdlib_module_names) | {
    "symgrad", "numpy", "numba", "sympy", "scipy", "jinja2", "yaml", "click", "tqdm", "matplotlib", "mpi4py",
    "hypothesis", "pytest", "llvmlite", "mpmath", "threadpoolctl", "torch", "jax", "sklearn", "setuptools", "pip",
}  # fmt: skip
_MAX_NODES = 20_000

TOP_KEYS = {
    "name",
    "description",
    "dims",
    "inputs",
    "params",
    "constants",
    "functions",
    "forward",
    "loss",
    "objective",
    "reduction",
    "outputs",
}
REQUIRED = ("name", "params", "loss")


@dataclass(frozen=True)
class Text:
    """A string from the spec with the line it came from (1-based)."""

    value: str
    line: int


@dataclass
class ArrayDecl:
    name: str
    shape: tuple[Text, ...]  # dim names or integer literals, resolved later
    line: int
    init: Text | None = None  # params only
    sample: str | None = None  # inputs only: None or a kind of lang.sampling ("normal", "bernoulli(0.8)", ...)


@dataclass
class StatementDecl:
    lhs: Text  # `name` or `name[i, j]`
    expr: Text
    shape: tuple[Text, ...] | None
    line: int
    init: Text | None = None  # a recurrence's state before its first step (`h[t - 1]` at t = 0)


@dataclass
class Spec:
    """A spec as written, every value checked for type, nothing yet interpreted as maths."""

    path: str
    sha256: str
    name: str
    description: str
    dims: dict[str, int]
    dim_lines: dict[str, int]
    inputs: dict[str, ArrayDecl]
    params: dict[str, ArrayDecl]
    constants: dict[str, tuple[float, int]]
    functions: list[tuple[Text, Text]]
    forward: list[StatementDecl]
    loss: Text
    objective: str
    reduction: str
    outputs: list[Text] | None
    line_of: dict[str, int] = field(default_factory=dict)

    def err(self, message: str, line: int | None) -> SpecError:
        return SpecError(message, self.path, line)


class _Reader:
    """Walks composed YAML nodes, checking types; every failure is a SpecError at the node's line."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0

    def fail(self, node: yaml.Node | None, message: str) -> SpecError:
        line = node.start_mark.line + 1 if node is not None else 1
        return SpecError(message, self.path, line)

    def check(self, node: yaml.Node) -> None:
        """Reject tags and count nodes: spec YAML is plain data, never objects."""
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.fail(node, f"spec is too large (more than {_MAX_NODES} YAML nodes)")
        if isinstance(node, yaml.ScalarNode):
            allowed = node.tag.startswith("tag:yaml.org,2002:") and not node.tag.startswith("tag:yaml.org,2002:python")
        else:
            allowed = node.tag in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
        if not allowed:
            raise self.fail(node, f"YAML tag {node.tag!r} is not allowed in a spec")

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        self.check(node)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out, seen = [], set()
        pairs = _rejoin_flow_commas(node) if node.flow_style else list(node.value)
        for key, value in pairs:
            self.check(key)
            if not isinstance(key, yaml.ScalarNode):
                raise self.fail(key, f"keys of {what} must be plain names")
            if key.value in seen:
                raise self.fail(key, f"duplicate key {key.value!r} in {what}")
            seen.add(key.value)
            out.append((key, value))
        return out

    def scalar(self, node: yaml.Node, what: str) -> yaml.ScalarNode:
        self.check(node)
        if not isinstance(node, yaml.ScalarNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            raise self.fail(node, f"{what} must be a single value, not a {kind}")
        return node

    def string(self, node: yaml.Node, what: str, allow_numbers: bool = False) -> Text:
        node = self.scalar(node, what)
        kind = _scalar_kind(node)
        if kind != "str" and not (allow_numbers and kind in ("int", "float")):
            raise self.fail(node, f"{what} must be a string, got {kind} {node.value!r}")
        return Text(node.value, node.start_mark.line + 1)

    def number(self, node: yaml.Node, what: str) -> float:
        node = self.scalar(node, what)
        kind = _scalar_kind(node)
        if kind == "str" and node.style is None and _PLAIN_FLOAT.fullmatch(node.value):
            kind = "float"
        if kind not in ("int", "float"):
            raise self.fail(node, f"{what} must be a number, got {node.value!r}")
        if kind == "int":
            value = float(_decimal_int(self, node, what))
        else:
            try:
                value = (
                    float(node.value.replace("_", ""))
                    if _PLAIN_FLOAT.fullmatch(node.value)
                    else float(yaml.safe_load(node.value))
                )
            except (ValueError, TypeError, OverflowError):
                raise self.fail(node, f"{what} must be a number, got {node.value!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(node, f"{what} must be a finite number, got {node.value!r}")
        return value

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        self.check(node)
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)


def _rejoin_flow_commas(node: yaml.MappingNode) -> list:
    """YAML splits `{init: normal(0, 0.01)}` at the comma into `init: normal(0` and a key `0.01)` with no value.
    SPEC.md writes exactly that, so a plain value with an open parenthesis absorbs the value-less keys that close it.
    """
    out: list = []
    pending = None
    for key, value in node.value:
        if (
            pending is not None
            and isinstance(key, yaml.ScalarNode)
            and isinstance(value, yaml.ScalarNode)
            and value.value == ""
            and value.tag.endswith(":null")
        ):
            k0, v0 = pending
            text = f"{v0.value}, {key.value}"
            v0 = yaml.ScalarNode("tag:yaml.org,2002:str", text, v0.start_mark, key.end_mark)
            pending = (k0, v0)
            if text.count("(") <= text.count(")"):
                out.append(pending)
                pending = None
            continue
        if pending is not None:
            out.append(pending)
            pending = None
        open_paren = isinstance(value, yaml.ScalarNode) and value.value.count("(") > value.value.count(")")
        if open_paren and value.style is None:
            pending = (key, value)
        else:
            out.append((key, value))
    if pending is not None:
        out.append(pending)
    return out


def _scalar_kind(node: yaml.ScalarNode) -> str:
    """The type PyYAML's safe resolver gives a plain scalar (quoted scalars are strings)."""
    tag = node.tag.rsplit(":", 1)[-1]
    return {"str": "str", "int": "int", "float": "float", "bool": "bool", "null": "null"}.get(tag, tag)


def _decimal_int(reader: _Reader, node: yaml.ScalarNode, what: str) -> int:
    """A YAML int written in plain decimal. YAML 1.1 also reads `017` as octal 15 and `1:30` as 90 (base 60):
    a spec refuses those rather than guess."""
    text = node.value.strip()
    if not _DECIMAL_INT.fullmatch(text):
        raise reader.fail(node, f"{what} must be a plain decimal integer, got {node.value!r}")
    if len(text) > 30:
        raise reader.fail(node, f"{what} is too large ({len(text)} digits)")
    return int(text.replace("_", ""))


def _ident(reader: _Reader, key: yaml.ScalarNode, what: str) -> str:
    name = key.value
    if not isinstance(name, str) or not _IDENT.fullmatch(name) or keyword.iskeyword(name):
        raise reader.fail(key, f"{what} name {name!r} is not a valid identifier")
    if len(name) > _MAX_NAME:
        raise reader.fail(key, f"{what} name {name[:20]!r}... is longer than {_MAX_NAME} characters")
    if name.startswith("_"):
        raise reader.fail(key, f"{what} name {name!r} must not start with '_' (reserved for symgrad)")
    return name


def _shape(reader: _Reader, node: yaml.Node, what: str) -> tuple[Text, ...]:
    items = []
    for item in reader.sequence(node, f"shape of {what}"):
        items.append(reader.string(item, f"a size in the shape of {what}", allow_numbers=True))
    return tuple(items)


def read_spec_bytes(path: str | Path) -> bytes:
    """A spec file's bytes, at most 1 MB of them: a device (`/dev/zero`), a FIFO or a 20 GB file is refused in one
    line instead of hanging or filling memory (everything that reads a spec reads it here)."""
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError("spec is not a regular file", str(path), 1)
        if st.st_size > _MAX_BYTES:
            raise SpecError("spec file is larger than 1 MB", str(path), 1)
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", str(path), 1) from None
    if len(raw) > _MAX_BYTES:  # it grew between the stat and the read
        raise SpecError("spec file is larger than 1 MB", str(path), 1)
    return raw


def load_spec(path: str | Path, text: str | bytes | None = None) -> Spec:
    """Read and validate a spec file. Raises SpecError with the offending line."""
    path = str(path)
    if text is None:
        raw = read_spec_bytes(path)
    else:
        raw = text.encode() if isinstance(text, str) else text
    if len(raw) > _MAX_BYTES:
        raise SpecError("spec file is larger than 1 MB", path, 1)
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("spec is not UTF-8 text", path, 1) from None
    if "\x00" in source:
        raise SpecError("spec contains NUL bytes: not a text file", path, 1)
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML: {problem}", path, line) from None
    if root is None:
        raise SpecError("spec is empty", path, 1)
    _reject_aliases(root, path)
    return _read(_Reader(path), root, path, hashlib.sha256(raw).hexdigest())


def _reject_aliases(root: yaml.Node, path: str) -> None:
    """A node reached twice came from an alias: refuse them all, so no alias bomb can expand."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise SpecError("YAML anchors and aliases are not allowed in a spec", path, node.start_mark.line + 1)
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _read(r: _Reader, root: yaml.Node, path: str, sha: str) -> Spec:
    if not isinstance(root, yaml.MappingNode):
        raise r.fail(root, "a spec must be a mapping of keys such as name, params, loss")
    top = {}
    line_of = {}
    for key, value in r.mapping(root, "the spec"):
        if key.value not in TOP_KEYS:
            close = _closest(key.value, TOP_KEYS)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise r.fail(key, f"unknown key {key.value!r}{hint}")
        top[key.value] = value
        line_of[key.value] = key.start_mark.line + 1
    for req in REQUIRED:
        if req not in top:
            raise SpecError(f"missing required key {req!r}", path, 1)

    name_t = r.string(top["name"], "name")
    if not _IDENT.fullmatch(name_t.value) or keyword.iskeyword(name_t.value):
        raise SpecError(f"name {name_t.value!r} is not a valid identifier", path, name_t.line)
    if name_t.value in _SHADOWING or name_t.value.startswith("__"):
        raise SpecError(
            f"name {name_t.value!r} is the name of a Python module: generated/{name_t.value}.py would shadow it for "
            "every script run in that folder; choose another name",
            path,
            name_t.line,
        )
    if len(name_t.value) > _MAX_NAME:
        raise SpecError(
            f"name {name_t.value[:20]!r}... is longer than {_MAX_NAME} characters (it names files)", path, name_t.line
        )
    description = r.string(top["description"], "description").value if "description" in top else ""

    dims, dim_lines = {}, {}
    if "dims" in top:
        for key, value in r.mapping(top["dims"], "dims"):
            dname = _ident(r, key, "dim")
            node = r.scalar(value, f"dim {dname}")
            if _scalar_kind(node) != "int" or _decimal_int(r, node, f"dim {dname}") <= 0:
                raise r.fail(value, f"dim {dname} must be a positive integer, got {node.value!r}")
            dims[dname] = _decimal_int(r, node, f"dim {dname}")
            dim_lines[dname] = key.start_mark.line + 1

    inputs = {}
    for key, value in r.mapping(top["inputs"], "inputs") if "inputs" in top else []:
        iname = _ident(r, key, "input")
        line = key.start_mark.line + 1
        if isinstance(value, yaml.SequenceNode):
            inputs[iname] = ArrayDecl(iname, _shape(r, value, iname), line)
            continue
        fields = dict((k.value, (k, v)) for k, v in r.mapping(value, f"input {iname}"))
        for k, (knode, _) in fields.items():
            if k not in ("shape", "sample"):
                raise r.fail(knode, f"unknown key {k!r} in input {iname} (expected shape, sample)")
        if "shape" not in fields:
            raise r.fail(key, f"input {iname} needs a shape")
        sample = None
        if "sample" in fields:
            from symgrad.lang import sampling

            text = r.string(fields["sample"][1], f"sample of {iname}").value
            sample = sampling.parse(text)
            if sample is None:
                raise r.fail(
                    fields["sample"][1],
                    f"unknown sample kind {text!r} for input {iname} (expected "
                    f"{', '.join(sampling.KINDS)} with 0 <= p <= 1)",
                )
        inputs[iname] = ArrayDecl(iname, _shape(r, fields["shape"][1], iname), line, sample=sample)

    for iname, decl in inputs.items():
        if iname.endswith("_test") and iname[: -len("_test")] in inputs:  # data.md: <input>_test is held-out data
            raise SpecError(
                f"input name {iname!r} is the held-out array name of input {iname[:-5]!r} (a data file's "
                f"{iname!r} is its test set); choose another name",
                path,
                decl.line,
            )

    params = {}
    for key, value in r.mapping(top["params"], "params"):
        pname = _ident(r, key, "param")
        line = key.start_mark.line + 1
        if isinstance(value, yaml.SequenceNode):
            params[pname] = ArrayDecl(pname, _shape(r, value, pname), line, init=Text("zeros", line))
            continue
        fields = dict((k.value, (k, v)) for k, v in r.mapping(value, f"param {pname}"))
        for k, (knode, _) in fields.items():
            if k not in ("shape", "init"):
                raise r.fail(knode, f"unknown key {k!r} in param {pname} (expected shape, init)")
        if "shape" not in fields:
            raise r.fail(key, f"param {pname} needs a shape")
        init: Text | None = Text("zeros", line)
        if "init" in fields:
            init = r.string(fields["init"][1], f"init of {pname}", allow_numbers=True)
        params[pname] = ArrayDecl(pname, _shape(r, fields["shape"][1], pname), line, init=init)
    if not params:
        raise SpecError("params must declare at least one parameter", path, line_of["params"])

    constants = {}
    for key, value in r.mapping(top["constants"], "constants") if "constants" in top else []:
        cname = _ident(r, key, "constant")
        if cname == "lr":  # schedule={"lr": ...} and --schedule lr=... mean the learning rate
            raise r.fail(key, "constant name 'lr' is taken: schedules use it for the learning rate; choose another")
        constants[cname] = (r.number(value, f"constant {cname}"), key.start_mark.line + 1)

    functions = []
    for key, value in r.mapping(top["functions"], "functions") if "functions" in top else []:
        body = r.string(value, f"function {key.value}", True)
        functions.append((Text(str(key.value), key.start_mark.line + 1), body))

    forward = []
    if "forward" in top:
        fnode = top["forward"]
        if isinstance(fnode, yaml.SequenceNode):  # a list of one-key mappings keeps order explicit too
            pairs = []
            for item in r.sequence(fnode, "forward"):
                pairs.extend(r.mapping(item, "a forward statement"))
        else:
            pairs = r.mapping(fnode, "forward")
        for key, value in pairs:
            lhs = Text(str(key.value), key.start_mark.line + 1)
            if isinstance(value, yaml.MappingNode):
                fields = dict((k.value, (k, v)) for k, v in r.mapping(value, f"statement {key.value}"))
                for k, (knode, _) in fields.items():
                    if k not in ("shape", "expr", "init"):
                        raise r.fail(knode, f"unknown key {k!r} in statement {key.value} (expected shape, expr, init)")
                if "expr" not in fields:
                    raise r.fail(key, f"statement {key.value} needs an expr")
                expr = r.string(fields["expr"][1], f"expr of {key.value}", allow_numbers=True)
                shape = _shape(r, fields["shape"][1], str(key.value)) if "shape" in fields else None
                init = (
                    r.string(fields["init"][1], f"init of {key.value}", allow_numbers=True)
                    if "init" in fields
                    else None
                )
            else:
                expr = r.string(value, f"statement {key.value}", allow_numbers=True)
                shape = init = None
            forward.append(StatementDecl(lhs, expr, shape, lhs.line, init))

    loss = r.string(top["loss"], "loss", allow_numbers=True)
    objective = r.string(top["objective"], "objective").value if "objective" in top else "minimize"
    if objective not in ("minimize", "maximize"):
        raise SpecError(f"objective must be minimize or maximize, got {objective!r}", path, line_of["objective"])
    reduction = r.string(top["reduction"], "reduction").value if "reduction" in top else "mean"
    if reduction not in ("mean", "sum"):
        raise SpecError(f"reduction must be mean or sum, got {reduction!r}", path, line_of["reduction"])
    outputs = None
    if "outputs" in top:
        onode = top["outputs"]
        if isinstance(onode, yaml.ScalarNode):
            outputs = [r.string(onode, "outputs")]
        else:
            outputs = [r.string(item, "an output name") for item in r.sequence(onode, "outputs")]
    return Spec(
        path,
        sha,
        name_t.value,
        description,
        dims,
        dim_lines,
        inputs,
        params,
        constants,
        functions,
        forward,
        loss,
        objective,
        reduction,
        outputs,
        line_of,
    )


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(str(word), sorted(options), n=1, cutoff=0.7)
    return match[0] if match else None
