"""Graph stage: a validated Spec -> a `Program` of forward statements over index variables.

Every statement is `out[I] = body` with body in a normal form the derive and lower stages rely on:
`E0 + Σ_t Sum_{J_t}(g_t)` where E0 and every g_t contain no reduction, or a single `LogSumExp` (a reduction
statement of its own). A reduction that appears anywhere else (inside log, in a denominator) is hoisted into a
hidden statement of its own, so its value is stored for the backward pass instead of recomputed.
"""

from __future__ import annotations

import ast
import itertools
import keyword
import math
import re
from dataclasses import dataclass, field
from enum import Enum

import sympy
from sympy import Indexed, Integer, Symbol

from symgrad.errors import SpecError
from symgrad.frontend.exprs import (
    ArrayRef,
    Builder,
    ExprError,
    Scope,
    TExpr,
    collect_plain_uses,
    make_base,
    parse_source,
)
from symgrad.frontend.spec import Spec, Text, load_spec
from symgrad.lang.library import BATCH_SIZE, ELEMENTWISE, INITS, LIBRARY, BatchSum, LogSumExp, Sum
from symgrad.lang.names import KERNEL_GLOBALS, NameAllocator, identifiers
from symgrad.lang.primitives import CONSTANTS

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
MAX_AXES = 16  # Python nests at most 20 blocks; batch + axes + reduction loops must fit
MAX_ELEMENTS = 2**31  # per array and sample: beyond this no buffer can be allocated anyway
_FUNC_SIG = re.compile(rf"^\s*({_NAME})\s*\(\s*({_NAME}(\s*,\s*{_NAME})*)?\s*\)\s*$")


class TextEnum(str, Enum):
    """An enum whose members are their text: they compare, hash, print and format as the string they name, so the
    IR is typed while messages and generated code read as before."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ArrayKind(TextEnum):
    """What an array of a program is: data the batch supplies, a trained parameter, or a statement's value."""

    INPUT = "input"
    PARAM = "param"
    STMT = "stmt"


@dataclass
class Array:
    """An input, param or statement value: its shape (per sample) and SymPy handle."""

    name: str
    shape: tuple[int, ...]
    base: sympy.Basic  # IndexedBase, or Symbol for a 0-d array
    kind: ArrayKind
    batched: bool
    line: int
    init: tuple | None = None  # params: (kind, args)
    sample: str | None = None  # inputs


@dataclass
class Statement:
    name: str
    indices: tuple[Symbol, ...]
    shape: tuple[int, ...]
    body: sympy.Expr
    line: int
    batched: bool = False
    hidden: bool = False  # hoisted by symgrad, not written by the user
    bounds: dict = field(default_factory=dict)  # bound index -> (lo, hi)


@dataclass
class Recurrence:
    """Statements run step by step over a time index: forward for t = 0..T-1, backward for t = T-1..0.

    `members` are the statements inside the step loop, each with its own time index symbol (`time_of`); `hoisted`
    are hidden statements the graph made inside the region that do not depend on t (computed outside the loop).
    """

    size: int
    members: list[str]
    time_of: dict[str, Symbol]
    hoisted: list[str]
    carried: dict[str, object]  # carried statement -> its init (a number or an array name)


@dataclass
class Program:
    spec: Spec
    dims: dict[str, int]
    arrays: dict[str, Array]
    constants: dict[str, tuple[float, Symbol]]
    statements: list[Statement]
    outputs: list[str]
    loss_name: str
    names: NameAllocator = field(default_factory=NameAllocator)
    adjoint: dict[str, str] = field(default_factory=dict)  # array name -> code name of its adjoint (`w_bar`)
    recurrences: list[Recurrence] = field(default_factory=list)

    @property
    def params(self) -> list[Array]:
        return [a for a in self.arrays.values() if a.kind == ArrayKind.PARAM]

    @property
    def inputs(self) -> list[Array]:
        return [a for a in self.arrays.values() if a.kind == ArrayKind.INPUT]

    def array_of(self, read) -> Array | None:
        """The array a read refers to (see `array_of`)."""
        return array_of(self.arrays, read)


def array_of(arrays: dict[str, Array], read) -> Array | None:
    """The array an `Indexed` read or a bare base refers to, or None (a loop index, a constant). Looked up by name,
    then confirmed by identity: a scan per read was quadratic, and a name alone could be a bound index's."""
    base = read.base if isinstance(read, Indexed) else read
    a = arrays.get(getattr(base, "name", str(base)))
    return a if a is not None and a.base == base else None


def split_body(body: sympy.Expr) -> tuple[sympy.Expr, list[sympy.Sum]]:
    """A normal-form body `E0 + Σ_t Sum_{J_t}(g_t)` as (E0, [Sum_1, ...]): what derive and lower both walk."""
    e0_terms: list[sympy.Expr] = []
    sums: list[sympy.Sum] = []
    for term in sympy.Add.make_args(body):
        (sums if isinstance(term, sympy.Sum) else e0_terms).append(term)
    return sympy.Add(*e0_terms), sums


def build_program(spec_or_path: Spec | str) -> Program:
    spec = spec_or_path if isinstance(spec_or_path, Spec) else load_spec(spec_or_path)
    return _GraphBuilder(spec).run()


class _GraphBuilder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.arrays: dict[str, Array] = {}
        self.statements: list[Statement] = []
        self.names = NameAllocator(_spec_identifiers(spec))
        self._hoisted: dict = {}

    def err(self, msg: str, line: int) -> SpecError:
        return SpecError(msg, self.spec.path, line)

    def shape(self, items: tuple[Text, ...], what: str) -> tuple[int, ...]:
        out = []
        for t in items:
            v = t.value
            if isinstance(v, str) and v.strip() in self.spec.dims:
                out.append(self.spec.dims[v.strip()])
                continue
            try:
                n = int(str(v), 10)
            except ValueError:
                raise self.err(
                    f"size {v!r} in the shape of {what} is neither a positive integer nor a dim", t.line
                ) from None
            if n <= 0:
                raise self.err(f"size {n} in the shape of {what} must be positive", t.line)
            out.append(n)
        line = items[0].line if items else 1
        if len(out) > MAX_AXES:
            raise self.err(f"{what} has {len(out)} axes; at most {MAX_AXES} (each axis is a nested loop)", line)
        total = 1
        for n in out:
            total *= n
        if total > MAX_ELEMENTS:
            digits = len(str(total))
            raise self.err(f"{what} has about 10**{digits - 1} elements per sample; at most 2**31", line)
        return tuple(out)

    def declare(self, name: str, line: int) -> None:
        s = self.spec
        taken = (
            (name in self.arrays and "an earlier " + self.arrays[name].kind)
            or (name in s.dims and "a dim")
            or (name in s.constants and "a constant")
            or (name in ELEMENTWISE and "a built-in function")
            or (name in LIBRARY and "a library function")
            or (name in ("sum", "Sum", "mean", "Piecewise") and "a built-in")
            or (name in KERNEL_GLOBALS and "a name generated code uses")
            or (keyword.iskeyword(name) and "a Python keyword")
        )
        if taken:
            raise self.err(f"{name!r} is already {taken}; choose another name", line)

    def run(self) -> Program:
        s = self.spec
        for name, line in s.dim_lines.items():
            if name in ELEMENTWISE or name in LIBRARY:
                raise self.err(f"dim {name!r} shadows a function name", line)
        constants = {}
        for name, (value, line) in s.constants.items():
            if name in s.dims:
                raise self.err(f"constant {name!r} is already a dim", line)
            if name in KERNEL_GLOBALS:
                raise self.err(f"constant {name!r} is a name generated code uses; choose another name", line)
            constants[name] = (value, Symbol(name, real=True))
        for name, decl in s.inputs.items():
            self.declare(name, decl.line)
            shape = self.shape(decl.shape, name)
            self.arrays[name] = Array(
                name, shape, make_base(name, shape), ArrayKind.INPUT, True, decl.line, sample=decl.sample
            )
        for name, decl in s.params.items():
            self.declare(name, decl.line)
            shape = self.shape(decl.shape, name)
            assert decl.init is not None  # a param always has one (load_spec defaults it to zeros)
            init = self.parse_init(decl.init, name)
            self.arrays[name] = Array(name, shape, make_base(name, shape), ArrayKind.PARAM, False, decl.line, init=init)
        functions = self.parse_functions()
        self.functions = functions
        self.constants = constants
        stmt_names = [d.lhs.value.split("[")[0].strip() for d in s.forward]
        self.carried = self.declare_carried()
        self.regions: list[tuple[int, str]] = []  # (first statement index, name of the last carried statement)
        for pos, stmt_decl in enumerate(s.forward):
            self._region_start = len(self.statements)
            self.statement(stmt_decl, set(stmt_names[pos + 1 :]) - set(self.carried))
        self.recurrences = self.finish_recurrences()
        loss_name = self.names.take("L")
        body = self.expression(s.loss.value, s.loss.line, set(), lhs=None, shape=None)
        if body.axes or body.named:
            loss_shape = [n for _, n in body.axes]
            raise self.err(
                f"loss must be a scalar per sample, but it has shape {loss_shape or 'with free indices'}; "
                f"reduce it with sum(...)",
                s.loss.line,
            )
        self.add_statement(loss_name, (), (), body.expr, s.loss.line)
        outputs = []
        for out in s.outputs or []:
            if out.value not in self.arrays or self.arrays[out.value].kind != ArrayKind.STMT:
                raise self.err(f"output {out.value!r} is not a forward statement", out.line)
            outputs.append(out.value)
        if s.outputs is None:
            user = [st for st in self.statements if not st.hidden and st.name != loss_name]
            outputs = [user[-1].name] if user else [loss_name]
        has_inputs = bool(s.inputs)
        for st in self.statements:
            reads = [self.base_array(r) for r in _read_bases(st.body)]
            st.batched = (has_inputs and st.name == loss_name) or any(a is not None and a.batched for a in reads)
            st.batched = st.batched and not isinstance(st.body, BatchSum)
            self.arrays[st.name].batched = st.batched
        while True:  # a recurrence reads later statements: batchedness settles in a few passes
            changed = False
            for st in self.statements:
                reads = [self.base_array(r) for r in _read_bases(st.body)]
                b = (has_inputs and st.name == loss_name) or any(a is not None and a.batched for a in reads)
                b = b and not isinstance(st.body, BatchSum)
                if b != st.batched:
                    st.batched = self.arrays[st.name].batched = b
                    changed = True
            if not changed:
                break
        prog = Program(s, dict(s.dims), self.arrays, constants, self.statements, outputs, loss_name, self.names)
        prog.recurrences = self.recurrences
        prog.adjoint = {name: self.names.take(f"{name}_bar") for name in self.arrays}
        return prog

    def base_array(self, base) -> Array | None:
        return array_of(self.arrays, base)

    # -- recurrences -----------------------------------------------------------------------------------
    def declare_carried(self) -> dict:
        """Statements with `init:` carry state over their first index. They are declared before any statement is
        built, so the statements of one step (earlier in the list) can read them at an earlier step."""
        out = {}
        for decl in self.spec.forward:
            if decl.init is None:
                continue
            m = re.match(rf"^({_NAME})\s*\[(.*)\]$", decl.lhs.value.strip())
            if not m or decl.shape is None:
                raise self.err(
                    "a statement with init: is a recurrence over its first index: write it in index form "
                    "with a shape, e.g. h[t, j]: {shape: [T, H], expr: ..., init: 0}",
                    decl.line,
                )
            name = m.group(1)
            self.declare(name, decl.line)
            shape = self.shape(decl.shape, name)
            if len(shape) < 1:
                raise self.err(f"recurrence {name} needs a time axis", decl.line)
            init = self.parse_state_init(decl.init, name, shape[1:])
            arr = Array(name, shape, make_base(name, shape), ArrayKind.STMT, False, decl.line)
            self.arrays[name] = Array(name, shape, arr.base, ArrayKind.STMT, False, -1)
            out[name] = (init, decl.line, arr)
        return out

    def parse_state_init(self, t: Text, name: str, shape: tuple[int, ...]):
        text = str(t.value).strip()
        try:
            node = ast.parse(text, mode="eval").body
        except SyntaxError:
            node = None
        num = _number(node) if node is not None else None
        if num is not None:
            return num
        if isinstance(node, ast.Name) and node.id in self.spec.constants and not shape:
            return node.id
        if (
            isinstance(node, ast.Name)
            and node.id in self.arrays
            and self.arrays[node.id].kind in (ArrayKind.PARAM, ArrayKind.INPUT)
        ):
            if self.arrays[node.id].shape != shape:
                raise self.err(
                    f"init {node.id} of {name} has shape {list(self.arrays[node.id].shape)}, but one "
                    f"step of {name} has shape {list(shape)}",
                    t.line,
                )
            return node.id
        raise self.err(
            f"init of {name} must be a number or the name of a param or input of shape {list(shape)}", t.line
        )

    def _init_read(self, init, rest: tuple) -> sympy.Expr:
        if isinstance(init, float):
            return sympy.Float(init) if init != int(init) else sympy.Integer(int(init))
        if init in self.constants:
            return self.constants[init][1]
        base = self.arrays[init].base
        return base[rest] if rest else base

    def recurrent_reads(self, name: str, syms: tuple, shape: tuple, expr: sympy.Expr, line: int) -> sympy.Expr:
        """A read of a carried statement before its first step gives its init; a read of one not yet computed
        (this statement itself, or a later one) must be at an earlier step, and makes a recurrence region."""
        if not self.carried:
            return expr
        defined = {st.name for st in self.statements}
        subs = {}
        for r in expr.atoms(Indexed):
            arr = self.base_array(r.base)
            if arr is None or arr.name not in self.carried:
                continue
            i0 = r.indices[0]
            pending = arr.name == name or arr.name not in defined
            if pending:
                step = self._step_offset(i0)
                varying = step is None or (bool(syms) and step[0] != syms[0] and step[0] not in syms)
                if varying or step is None or step[1] < 1:
                    shown = ", ".join(
                        sympy.sstr(ix.xreplace({d: Symbol(d.name) for d in ix.free_symbols})) for ix in r.indices
                    )
                    why = (
                        "a recurrence reads its state at a constant lag, h[t - 1, ...] or h[t - c, ...] with c >= 1; "
                        "a read at a step that varies within the step (a sum over past steps) is not supported"
                        if varying
                        else "a recurrence reads its state at an earlier step, h[t - 1, ...]"
                    )
                    raise self.err(f"{name} reads {arr.name}[{shown}] before it is computed; {why}", line)
                if not syms or syms[0] != step[0]:
                    raise self.err(
                        f"{name} reads {arr.name} at step {step[0]} - {step[1]}, so its first index "
                        f"must be the step index {step[0]}",
                        line,
                    )
                self.regions.append((self._region_start, arr.name))
            bounds = dict(self._scope.bounds)
            bounds.update({sym: (Integer(0), Integer(n - 1)) for sym, n in zip(syms, shape, strict=True)})
            lo = interval(i0, bounds)[0]
            if lo < 0:
                init = self.carried[arr.name][0]
                subs[r] = sympy.Piecewise((self._init_read(init, tuple(r.indices[1:])), i0 < 0), (r, True))
        return expr.xreplace(subs) if subs else expr

    @staticmethod
    def _step_offset(i0: sympy.Expr):
        """(t, c) when the index is t - c for an index symbol t and an integer c, else None."""
        c, rest = sympy.expand(i0).as_coeff_Add()
        if isinstance(rest, Symbol) and rest.is_integer and c.is_Integer:
            return rest, int(-c)
        return None

    def finish_recurrences(self) -> list[Recurrence]:
        if not self.regions:
            for name, (_, line, _) in self.carried.items():
                raise self.err(f"{name} has init: but nothing reads it at an earlier step", line)
            return []
        pos = {st.name: n for n, st in enumerate(self.statements)}
        spans = sorted((start, pos[end]) for start, end in self.regions)
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out = []
        for a, b in merged:
            members, hoisted, time_of, pending = [], [], {}, []
            size = None
            for st in self.statements[a : b + 1]:
                if st.hidden:
                    pending.append(st)
                    continue
                if not st.indices:
                    raise self.err(
                        f"statement {st.name} sits inside a recurrence but does not run over its step "
                        f"index; move it before or after the recurrence",
                        st.line,
                    )
                t = st.indices[0]
                if size is None:
                    size = st.shape[0]
                if st.shape[0] != size:
                    raise self.err(
                        f"statement {st.name} runs over {st.shape[0]} steps inside a recurrence of {size}", st.line
                    )
                for h in pending:
                    if t in h.indices:
                        members.append(h.name)
                        time_of[h.name] = t
                    else:
                        hoisted.append(h.name)
                pending = []
                members.append(st.name)
                time_of[st.name] = t
            carried = {n: self.carried[n][0] for n in members if n in self.carried}
            assert size is not None  # the span ends at a carried statement, which is not hidden
            rec = Recurrence(size, members, time_of, hoisted, carried)
            self._check_steps(rec)
            out.append(rec)
        unused = set(self.carried) - {n for r in out for n in r.carried}
        for name in unused:
            raise self.err(f"{name} has init: but nothing reads it at an earlier step", self.carried[name][1])
        return out

    def _check_steps(self, rec: Recurrence) -> None:
        """Inside a step a statement reads the step's earlier statements at t, and any member at an earlier step;
        never a later step (it is not computed yet)."""
        order = {n: k for k, n in enumerate(rec.members)}
        by_base = {self.arrays[n].base: n for n in rec.members}
        for st in self.statements:
            if st.name not in order:
                continue
            t = rec.time_of[st.name]
            for r in st.body.atoms(Indexed):
                target = by_base.get(r.base)
                if target is None:
                    continue
                idx = r.indices[self._time_axis(target, rec)]
                step = self._step_offset(idx)
                need = 0 if order[target] < order[st.name] else 1
                if step is None or step[0] != t or step[1] < need:
                    raise self.err(
                        f"{st.name} reads {target} at step {idx}; inside a recurrence over {t} a "
                        f"statement reads the current step ({t}) of earlier statements and an earlier "
                        f"step ({t} - 1) of itself and later ones",
                        st.line,
                    )

    def _time_axis(self, name: str, rec: Recurrence) -> int:
        st = next(x for x in self.statements if x.name == name)
        return st.indices.index(rec.time_of[name])

    def parse_init(self, t: Text, pname: str) -> tuple:
        text = str(t.value).strip()
        try:
            node = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise self.err(f"init {text[:60]!r} of {pname} is not valid", t.line) from None
        num = _number(node)
        nums = [num] + [_number(a) for a in getattr(node, "args", [])]
        if any(v is not None and not math.isfinite(v) for v in nums):
            raise self.err(f"init {text[:40]!r} of {pname} is not a finite float64 number", t.line)
        if num is not None:
            return ("constant", (num,))
        if isinstance(node, ast.Name) and node.id in INITS:
            if node.id in ("normal", "uniform"):
                raise self.err(f"init {node.id} of {pname} needs arguments, e.g. {node.id}(0, 0.1)", t.line)
            return (node.id, ())
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("normal", "uniform"):
            args = [_number(a) for a in node.args]
            if len(args) != 2 or any(a is None for a in args) or node.keywords:
                raise self.err(f"init {node.func.id} of {pname} takes two numbers, e.g. {node.func.id}(0, 0.1)", t.line)
            a0, a1 = args
            assert a0 is not None and a1 is not None  # checked just above
            if node.func.id == "normal" and a1 < 0:
                raise self.err(f"init normal of {pname} needs a non-negative std", t.line)
            if node.func.id == "uniform" and a1 < a0:
                raise self.err(f"init uniform of {pname} needs lo <= hi", t.line)
            return (node.func.id, tuple(args))
        raise self.err(f"unknown init {text!r} for {pname} (expected a number, {', '.join(INITS)})", t.line)

    def parse_functions(self) -> dict:
        out = {}
        for sig, body in self.spec.functions:
            m = _FUNC_SIG.match(sig.value)
            if not m:
                raise self.err(f"function signature {sig.value!r} must look like name(a, b)", sig.line)
            name = m.group(1)
            params = tuple(p.strip() for p in (m.group(2) or "").split(",") if p.strip())
            if not params:
                raise self.err(f"function {name} needs at least one parameter", sig.line)
            if len(set(params)) != len(params):
                raise self.err(f"function {name} repeats a parameter name", sig.line)
            if name.startswith("_"):
                raise self.err(f"function name {name!r} must not start with '_' (reserved for symgrad)", sig.line)
            if (
                name in ELEMENTWISE
                or name in LIBRARY
                or name in ("sum", "Sum", "mean", "Piecewise")
                or name in self.arrays
                or name in self.spec.dims
                or name in self.spec.constants
            ):
                raise self.err(f"function name {name!r} is already taken", sig.line)
            try:
                tree = parse_source(str(body.value))
            except ExprError as exc:
                raise self.err(str(exc), body.line) from None
            # A user function may only use its parameters, constants, dims and other functions.
            for sub in ast.walk(tree):
                if isinstance(sub, ast.Name) and not isinstance(getattr(sub, "ctx", None), ast.Store):
                    n = sub.id
                    called = any(isinstance(c, ast.Call) and c.func is sub for c in ast.walk(tree))
                    if not called and n not in params and n not in self.spec.constants and n not in self.spec.dims:
                        raise self.err(f"function {name} uses {n!r}, which is not one of its parameters", body.line)
            out[name] = (params, tree)
        lines = {m.group(1): sig.line for sig, _ in self.spec.functions if (m := _FUNC_SIG.match(sig.value))}
        calls = {
            f: [c.func.id for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]
            for f, (_, tree) in out.items()
        }

        def visit(f: str, path: list[str]) -> None:  # a cycle of user functions would expand without end
            if f in path:
                cycle = " -> ".join([*path[path.index(f) :], f])
                raise self.err(f"function {f} calls itself ({cycle}): functions cannot be recursive", lines[f])
            for g in calls.get(f, ()):
                if g in out:
                    visit(g, [*path, f])

        for f in out:
            visit(f, [])
        return out

    def scope(self, later: set[str], current: str | None = None) -> Scope:
        # one ArrayRef per array, kept across statements (arrays only grow): rebuilding all per statement was
        # quadratic in the spec's size; scopes only read it
        refs = self.__dict__.setdefault("_refs", {})
        if len(refs) != len(self.arrays):
            for n, a in self.arrays.items():
                if n not in refs:
                    refs[n] = ArrayRef(n, a.shape, a.base)
        consts = {n: sym for n, (_, sym) in self.constants.items()}
        return Scope(refs, dict(self.spec.dims), consts, self.functions, later, current)

    def expression(
        self,
        text: str,
        line: int,
        later: set[str],
        lhs: list[str] | None,
        shape: tuple[int, ...] | None,
        current: str | None = None,
    ) -> TExpr:
        scope = self.scope(later, current)
        try:
            tree = parse_source(str(text))
            _refuse_private_names(tree)
            fixed = dict(zip(lhs, shape, strict=True)) if lhs is not None and shape is not None else None
            collect_plain_uses(tree, scope, fixed)
            for idx in lhs or ():
                scope.index(idx)
            result = Builder(scope).build(tree)
            check_ranges(result.expr, scope, self.arrays, set(getattr(self, "carried", {})))
        except ExprError as exc:
            raise self.err(str(exc), line) from None
        except RecursionError:
            raise self.err("expression is nested too deeply", line) from None
        self._scope = scope
        return result

    def statement(self, decl, later: set[str]) -> None:
        lhs_text = decl.lhs.value.strip()
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[(.*)\])?$", lhs_text)
        if not m:
            raise self.err(f"statement name {lhs_text!r} must be `name` or `name[i, j]`", decl.line)
        name = m.group(1)
        if name.startswith("_"):
            raise self.err(f"statement name {name!r} must not start with '_'", decl.line)
        if name in self.carried and self.arrays[name].line == -1:
            del self.arrays[name]  # the placeholder that let earlier statements of the recurrence read it
        self.declare(name, decl.line)
        if name in self.carried:
            self.arrays[name] = self.carried[name][2]
        declared = self.shape(decl.shape, name) if decl.shape is not None else None
        if m.group(2) is None:
            body = self.expression(decl.expr.value, decl.expr.line, later, lhs=None, shape=None, current=name)
            if body.named:
                free = ", ".join(sorted(s.name for s in body.named))
                raise self.err(
                    f"index {free} is free on the right of {name} but the statement has no indices; "
                    f"write {name}[{free}]: ... or sum over it",
                    decl.expr.line,
                )
            shape = tuple(n for _, n in body.axes)
            if declared is not None and declared != shape:
                raise self.err(
                    f"{name} is declared with shape {list(declared)} but its expression has shape {list(shape)}",
                    decl.line,
                )
            indices = tuple(s for s, _ in body.axes)
            expr = self.recurrent_reads(name, indices, shape, body.expr, decl.expr.line)
            self.add_statement(name, indices, shape, expr, decl.line)
            return
        idx_names = [p.strip() for p in m.group(2).split(",")]
        plain = all(re.match(rf"^{_NAME}$", p) for p in idx_names)
        if not plain or len(set(idx_names)) != len(idx_names):
            raise self.err(f"indices of {name} must be distinct plain names, got [{m.group(2)}]", decl.line)
        for p in idx_names:
            if p in self.arrays or p in self.spec.dims or p in self.spec.constants:
                raise self.err(f"index {p!r} of {name} is already the name of something else", decl.line)
            builtin = (
                (keyword.iskeyword(p) and "a Python keyword")
                or ((p in ELEMENTWISE or p in self.functions) and "a built-in function")
                or (p in LIBRARY and "a library function")
                or (p in CONSTANTS and "a built-in constant")
                or (p in ("sum", "Sum", "mean", "Piecewise") and "a built-in")
            )
            if builtin:
                raise self.err(f"index {p!r} of {name} is {builtin}; choose another name", decl.line)
        if declared is not None and len(declared) != len(idx_names):
            raise self.err(f"{name} has {len(idx_names)} indices but its shape has {len(declared)} sizes", decl.line)
        body = self.expression(decl.expr.value, decl.expr.line, later, lhs=idx_names, shape=declared, current=name)
        scope = self._scope
        if body.axes:
            raise self.err(
                f"{name}[{', '.join(idx_names)}] is in index form but its expression is a whole array "
                f"of shape {[n for _, n in body.axes]}; index it",
                decl.expr.line,
            )
        syms = tuple(scope.index(p) for p in idx_names)
        extra = body.named - set(syms)
        if extra:
            free = ", ".join(sorted(s.name for s in extra))
            raise self.err(
                f"index {free} is free on the right of {name} but not on the left; sum over it or add it",
                decl.expr.line,
            )
        if declared is None:
            missing = [p for p in idx_names if p not in scope.ranges]
            if missing:
                raise self.err(
                    f"cannot infer the range of index {missing[0]} of {name}: no plain use fixes it; "
                    f"give the statement a shape in long form",
                    decl.line,
                )
            declared = tuple(scope.ranges[p] for p in idx_names)
        expr = self.recurrent_reads(name, syms, declared, body.expr, decl.expr.line)
        self.add_statement(name, syms, declared, expr, decl.line)

    def add_statement(self, name: str, indices, shape, body, line: int, hidden: bool = False) -> None:
        if not hidden:
            self._current = name
        scope = getattr(self, "_scope", None)
        bounds = dict(scope.bounds) if scope else {}
        for sym, n in zip(indices, shape, strict=True):
            bounds[sym] = (Integer(0), Integer(n - 1))
        body = self.unshadow(body, indices, bounds)
        try:
            body = self.normalize(logsumexp_rewrite(body), bounds, line)
        except ExprError as exc:  # a form normalisation cannot store: the spec's line, not a traceback
            raise self.err(str(exc), line) from None
        base = make_base(name, shape)
        self.arrays[name] = Array(name, tuple(shape), base, ArrayKind.STMT, False, line)
        self.statements.append(Statement(name, tuple(indices), tuple(shape), body, line, hidden=hidden, bounds=bounds))

    def unshadow(self, body: sympy.Expr, indices, bounds: dict) -> sympy.Expr:
        """Every reduction variable gets a name nothing around it has. Whole-array notation binds an axis's own
        index, so `z - mean(z)` is `z[i] - Sum(z[i], (i, 0, 2))/3`: correct SymPy (the inner i is a new variable),
        but the page printed `z_i - sum_i z_i / 3`, and the derivation and kernels, which name loops by their
        symbols, mixed the two i's up (abs(standardize(z)) was wrong by 50%: fuzz, tests/regressions/
        abs_of_standardize_rebinds_its_index.yaml). Renamed variables come from the spec-proof allocator."""

        def walk(e: sympy.Basic, scope: frozenset[str]) -> sympy.Basic:
            if not e.args or not e.has(Sum, LogSumExp):
                return e
            if isinstance(e, Sum | LogSumExp):
                fn, inner = e.function, set(scope)
                limits = list(reversed(e.limits))  # outermost first: a later limit may read an earlier one
                for k, (v, lo, hi) in enumerate(limits):
                    if v.name in inner:
                        name = self.names.take(v.name)
                        while name in inner or name in used:  # the allocator knows the spec's names, not the axis
                            name = self.names.take(v.name)  # indices made while parsing (`i` of a whole array)
                        new = Symbol(name, integer=True)
                        bounds[new] = (lo, hi)
                        if scope_bounds is not None:
                            scope_bounds[new] = (lo, hi)
                        fn = fn.xreplace({v: new})
                        limits[k + 1 :] = [
                            (q, a.xreplace({v: new}), b.xreplace({v: new})) for q, a, b in limits[k + 1 :]
                        ]
                        limits[k] = (new, lo, hi)
                        v = new
                    inner.add(v.name)
                return type(e)(walk(fn, frozenset(inner)), *reversed(limits))
            args = tuple(walk(a, scope) for a in e.args)
            if args == e.args:
                return e
            try:
                return e.func(*args)
            except (TypeError, ValueError):  # Max of constants SymPy cannot order: kept unevaluated, as built
                return e.func(*args, evaluate=False)

        scope_bounds = getattr(getattr(self, "_scope", None), "bounds", None)
        taken = frozenset(v.name for v in body.free_symbols) | frozenset(v.name for v in indices)
        used = {v.name for v in body.atoms(Symbol)} | set(taken)
        return walk(body, taken)

    # -- normal form -----------------------------------------------------------------------------------
    def normalize(self, body: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        if isinstance(body, LogSumExp):
            return LogSumExp(self.hoist_all(body.function, bounds, line), *body.limits)
        if isinstance(body, BatchSum):  # a statement of its own, like LogSumExp: its summand is per sample
            return BatchSum(self.hoist_all(body.args[0], bounds, line))
        terms = sympy.Add.make_args(sympy.Add(*[self.linear(t, bounds, line) for t in sympy.Add.make_args(body)]))
        return _merge_like_sums([self.hoist_invariant(t, bounds, line) if isinstance(t, Sum) else t for t in terms])

    def hoist_invariant(self, t: Sum, bounds: dict, line: int) -> sympy.Expr:
        """`Σ_j W[i, j] f(s[j])`: a nonlinear factor beside the product's plain read is stored when it does not vary
        with every loop index, so it is computed once per j instead of once per (i, j), and the sum becomes a plain
        product (one BLAS call) however the statements are split: `Wo @ tanh(Wd @ z + bd)` is as fast as two."""
        t = self.contract_chain(t, bounds, line)
        if not isinstance(t, Sum) or not isinstance(t.function, sympy.Mul):
            return t
        g = t.function
        reads = [f for f in g.args if isinstance(f, Indexed) and all(isinstance(i, Symbol) for i in f.indices)]
        if not reads:
            return t
        read = max(reads, key=lambda f: len(f.indices))
        rest = sympy.Mul(*[f for f in g.args if f is not read])
        inner = dict(bounds)
        for v, lo, hi in t.limits:
            inner[v] = (lo, hi)
        loop_vars = {s for s in g.free_symbols | {lim[0] for lim in t.limits} if s.is_integer and s in inner}
        free = {s for s in rest.free_symbols if s.is_integer and s != BATCH_SIZE}
        nonlinear = bool(rest.atoms(sympy.Function)) or any(not p.exp.is_Integer for p in rest.atoms(sympy.Pow))
        if not nonlinear or not free or free >= loop_vars or _has_reduction(rest) or any(s not in inner for s in free):
            return t
        return Sum(read * self.hoist(rest, inner, line), *t.limits)

    def contract_chain(self, t: Sum, bounds: dict, line: int) -> sympy.Expr:
        """`Σ_{u,d} A[t,u] V[u,d] Wo[d,e]` ((A @ V) @ Wo in one statement) is contracted pairwise, as written,
        through stored products, instead of one loop nest over every index (T·T·D·D work for T·D·(T + D))."""
        while isinstance(t, Sum) and len(t.limits) >= 2 and isinstance(t.function, sympy.Mul):
            factors = [f for f in t.function.args if isinstance(f, Indexed)]
            coeff = sympy.Mul(*[f for f in t.function.args if not isinstance(f, Indexed)])
            if (
                len(factors) < 3
                or coeff.free_symbols & set(self._array_symbols())
                or coeff.has(Indexed)
                or any(not all(isinstance(i, Symbol) for i in f.indices) for f in factors)
                or any(not (lo.is_Integer and hi.is_Integer) for _, lo, hi in t.limits)
            ):
                return t
            inner = dict(bounds)
            for v, lo, hi in t.limits:
                inner[v] = (lo, hi)
            best = None
            for v, lo, hi in t.limits:
                users = [f for f in factors if v in f.indices]
                if len(users) != 2:
                    continue
                out_idx = (set(users[0].indices) | set(users[1].indices)) - {v}
                if best is None or len(out_idx) < best[0]:
                    best = (len(out_idx), v, lo, hi, users)
            if best is None:
                return t
            _, v, lo, hi, users = best
            stored = self.hoist(Sum(users[0] * users[1], (v, lo, hi)), inner, line)
            rest = [f for f in factors if f is not users[0] and f is not users[1]]
            t = Sum(coeff * sympy.Mul(*rest) * stored, *[lim for lim in t.limits if lim[0] != v])
        return t

    def _array_symbols(self) -> list:
        return [a.base for a in self.arrays.values() if not a.shape]

    def linear(self, t: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        """Rewrite one additive term so that reductions appear only as top-level Sum terms."""
        if not _has_reduction(t):
            return t
        if isinstance(t, Sum):
            inner = self.linear_add(t.function, bounds, line)
            return sympy.Add(*[_merge(u, t.limits) for u in sympy.Add.make_args(inner)], evaluate=False)
        if isinstance(t, sympy.Mul):
            red = [f for f in t.args if _has_reduction(f)]
            if len(red) == 1 and isinstance(red[0], Sum):
                rest = sympy.Mul(*[f for f in t.args if f is not red[0]])
                inner = self.linear(red[0], bounds, line)
                return sympy.Add(*[_scale(u, rest) for u in sympy.Add.make_args(inner)], evaluate=False)
        return self.hoist_all(t, bounds, line)

    def linear_add(self, e: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        # flat: an unevaluated Add inside another would hide its Sums from the caller (a Sum nested in a Sum's
        # body reached the printer as builtins.sum; found by the differential fuzz)
        terms = [u for t in sympy.Add.make_args(e) for u in sympy.Add.make_args(self.linear(t, bounds, line))]
        return sympy.Add(*terms, evaluate=False)

    def hoist_all(self, e: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        """Replace every outermost reduction inside e by a read of a new hidden statement that stores it.

        A function's whole argument is stored when it holds a reduction, so relu(W @ x + b) stores the textbook
        pre-activation s = W x + b rather than only the product.
        """
        if isinstance(e, Sum | LogSumExp | BatchSum):
            return self.hoist(e, bounds, line)
        if not _has_reduction(e):
            return e
        if isinstance(e, sympy.Function):
            return e.func(
                *[
                    self.hoist(a, bounds, line)
                    if isinstance(a, sympy.Add) and _has_reduction(a)
                    else self.hoist_all(a, bounds, line)
                    for a in e.args
                ]
            )
        return e.func(*[self.hoist_all(a, bounds, line) for a in e.args])

    def hoist(self, r: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        """Store r once: the same reduction written twice (swish(W @ x) = s * sigmoid(s)) is one hidden statement,
        also when its free indices have other names (`W[q, j] x[j]` in one place, `W[i, j] x[j]` in another)."""
        # the batch size |B| (batch_mean's divisor) is a number of the mini-batch, not an index of the stored array
        free = sorted((s for s in r.free_symbols if s.is_integer and s != BATCH_SIZE), key=lambda s: s.name)
        canon = [Symbol(f"_c{n}", integer=True) for n in range(len(free))]
        orders = itertools.permutations(free) if len(free) <= 3 else [tuple(free)]
        for order in orders:
            key = self._hoist_key(r, order, canon, bounds)
            if key in self._hoisted:
                base = self._hoisted[key]
                return base[tuple(order)] if order else base
        key = self._hoist_key(r, tuple(free), canon, bounds)
        self._hoisted[key] = self._hoist_new(r, free, bounds, line)
        return self._hoisted[key][tuple(free)] if free else self._hoisted[key]

    @staticmethod
    def _hoist_key(r: sympy.Expr, order, canon, bounds: dict) -> tuple:
        ren = dict(zip(order, canon, strict=True))
        bound = [
            lim[0] for node in sympy.preorder_traversal(r) if isinstance(node, Sum | LogSumExp) for lim in node.limits
        ]
        ren.update({v: Symbol(f"_k{n}", integer=True) for n, v in enumerate(dict.fromkeys(bound))})
        return r.xreplace(ren), tuple(interval(s, bounds) for s in order)  # same maths over the same index ranges

    def _hoist_new(self, r: sympy.Expr, free: list, bounds: dict, line: int):
        """A hidden statement `name[free] = r`; returns its base (read it at the free indices)."""
        shape = []
        for s in free:
            lo, hi = interval(s, bounds)
            if lo < 0:
                raise self.err(f"index {s} can be negative where a reduction is stored", line)
            shape.append(int(hi) + 1)
        name = self.temp_name(r)
        # A Dummy index (from whole-array notation) becomes a plain index whose name nothing else in r uses.
        used = {s.name for s in r.free_symbols} | {v.name for v in r.atoms(Symbol)}
        new_idx = []
        for s in free:
            if isinstance(s, sympy.Dummy):
                stem = s.name.lstrip("_") or "i"
                n, nm = 1, stem
                while nm in used:
                    n += 1
                    nm = f"{stem}{n}"
                used.add(nm)
                new_idx.append(Symbol(nm, integer=True))
            else:
                new_idx.append(s)
        idx = tuple(new_idx)
        body = r.xreplace(dict(zip(free, idx, strict=True)))
        inner_bounds = dict(bounds)
        for s, i in zip(free, idx, strict=True):
            inner_bounds[i] = (Integer(0), Integer(shape[free.index(s)] - 1))
        self.add_statement(name, idx, tuple(shape), body, line, hidden=True)
        self.statements[-1].bounds.update(inner_bounds)
        return self.arrays[name].base

    def temp_name(self, r: sympy.Expr) -> str:
        """Readable names for stored reductions: s_h for h's pre-activation, lse_z for logsumexp(z)."""
        reads = sorted({str(i.base) for i in r.atoms(Indexed)})
        if isinstance(r, LogSumExp):
            stem = "lse_" + (reads[0] if len(reads) == 1 else "t")
        elif not _has_reduction(r):
            stem = "a_" + getattr(self, "_current", "t")  # a stored activation beside a product
        else:
            stem = "s_" + getattr(self, "_current", "t")
        return self.names.take(stem)


def _spec_identifiers(spec: Spec) -> set[str]:
    """Every identifier the spec text mentions: declared names, statement names and indices, function names and
    parameters, and every name inside every expression, so no name the compiler makes can equal one of them."""
    out = set(spec.dims) | set(spec.constants) | set(spec.inputs) | set(spec.params)
    for decl in spec.forward:
        out |= identifiers(str(decl.lhs.value).replace("[", "(").replace("]", ")"))
        out |= identifiers(decl.expr.value)
    if spec.loss is not None:
        out |= identifiers(spec.loss.value)
    for sig, body in spec.functions:
        out |= identifiers(sig.value) | identifiers(body.value)
    return out


def _refuse_private_names(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ExprError(f"name {node.id!r} must not start with '_' (reserved for symgrad)")


def _merge(u: sympy.Expr, limits) -> sympy.Expr:
    if isinstance(u, Sum):
        return Sum(u.function, *u.limits, *limits)
    return Sum(u, *limits)


def _scale(u: sympy.Expr, factor: sympy.Expr) -> sympy.Expr:
    if isinstance(u, Sum):
        return Sum(factor * u.function, *u.limits)
    return factor * u


def logsumexp_rewrite(expr: sympy.Expr) -> sympy.Expr:
    """Named numeric rewrite: log(Σ exp(f)) written by hand becomes LogSumExp, which is evaluated max-shifted (no
    overflow at f = 1e4) and differentiated through its stored value, exactly like the library's logsumexp."""

    def is_lse(e) -> bool:
        return isinstance(e, sympy.log) and isinstance(e.args[0], Sum) and isinstance(e.args[0].function, sympy.exp)

    return expr.replace(is_lse, lambda e: LogSumExp(e.args[0].function.args[0], *e.args[0].limits))


def _merge_like_sums(terms) -> sympy.Expr:
    """Sum terms over the same ranges become one Sum, so each loop nest is run once (and read once)."""
    groups: dict = {}
    plain = []
    for t in terms:
        if not isinstance(t, Sum):
            plain.append(t)
            continue
        dummies = [lim[0] for lim in t.limits]
        canon = {d: Symbol(f"_c{n}", integer=True) for n, d in enumerate(dummies)}
        key = tuple((lim[1].xreplace(canon), lim[2].xreplace(canon)) for lim in t.limits)
        if key in groups:
            first = groups[key]
            ren = {d: f[0] for d, f in zip(dummies, first.limits, strict=True)}
            groups[key] = Sum(first.function + t.function.xreplace(ren), *first.limits)
        else:
            groups[key] = t
    return sympy.Add(*plain, *groups.values())


def _has_reduction(e: sympy.Expr) -> bool:
    return e.has(Sum) or e.has(LogSumExp) or e.has(BatchSum)


def _read_bases(e: sympy.Expr) -> set:
    out = {i.base for i in e.atoms(Indexed)}
    out |= {s for s in e.atoms(Symbol) if not s.is_integer}
    return out


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        try:
            return float(node.value)
        except OverflowError:  # a 400-digit integer: refused by the caller as not finite
            return math.inf
    return None


def interval(e: sympy.Expr, bounds: dict) -> tuple[int, int]:
    """Smallest and largest value of an affine index expression, given each index's (lo, hi) bounds (which may be
    Max/Min of affine ones). Each index ranges independently, so this is a safe over-estimate; check_ranges refines
    it exactly where bounds are correlated (padding)."""
    if isinstance(e, sympy.Max | sympy.Min):
        parts = [interval(a, bounds) for a in e.args]
        pick = max if isinstance(e, sympy.Max) else min
        return pick(p[0] for p in parts), pick(p[1] for p in parts)
    e = sympy.expand(e)
    if e.is_Integer:
        return int(e), int(e)
    lo = hi = 0
    for term in sympy.Add.make_args(e):
        coeff, rest = term.as_coeff_Mul()
        if rest == 1:
            lo += int(coeff)
            hi += int(coeff)
            continue
        if rest not in bounds:
            raise ExprError(f"index {rest} has no known range")
        blo, bhi = bounds[rest]
        a = interval(blo, bounds)[0]
        b = interval(bhi, bounds)[1]
        c = int(coeff)
        lo += min(c * a, c * b)
        hi += max(c * a, c * b)
    return lo, hi


def _exact_interval(ix: sympy.Expr, bounds: dict, limit: int = 200_000) -> tuple[int, int] | None:
    """Min and max of an index over the iteration domain itself, enumerating the indices it involves (and those
    their bounds depend on), so `x[i + u - 1]` with u from Max(0, 1 - i) is seen never to leave x. None when the
    domain is too large to enumerate (the caller keeps its over-estimate)."""
    order: list = []

    def visit(v, seen=()):
        if v in order or v in seen:
            return
        if v not in bounds:
            raise KeyError(v)
        lo, hi = bounds[v]
        for dep in sorted(lo.free_symbols | hi.free_symbols, key=str):
            visit(dep, seen + (v,))
        order.append(v)

    try:
        for v in sorted(ix.free_symbols, key=str):
            visit(v)
    except KeyError:
        return None
    fns = {v: (_int_fn(bounds[v][0]), _int_fn(bounds[v][1])) for v in order}
    target = _int_fn(ix)
    best = [None, None]
    count = [0]

    def walk(k: int, env: dict) -> bool:
        if k == len(order):
            val = target(env)
            best[0] = val if best[0] is None else min(best[0], val)
            best[1] = val if best[1] is None else max(best[1], val)
            count[0] += 1
            return count[0] <= limit
        v = order[k]
        lo, hi = fns[v][0](env), fns[v][1](env)
        for n in range(lo, hi + 1):
            env[v] = n
            if not walk(k + 1, env):
                return False
        env.pop(v, None)
        return True

    if not walk(0, {}) or best[0] is None:
        return None
    return best[0], best[1]


def _int_fn(e: sympy.Expr):
    """An integer function of index values for an affine/Max/Min expression (a tree walk: nothing is evaluated)."""
    if e.is_Integer:
        n = int(e)
        return lambda env: n
    if isinstance(e, Symbol):
        return lambda env: env[e]
    args = [_int_fn(a) for a in e.args]
    if isinstance(e, sympy.Add):
        return lambda env: sum(f(env) for f in args)
    if isinstance(e, sympy.Mul):

        def mul(env):
            out = 1
            for f in args:
                out *= f(env)
            return out

        return mul
    if isinstance(e, sympy.Max):
        return lambda env: max(f(env) for f in args)
    if isinstance(e, sympy.Min):
        return lambda env: min(f(env) for f in args)
    raise ExprError(f"index expression {e} is not affine")


def _unbounded_index(ix: sympy.Expr, bounds: dict) -> str:
    """The index, as the spec names it, whose range is unknown: ix itself may be bounded by one that is not."""
    todo, seen = list(ix.free_symbols), set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        if v not in bounds:
            return v.name
        todo.extend(s for b in bounds[v] for s in getattr(b, "free_symbols", ()))
    return str(ix)


def check_ranges(expr: sympy.Expr, scope: Scope, arrays: dict, carried: set | None = None) -> None:
    """Every read's affine index must stay inside its array over all index values (an error, not a wrap)."""
    bounds = dict(scope.bounds)
    for name, sym in scope.index_syms.items():
        if name in scope.ranges:
            bounds.setdefault(sym, (Integer(0), Integer(scope.ranges[name] - 1)))
    for read in expr.atoms(Indexed):
        arr = arrays.get(read.base.name)
        if arr is None or arr.base != read.base:
            continue
        for axis, ix in enumerate(read.indices):
            try:
                lo, hi = interval(ix, bounds)
            except ExprError:
                missing = _unbounded_index(ix, bounds)
                raise ExprError(
                    f"cannot infer the range of index {missing} in {read.base}[...]: use it plainly in a "
                    f"subscript or give the statement a shape in long form"
                ) from None
            low_ok = lo >= 0 or (axis == 0 and arr.name in (carried or ()))
            if not low_ok or hi > arr.shape[axis] - 1:
                exact = _exact_interval(ix, bounds)
                if exact is not None:
                    lo, hi = exact
                    low_ok = lo >= 0 or (axis == 0 and arr.name in (carried or ()))
            if not low_ok or hi > arr.shape[axis] - 1:
                shown = sympy.sstr(ix.xreplace({s: Symbol(s.name) for s in ix.free_symbols}))
                raise ExprError(
                    f"index out of range: {shown} in {arr.name}[...] takes values "
                    f"{lo}..{hi} but axis {axis} of {arr.name} has size {arr.shape[axis]}"
                )
