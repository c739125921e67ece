"""Graph stage: a validated Spec -> a `Program` of forward statements over index variables.

Every statement is `out[I] = body` with body in a normal form the derive and lower stages rely on:
`E0 + Σ_t Sum_{J_t}(g_t)` where E0 and every g_t contain no reduction, or a single `LogSumExp` (a reduction
statement of its own). A reduction that appears anywhere else (inside log, in a denominator) is hoisted into a
hidden statement of its own, so its value is stored for the backward pass instead of recomputed.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field

import sympy
from sympy import Indexed, Integer, Sum, Symbol

from symgrad.errors import SpecError
from symgrad.exprs import ArrayRef, Builder, ExprError, Scope, TExpr, collect_plain_uses, make_base, parse_source
from symgrad.library import ELEMENTWISE, INITS, LIBRARY, LogSumExp
from symgrad.spec import Spec, Text, load_spec

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
MAX_AXES = 16  # Python nests at most 20 blocks; batch + axes + reduction loops must fit
MAX_ELEMENTS = 2**31  # per array and sample: beyond this no buffer can be allocated anyway
_FUNC_SIG = re.compile(rf"^\s*({_NAME})\s*\(\s*({_NAME}(\s*,\s*{_NAME})*)?\s*\)\s*$")


@dataclass
class Array:
    """An input, param or statement value: its shape (per sample) and SymPy handle."""

    name: str
    shape: tuple[int, ...]
    base: object
    kind: str  # input | param | stmt
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

    @property
    def is_lse(self) -> bool:
        return isinstance(self.body, LogSumExp)


@dataclass
class Program:
    spec: Spec
    dims: dict[str, int]
    arrays: dict[str, Array]
    constants: dict[str, tuple[float, Symbol]]
    statements: list[Statement]
    outputs: list[str]
    loss_name: str

    @property
    def params(self) -> list[Array]:
        return [a for a in self.arrays.values() if a.kind == "param"]

    @property
    def inputs(self) -> list[Array]:
        return [a for a in self.arrays.values() if a.kind == "input"]

    @property
    def has_inputs(self) -> bool:
        return bool(self.inputs)

    def base_to_array(self) -> dict:
        return {a.base: a for a in self.arrays.values()}


def build_program(spec_or_path: Spec | str) -> Program:
    spec = spec_or_path if isinstance(spec_or_path, Spec) else load_spec(spec_or_path)
    return _GraphBuilder(spec).run()


class _GraphBuilder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.arrays: dict[str, Array] = {}
        self.statements: list[Statement] = []
        self.temp_count = 0

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
                raise self.err(f"size {v!r} in the shape of {what} is neither a positive integer nor a dim",
                               t.line) from None
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
        taken = (name in self.arrays and "an earlier " + self.arrays[name].kind) or \
                (name in s.dims and "a dim") or (name in s.constants and "a constant") or \
                (name in ELEMENTWISE and "a built-in function") or (name in LIBRARY and "a library function") or \
                (name in ("sum", "Sum", "mean", "Piecewise") and "a built-in")
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
            constants[name] = (value, Symbol(name, real=True))
        for name, decl in s.inputs.items():
            self.declare(name, decl.line)
            shape = self.shape(decl.shape, name)
            self.arrays[name] = Array(name, shape, make_base(name, shape), "input", True, decl.line, sample=decl.sample)
        for name, decl in s.params.items():
            self.declare(name, decl.line)
            shape = self.shape(decl.shape, name)
            init = self.parse_init(decl.init, name)
            self.arrays[name] = Array(name, shape, make_base(name, shape), "param", False, decl.line, init=init)
        functions = self.parse_functions()
        self.functions = functions
        self.constants = constants
        stmt_names = [d.lhs.value.split("[")[0].strip() for d in s.forward]
        for pos, decl in enumerate(s.forward):
            self.statement(decl, set(stmt_names[pos + 1:]))
        loss_name = "L" if "L" not in self.arrays else "L_"
        body = self.expression(s.loss.value, s.loss.line, set(), lhs=None, shape=None)
        if body.axes or body.named:
            shape = [n for _, n in body.axes]
            raise self.err(f"loss must be a scalar per sample, but it has shape {shape or 'with free indices'}; "
                           f"reduce it with sum(...)", s.loss.line)
        self.add_statement(loss_name, (), (), body.expr, s.loss.line)
        outputs = []
        for out in s.outputs or []:
            if out.value not in self.arrays or self.arrays[out.value].kind != "stmt":
                raise self.err(f"output {out.value!r} is not a forward statement", out.line)
            outputs.append(out.value)
        if s.outputs is None:
            user = [st for st in self.statements if not st.hidden and st.name != loss_name]
            outputs = [user[-1].name] if user else [loss_name]
        has_inputs = bool(s.inputs)
        for st in self.statements:
            reads = [self.base_array(r) for r in _read_bases(st.body)]
            st.batched = (has_inputs and st.name == loss_name) or any(a is not None and a.batched for a in reads)
            self.arrays[st.name].batched = st.batched
        return Program(s, dict(s.dims), self.arrays, constants, self.statements, outputs, loss_name)

    def base_array(self, base) -> Array | None:
        a = self.arrays.get(getattr(base, "name", str(base)))  # by name: a scan per read was quadratic
        return a if a is not None and a.base == base else None

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
            if node.func.id == "normal" and args[1] < 0:
                raise self.err(f"init normal of {pname} needs a non-negative std", t.line)
            if node.func.id == "uniform" and args[1] < args[0]:
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
            if name in ELEMENTWISE or name in LIBRARY or name in ("sum", "Sum", "mean", "Piecewise") \
                    or name in self.arrays or name in self.spec.dims or name in self.spec.constants:
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

    def expression(self, text: str, line: int, later: set[str], lhs: list[str] | None,
                   shape: tuple[int, ...] | None, current: str | None = None) -> TExpr:
        scope = self.scope(later, current)
        try:
            tree = parse_source(str(text))
            collect_plain_uses(tree, scope)
            if lhs is not None:
                for pos, idx in enumerate(lhs):
                    if shape is not None:
                        prev = scope.ranges.get(idx)
                        if prev is not None and prev != shape[pos]:
                            raise ExprError(f"index {idx} ranges over {prev} in the expression but the declared "
                                            f"shape gives {shape[pos]}")
                        scope.ranges[idx] = shape[pos]
                    scope.index(idx)
            result = Builder(scope).build(tree)
            check_ranges(result.expr, scope, self.arrays)
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
        self.declare(name, decl.line)
        declared = self.shape(decl.shape, name) if decl.shape is not None else None
        if m.group(2) is None:
            body = self.expression(decl.expr.value, decl.expr.line, later, lhs=None, shape=None, current=name)
            if body.named:
                free = ", ".join(sorted(s.name for s in body.named))
                raise self.err(f"index {free} is free on the right of {name} but the statement has no indices; "
                               f"write {name}[{free}]: ... or sum over it", decl.expr.line)
            shape = tuple(n for _, n in body.axes)
            if declared is not None and declared != shape:
                raise self.err(f"{name} is declared with shape {list(declared)} but its expression has shape "
                               f"{list(shape)}", decl.line)
            indices = tuple(s for s, _ in body.axes)
            self.add_statement(name, indices, shape, body.expr, decl.line)
            return
        idx_names = [p.strip() for p in m.group(2).split(",")]
        plain = all(re.match(rf"^{_NAME}$", p) for p in idx_names)
        if not plain or len(set(idx_names)) != len(idx_names):
            raise self.err(f"indices of {name} must be distinct plain names, got [{m.group(2)}]", decl.line)
        for p in idx_names:
            if p in self.arrays or p in self.spec.dims or p in self.spec.constants:
                raise self.err(f"index {p!r} of {name} is already the name of something else", decl.line)
        if declared is not None and len(declared) != len(idx_names):
            raise self.err(f"{name} has {len(idx_names)} indices but its shape has {len(declared)} sizes", decl.line)
        body = self.expression(decl.expr.value, decl.expr.line, later, lhs=idx_names, shape=declared, current=name)
        scope = self._scope
        if body.axes:
            raise self.err(f"{name}[{', '.join(idx_names)}] is in index form but its expression is a whole array "
                           f"of shape {[n for _, n in body.axes]}; index it", decl.expr.line)
        syms = tuple(scope.index(p) for p in idx_names)
        extra = body.named - set(syms)
        if extra:
            free = ", ".join(sorted(s.name for s in extra))
            raise self.err(f"index {free} is free on the right of {name} but not on the left; sum over it or add it",
                           decl.expr.line)
        if declared is None:
            missing = [p for p in idx_names if p not in scope.ranges]
            if missing:
                raise self.err(f"cannot infer the range of index {missing[0]} of {name}: no plain use fixes it; "
                               f"give the statement a shape in long form", decl.line)
            declared = tuple(scope.ranges[p] for p in idx_names)
        self.add_statement(name, syms, declared, body.expr, decl.line)

    def add_statement(self, name: str, indices, shape, body, line: int, hidden: bool = False) -> None:
        if not hidden:
            self._current = name
        bounds = dict(getattr(self, "_scope", None).bounds) if getattr(self, "_scope", None) else {}
        for sym, n in zip(indices, shape, strict=True):
            bounds[sym] = (Integer(0), Integer(n - 1))
        body = self.normalize(logsumexp_rewrite(body), bounds, line)
        base = make_base(name, shape)
        self.arrays[name] = Array(name, tuple(shape), base, "stmt", False, line)
        self.statements.append(Statement(name, tuple(indices), tuple(shape), body, line, hidden=hidden, bounds=bounds))

    # -- normal form -----------------------------------------------------------------------------------
    def normalize(self, body: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        if isinstance(body, LogSumExp):
            return LogSumExp(self.hoist_all(body.function, bounds, line), *body.limits)
        terms = sympy.Add.make_args(sympy.Add(*[self.linear(t, bounds, line) for t in sympy.Add.make_args(body)]))
        return _merge_like_sums(terms)

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
        return sympy.Add(*[self.linear(t, bounds, line) for t in sympy.Add.make_args(e)], evaluate=False)

    def hoist_all(self, e: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        """Replace every outermost reduction inside e by a read of a new hidden statement that stores it.

        A function's whole argument is stored when it holds a reduction, so relu(W @ x + b) stores the textbook
        pre-activation s = W x + b rather than only the product.
        """
        if isinstance(e, Sum | LogSumExp):
            return self.hoist(e, bounds, line)
        if not _has_reduction(e):
            return e
        if isinstance(e, sympy.Function):
            return e.func(*[self.hoist(a, bounds, line) if isinstance(a, sympy.Add) and _has_reduction(a)
                            else self.hoist_all(a, bounds, line) for a in e.args])
        return e.func(*[self.hoist_all(a, bounds, line) for a in e.args])

    def hoist(self, r: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        """Store r once: the same reduction written twice (swish(W @ x) = s * sigmoid(s)) is one hidden statement."""
        cache = self.__dict__.setdefault("_hoisted", {})
        free = sorted((s for s in r.free_symbols if s.is_integer), key=lambda s: s.name)
        key = (r, tuple((s, interval(s, bounds)) for s in free))  # same maths over the same index ranges
        if key not in cache:
            cache[key] = self._hoist_new(r, bounds, line)
        return cache[key]

    def _hoist_new(self, r: sympy.Expr, bounds: dict, line: int) -> sympy.Expr:
        free = sorted((s for s in r.free_symbols if s.is_integer), key=lambda s: s.name)
        shape = []
        for s in free:
            lo, hi = interval(s, bounds)
            if lo < 0:
                raise self.err(f"index {s} can be negative where a reduction is stored", line)
            shape.append(int(hi) + 1)
        name = self.temp_name(r)
        idx = tuple(Symbol(s.name, integer=True) if isinstance(s, sympy.Dummy) else s for s in free)
        body = r.xreplace(dict(zip(free, idx, strict=True)))
        inner_bounds = dict(bounds)
        for s, i in zip(free, idx, strict=True):
            inner_bounds[i] = (Integer(0), Integer(shape[free.index(s)] - 1))
        self.add_statement(name, idx, tuple(shape), body, line, hidden=True)
        self.statements[-1].bounds.update(inner_bounds)
        base = self.arrays[name].base
        return base[tuple(free)] if free else base


    def temp_name(self, r: sympy.Expr) -> str:
        """Readable names for stored reductions: s_h for h's pre-activation, lse_z for logsumexp(z)."""
        reads = sorted({str(i.base) for i in r.atoms(Indexed)})
        if isinstance(r, LogSumExp):
            stem = "lse_" + (reads[0] if len(reads) == 1 else "t")
        else:
            stem = "s_" + getattr(self, "_current", "t")
        name, n = stem, 1
        while name in self.arrays or name in self.spec.dims or name in self.spec.constants \
                or name == getattr(self, "_current", None):
            n += 1
            name = f"{stem}{n}"
        return name


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
    return e.has(Sum) or e.has(LogSumExp)


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
    """Smallest and largest value of an affine index expression, given each index's (lo, hi) bounds."""
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


def check_ranges(expr: sympy.Expr, scope: Scope, arrays: dict) -> None:
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
                missing = next(iter(ix.free_symbols), ix)
                raise ExprError(f"cannot infer the range of index {missing} in {read}: use it plainly in a "
                                f"subscript or give the statement a shape in long form") from None
            if lo < 0 or hi > arr.shape[axis] - 1:
                shown = sympy.sstr(ix.xreplace({s: Symbol(s.name) for s in ix.free_symbols}))
                raise ExprError(f"index out of range: {shown} in {arr.name}[...] takes values "
                                f"{lo}..{hi} but axis {axis} of {arr.name} has size {arr.shape[axis]}")
