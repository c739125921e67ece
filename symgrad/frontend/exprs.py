"""Parse stage, part 2: expression text -> SymPy, through an `ast` whitelist. Nothing is ever evaluated.

`ast.parse` only builds a syntax tree; every node type we accept is listed in `_Builder`, and each builds SymPy
objects directly. A whole-array value carries *positional axes* (fresh index symbols with sizes); index-form
values carry *named* free indices (`W[h, j]`). Elementwise operations align positional axes by position and
named indices by name, `@` contracts, `sum`/`Sum` bind. So `relu(W1 @ x + b1)` and
`relu(sum(W1[h, j] * x[j], j) + b1[h])` become the same SymPy body.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import sympy
from sympy import IndexedBase, Integer, Rational, Symbol
from sympy.functions.elementary.piecewise import ExprCondPair

from symgrad.lang.library import BATCH_SIZE, LIBRARY, BatchSum, LogSumExp, Sum
from symgrad.lang.primitives import CONSTANTS, ELEMENTWISE, stable_rewrites

_INDEX_NAMES = "ijklmnpqrstuvabcdefgho"


class Select(sympy.Piecewise):
    """Piecewise that leaves a condition holding a reduction as written. SymPy canonicalises conditions with
    piecewise_fold, which pulls a Piecewise out of a Sum whose condition reads the summation index
    (`mean(Piecewise(...)) < 3` became `ITE(d[m] > 1/2, ...)` with m unbound). Once the graph stage has stored the
    reduction in a hidden statement, the condition holds a plain read and SymPy's usual canonical form applies."""

    def __new__(cls, *args, **options):
        pairs = [tuple(getattr(ec, "args", ec)) for ec in args]
        if any(isinstance(c, sympy.Basic) and c.has(Sum, LogSumExp) for _, c in pairs):
            kept = []
            for e, c in pairs:
                c = sympy.true if c is True else c
                kept.append(_Pair(e, c))
                if c is sympy.true:
                    break
            return sympy.Basic.__new__(cls, *kept)
        return sympy.Piecewise(*args, **options)


# Per-axis layers whose result has their argument's shape, whatever its values: log_softmax(W - W, axis=0) is
# -log(K) everywhere, constant along the axis, yet still of W's shape (fuzz F3 read it as a reduction)
_KEEPS_AXIS = frozenset({"softmax", "log_softmax", "standardize"})


def _select_where(cond, a, b):
    """where(cond, a, b) built as Select, so a reduction in its condition stays where it was written."""
    return Select((a, cond), (b, True))


class _Pair(ExprCondPair):
    """An (expr, cond) pair whose condition holds a reduction: kept as written (see Select)."""

    def __new__(cls, expr, cond):
        if isinstance(cond, sympy.Basic) and cond.has(Sum, LogSumExp):
            return sympy.Tuple.__new__(cls, expr if isinstance(expr, sympy.Basic) else sympy.Float(expr), cond)
        return ExprCondPair(expr, cond)


class ExprError(Exception):
    """An error inside one expression; the caller adds FILE:LINE."""


@dataclass(frozen=True)
class TExpr:
    """A tensor-valued expression: a scalar SymPy body over free index symbols."""

    expr: sympy.Expr
    axes: tuple[tuple[Symbol, int], ...] = ()  # positional axes (whole-array notation)
    named: frozenset = frozenset()  # free named index variables (index notation)


@dataclass
class ArrayRef:
    """What a name in an expression stands for."""

    name: str
    shape: tuple[int, ...]
    base: sympy.Basic  # IndexedBase, or Symbol for a 0-d array


@dataclass
class Scope:
    """Everything a statement's expression may refer to, plus the index ranges inferred for it."""

    arrays: dict[str, ArrayRef]
    dims: dict[str, int]
    constants: dict[str, Symbol]
    functions: dict[str, tuple[tuple[str, ...], ast.AST]]
    later: set[str] = field(default_factory=set)  # statements defined after this one: a helpful error
    current: str | None = None  # the statement being defined (reading it is a cycle)
    ranges: dict[str, int] = field(default_factory=dict)  # index name -> size, from plain uses
    index_syms: dict[str, Symbol] = field(default_factory=dict)
    used_names: set[str] = field(default_factory=set)
    bounds: dict[Symbol, tuple[sympy.Expr, sympy.Expr]] = field(default_factory=dict)  # every index -> [lo, hi]

    def fresh(self, hint: str | None = None) -> Symbol:
        """A new index symbol whose name no other index of this statement uses."""
        candidates = [hint] if hint else []
        candidates += list(_INDEX_NAMES) + [f"i{n}" for n in range(1, 1000)]
        for name in candidates:
            if (
                name
                and name not in self.used_names
                and name not in self.arrays
                and name not in self.dims
                and name not in self.constants
                and name not in self.later
                and name not in self.functions
                and name != self.current
            ):
                self.used_names.add(name)
                return Symbol(name, integer=True)
        raise ExprError("too many indices")

    def index(self, name: str) -> Symbol:
        if name not in self.index_syms:
            self.index_syms[name] = Symbol(name, integer=True)
            self.used_names.add(name)
        return self.index_syms[name]


def parse_source(text: str) -> ast.AST:
    """Syntax only: `ast.parse` in eval mode, with a clear message for what Python would reject."""
    src = text.strip()
    if not src:
        raise ExprError("empty expression")
    try:
        return ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise ExprError(f"syntax error in expression {src!r}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExprError(f"expression is too large or too deeply nested to parse: {src[:60]!r}...") from None


def collect_plain_uses(node: ast.AST, scope: Scope, declared: dict[str, int] | None = None) -> None:
    """Pass 1: an index variable written alone in a subscript (`W[h, j]`) takes that axis's size as its range.

    An index whose range the statement's long-form `shape:` declares keeps that range: a plain read of a longer
    axis then reads a prefix (`d[i]: x[i + 1] - x[i]` over N - 1 elements of an N-vector), and a read past the
    end is refused by the range check over the iteration domain, not here."""
    declared = declared or {}
    scope.ranges.update(declared)
    fallback: dict[str, int] = {}  # sizes read inside a Sum binding the name: a range only where nothing else gives one
    for sub, bound in _walk_with_sum_limits(node):
        if isinstance(sub, ast.Name) and _is_index_name(sub.id, scope):
            scope.used_names.add(sub.id)
        if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id in scope.arrays:
            shape = scope.arrays[sub.value.id].shape
            elts = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
            if len(elts) != len(shape):
                continue  # reported with a better message in pass 2
            for axis, elt in enumerate(elts):
                # inside Sum(..., (j, lo, hi)) j runs over its own bounds: reads of longer axes read a part of them,
                # checked over the iteration domain (fuzz G1: Sum(w[j] * x[j], (j, 0, M - 1)) with x longer)
                if not isinstance(elt, ast.Name):
                    continue
                if elt.id in bound:  # (`c[i]: Sum(w[i], (i, 0, i))`, a prefix sum: c's i then ranges over w)
                    fallback.setdefault(elt.id, shape[axis])
                    continue
                if _is_index_name(elt.id, scope) and elt.id not in declared:
                    size = shape[axis]
                    prev = scope.ranges.get(elt.id)
                    if prev is not None and prev != size:
                        raise ExprError(
                            f"index {elt.id} ranges over {prev} elsewhere but over {size} in "
                            f"{sub.value.id}[...] (shape mismatch)"
                        )
                    scope.ranges[elt.id] = size
    for name, size in fallback.items():
        if _is_index_name(name, scope):
            scope.ranges.setdefault(name, size)


def _walk_with_sum_limits(node: ast.AST, bound: frozenset[str] = frozenset()):
    """ast.walk, each node with the names that an enclosing explicit Sum(..., (j, lo, hi)) binds there."""
    yield node, bound
    inner = bound
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Sum":
        limits = [a for a in node.args[1:] if isinstance(a, ast.Tuple) and a.elts and isinstance(a.elts[0], ast.Name)]
        inner = bound | {lim.elts[0].id for lim in limits}  # type: ignore[attr-defined]  # checked: ast.Name
        if node.args:  # the summand is in the limits' scope; the bounds are not (they read enclosing indices)
            yield from _walk_with_sum_limits(node.args[0], inner)
        for a in node.args[1:]:
            yield from _walk_with_sum_limits(a, bound)
        for kw in node.keywords:
            yield from _walk_with_sum_limits(kw, bound)
        yield from _walk_with_sum_limits(node.func, bound)
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk_with_sum_limits(child, inner)


def _is_index_name(name: str, scope: Scope) -> bool:
    return (
        name != scope.current
        and name not in scope.arrays
        and name not in scope.dims
        and name not in scope.constants
        and name not in scope.functions
        and name not in ELEMENTWISE
        and name not in LIBRARY
        and name not in scope.later
        and name not in CONSTANTS
    )


class Builder:
    """Pass 2: builds a TExpr from a whitelisted syntax tree."""

    def __init__(self, scope: Scope, internal: bool = False):
        self.scope = scope
        self.internal = internal  # library bodies may call `_logsumexp`; spec text may not
        self.axis: int | None = None  # inside an axis= call: the positional axis every reduction runs over
        self.env: dict[str, TExpr] = {}  # function parameters while expanding a call
        self.depth = 0

    # -- entry -----------------------------------------------------------------------------------------
    def build(self, node: ast.AST) -> TExpr:
        """The whole expression: its numeric rewrites (primitives.stable_rewrites) are applied here, before the
        graph and the derivation see it, so that derivatives are taken of the stable forms (softplus' is sigmoid,
        where log(1 + exp(a))'s would be inf/inf at a = 800)."""
        out = self.value(node)
        if self.depth == 0:
            out = TExpr(stable_rewrites(out.expr), out.axes, out.named)
        return out

    def value(self, node: ast.AST) -> TExpr:
        self.depth += 1
        if self.depth > 200:
            raise ExprError("expression is nested too deeply")
        try:
            method = getattr(self, "_" + type(node).__name__, None)
            if method is None:
                raise ExprError(f"{_describe(node)} is not allowed in a spec expression")
            out = method(node)
            if self.depth == 1:
                check_literals(out.expr)
            return out
        finally:
            self.depth -= 1

    # -- leaves ----------------------------------------------------------------------------------------
    def _Constant(self, node: ast.Constant) -> TExpr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExprError(f"constant {value!r} is not a number")
        if isinstance(value, int):
            return TExpr(Integer(value))
        if value != value or value in (float("inf"), float("-inf")):
            raise ExprError("numbers must be finite")
        text = repr(value)
        digits = len(text.split("e")[0].replace("-", "").replace(".", "").strip("0"))
        if digits > 12:  # a float written to its last digit (0.7978845608028654) is a float: exact rationals of it
            return TExpr(sympy.Float(value, 17))  # grow 40-digit integers under factoring (overflow in float32)
        return TExpr(Rational(text))  # exact decimal: 2.1 stays 21/10, so worked numbers come out exact

    def _Name(self, node: ast.Name) -> TExpr:
        name = node.id
        s = self.scope
        if name in self.env:
            return self.env[name]
        if name in s.dims:
            return TExpr(Integer(s.dims[name]))
        if name in s.constants:
            return TExpr(s.constants[name])
        if name in s.arrays:
            ref = s.arrays[name]
            if not ref.shape:
                return TExpr(ref.base)
            axes = tuple((s.fresh(), n) for n in ref.shape)
            for sym, n in axes:
                s.bounds[sym] = (Integer(0), Integer(n - 1))
            return TExpr(ref.base[tuple(a for a, _ in axes)], axes)
        if name == s.current:
            raise ExprError(f"statement {name!r} refers to itself (a cycle); a statement reads only earlier ones")
        if name in s.later:
            raise ExprError(f"statement {name!r} is used before it is defined (statements run in order; a cycle?)")
        if name in s.index_syms or name in s.ranges:
            sym = s.index(name)
            return TExpr(sym, (), frozenset([sym]))
        if name in CONSTANTS:
            return TExpr(CONSTANTS[name])
        if name in ELEMENTWISE or name in LIBRARY or name in s.functions:
            raise ExprError(f"function {name!r} must be called, e.g. {name}(x)")
        raise ExprError(f"undeclared name {name!r}")

    def _Subscript(self, node: ast.Subscript) -> TExpr:
        if not isinstance(node.value, ast.Name) or node.value.id not in self.scope.arrays:
            what = node.value.id if isinstance(node.value, ast.Name) else _describe(node.value)
            if what == self.scope.current:
                raise ExprError(f"statement {what!r} refers to itself (a cycle); statements read only earlier ones")
            if isinstance(node.value, ast.Name) and node.value.id in self.scope.later:
                raise ExprError(f"statement {what!r} is used before it is defined (statements run in order; a cycle?)")
            raise ExprError(f"only declared arrays can be indexed; {what!r} is not one")
        ref = self.scope.arrays[node.value.id]
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if len(elts) != len(ref.shape):
            raise ExprError(
                f"{ref.name} has {len(ref.shape)} ax{'i' if len(ref.shape) == 1 else 'e'}s "
                f"(shape {list(ref.shape)}) but is indexed with {len(elts)}"
            )
        if not ref.shape:
            raise ExprError(f"{ref.name} is a scalar and cannot be indexed")
        idx, named = [], set()
        for elt in elts:
            e = self._affine(elt)
            idx.append(e)
            named |= {sym for sym in e.free_symbols if sym in self.scope.index_syms.values()}
        return TExpr(ref.base[tuple(idx)], (), frozenset(named))

    def _bound(self, node: ast.AST) -> sympy.Expr:
        """A Sum bound: an affine index expression, or Max/Min of them (zero padding: (u, Max(0, 1 - i), 2))."""
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("Max", "Min", "max", "min")
        ):
            if len(node.args) < 2 or node.keywords:
                raise ExprError(f"{node.func.id} in a Sum bound takes two or more index expressions")
            fn = sympy.Max if node.func.id.lower() == "max" else sympy.Min
            return fn(*[self._bound(a) for a in node.args])
        return self._affine(node)

    def _affine(self, node: ast.AST) -> sympy.Expr:
        """An index expression: integers, dims and index variables combined by +, - and integer *."""
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return Integer(node.value)
        if isinstance(node, ast.Name):
            if node.id in self.scope.dims:
                return Integer(self.scope.dims[node.id])
            if _is_index_name(node.id, self.scope) or node.id in self.scope.index_syms:
                return self.scope.index(node.id)
            raise ExprError(f"{node.id!r} cannot be used as an index")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self._affine(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
            a, b = self._affine(node.left), self._affine(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if not (a.is_Integer or b.is_Integer):
                raise ExprError("an index may only be multiplied by an integer (affine indices)")
            return a * b
        raise ExprError(f"index {_describe(node)} is not an affine expression of index variables")

    # -- operators -------------------------------------------------------------------------------------
    def _UnaryOp(self, node: ast.UnaryOp) -> TExpr:
        if isinstance(node.op, ast.Not):
            raise ExprError(_CONDITION_ONLY)
        x = self.build(node.operand)
        if isinstance(node.op, ast.USub | ast.UAdd):
            _number_only(x, "a sign (-x)")
        if isinstance(node.op, ast.USub):
            return TExpr(-x.expr, x.axes, x.named)
        if isinstance(node.op, ast.UAdd):
            return x
        raise ExprError(f"operator {type(node.op).__name__} is not allowed")

    def _BinOp(self, node: ast.BinOp) -> TExpr:
        if isinstance(node.op, ast.MatMult):
            return self.matmul(self.build(node.left), self.build(node.right))
        ops = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
            ast.Div: lambda a, b: a / b,
            ast.Pow: lambda a, b: a**b,
        }
        op = ops.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed (use + - * / ** @)")
        group = (ast.Add, ast.Sub) if isinstance(node.op, (ast.Add, ast.Sub)) else (ast.Mult, ast.Div)
        if not isinstance(node.op, ast.Pow) and isinstance(node.left, ast.BinOp) and isinstance(node.left.op, group):
            return self._chain(node, group, ops)
        left, right = self.build(node.left), self.build(node.right)
        if isinstance(node.op, ast.Pow):
            bound_literal_pow(left.expr, right.expr)
        out = self.elementwise(op, [left, right], "an arithmetic operation")
        bound_number(out.expr)
        return out

    def _chain(self, node: ast.BinOp, group: tuple, ops: dict) -> TExpr:
        """`a + b - c + ...` (or `a * b / c ...`) as Python parses it is a left chain as deep as it is long: walked
        here as a list, so a flat sum of 2,000 terms is not "nested too deeply"."""
        links = []
        cur: ast.expr = node
        while isinstance(cur, ast.BinOp) and isinstance(cur.op, group):
            links.append((ops[type(cur.op)], cur.right))
            cur = cur.left
        acc = self.build(cur)
        for op, right in reversed(links):
            acc = self.elementwise(op, [acc, self.build(right)], "an arithmetic operation")
            bound_number(acc.expr)
        return acc

    def _Compare(self, node: ast.Compare) -> TExpr:
        raise ExprError(_CONDITION_ONLY)

    _BoolOp = _Compare

    def _Attribute(self, node: ast.Attribute) -> TExpr:
        """`x.T`: the transpose of a 2-D whole-array value (its two positional axes swapped). Nothing else."""
        if node.attr != "T":
            raise ExprError(f"attribute access .{node.attr} is not allowed (only x.T, the transpose of a 2-D array)")
        x = self.build(node.value)
        if len(x.axes) != 2:
            raise ExprError(
                f"x.T needs a 2-D array; this value has {len(x.axes)} positional ax{'i' if len(x.axes) == 1 else 'e'}s"
            )
        return TExpr(x.expr, x.axes[::-1], x.named)

    def condition(self, node: ast.AST) -> TExpr:
        """The grammar of a condition (where's first argument, Piecewise's second): comparisons of values,
        chained (a < b < c) and combined with and/or/not, or True. Comparisons appear nowhere else."""
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return TExpr(sympy.true if node.value else sympy.false)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            c = self.condition(node.operand)
            return TExpr(sympy.Not(c.expr), c.axes, c.named)
        if isinstance(node, ast.BoolOp):
            fn = sympy.And if isinstance(node.op, ast.And) else sympy.Or
            return self.elementwise(lambda *a: fn(*a), [self.condition(v) for v in node.values], "a condition")
        if not isinstance(node, ast.Compare):
            raise ExprError(
                f"a condition must be a comparison (a < b, a == b, ...), possibly combined with "
                f"and/or/not; got {_describe(node)}"
            )
        rel = {
            ast.Gt: sympy.Gt,
            ast.Lt: sympy.Lt,
            ast.GtE: sympy.Ge,
            ast.LtE: sympy.Le,
            ast.Eq: sympy.Eq,
            ast.NotEq: sympy.Ne,
        }
        parts = [self.build(node.left)] + [self.build(c) for c in node.comparators]
        conds = []
        for op, a, b in zip(node.ops, parts, parts[1:], strict=False):
            if type(op) not in rel:
                raise ExprError(f"comparison {type(op).__name__} is not allowed")
            relation = rel[type(op)]
            conds.append(self.elementwise(lambda x, y, r=relation: r(x, y), [a, b], "a comparison"))
        return self.elementwise(lambda *c: sympy.And(*c), conds, "a comparison") if len(conds) > 1 else conds[0]

    # -- calls -----------------------------------------------------------------------------------------
    def _Call(self, node: ast.Call) -> TExpr:
        if not isinstance(node.func, ast.Name):
            raise ExprError(f"{_describe(node.func)} cannot be called; only named functions can")
        name = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExprError("starred arguments are not allowed")
        axis = self._axis_keyword(node)
        if axis is not None:
            return self.along_axis(name, node, axis)
        if name in ("sum", "Sum", "mean"):
            return self.reduction(name, node.args)
        if name in ("batch_sum", "batch_mean"):
            if len(node.args) != 1:
                raise ExprError(f"{name} takes one per-sample expression")
            x = self.build(node.args[0])
            expr = BatchSum(x.expr) if name == "batch_sum" else BatchSum(x.expr) / BATCH_SIZE
            return TExpr(expr, x.axes, x.named)
        if name == "Piecewise":
            return self.piecewise(node.args)
        if name == "_logsumexp" and self.internal:
            (arg,) = node.args
            x = self.build(arg)
            if not x.axes:
                raise ExprError("logsumexp needs an array (whole-array notation)")
            if self.axis is not None:
                expr, limits = self._reduce_axis(x)
                return TExpr(LogSumExp(expr, *limits), x.axes, x.named)
            return TExpr(LogSumExp(x.expr, *[(s, 0, n - 1) for s, n in x.axes]), (), x.named)
        if name in self.scope.functions or name in LIBRARY:
            self._check_arity(name, len(node.args))
            return self._expand(name, [self.build(a) for a in node.args])
        if name == "log" and len(node.args) == 2:  # SymPy's log(x, base): log(x) / log(base)
            args = [self.build(a) for a in node.args]
            return self.elementwise(lambda x, base: sympy.log(x) / sympy.log(base), args, "log(...)")
        if name in ELEMENTWISE:
            row = ELEMENTWISE[name]
            n = len(node.args)
            if isinstance(row.arity, int) and n != row.arity:
                raise ExprError(f"{name} takes {_count(row.arity)}, got {n}")
            if not isinstance(row.arity, int) and (n < row.arity[0] or (row.arity[1] is not None and n > row.arity[1])):
                raise ExprError(f"{name} takes at least {_count(row.arity[0])}, got {n}")
            fn = row.sympy
            if name == "where":  # where(cond, a, b): the condition grammar applies to the first argument only
                args = [self.condition(node.args[0])] + [self.build(a) for a in node.args[1:]]
                # as Piecewise(...): a condition holding a reduction is kept as written (Select), or SymPy's
                # piecewise_fold pulls an inner where out of `W @ where(...)` with its index unbound (fuzz F1)
                fn = _select_where
            else:
                args = [self.build(a) for a in node.args]
            return self.elementwise(lambda *a: _apply(fn, a), args, f"{name}(...)")
        raise ExprError(f"unknown function {name!r}")

    def _check_arity(self, name: str, n: int) -> None:
        params = self.scope.functions[name][0] if name in self.scope.functions else LIBRARY[name][0]
        if n != len(params):
            raise ExprError(f"{name} takes {len(params)} argument{'s' if len(params) != 1 else ''}, got {n}")

    def _expand(self, name: str, args: list[TExpr]) -> TExpr:
        """A library layer's or user function's body, its parameters bound to the arguments already built."""
        params, body = self.scope.functions.get(name) or (LIBRARY[name][0], None)
        if body is None:
            body = parse_source(LIBRARY[name][1])
        saved, saved_internal = self.env, self.internal
        self.env = dict(zip(params, args, strict=True))
        self.internal = name in LIBRARY and name not in self.scope.functions
        try:
            return self.build(body)
        finally:
            self.env, self.internal = saved, saved_internal

    def reduction(self, name: str, args: list[ast.expr]) -> TExpr:
        if not args:
            raise ExprError(f"{name}(...) needs an expression to sum")
        s = self.scope
        if name == "Sum":
            if len(args) < 2:
                raise ExprError("Sum needs limits, e.g. Sum(expr, (j, 0, i - 1))")
            limits = []
            for lim in args[1:]:
                if not (isinstance(lim, ast.Tuple) and len(lim.elts) == 3 and isinstance(lim.elts[0], ast.Name)):
                    raise ExprError("each Sum limit must be (index, lo, hi) with inclusive bounds")
                if not _is_index_name(lim.elts[0].id, s) and lim.elts[0].id not in s.index_syms:
                    raise ExprError(f"{lim.elts[0].id!r} is declared as something else and cannot be a Sum index")
                limits.append((lim.elts[0].id, self._bound(lim.elts[1]), self._bound(lim.elts[2])))
            for index, _, _ in limits:  # a Sum's index is declared by its limit, even where no subscript reads it
                s.index(index)  # (`Sum(where(i > k, a, b), (i, 0, 2))`, a count mask: "undeclared name 'i'")
            body = _number_only(self.build(args[0]), f"{name}(...)")
            return self._bind(body, limits)
        body = _number_only(self.build(args[0]), f"{name}(...)")
        if len(args) == 1 and self.axis is not None and body.axes:
            expr, limits = self._reduce_axis(body)
            total = Sum(expr, *limits)
            n = body.axes[self.axis][1]
            return TExpr(total / n if name == "mean" else total, body.axes, body.named)
        if len(args) == 1:
            if not body.axes:
                if name == "mean":
                    return body
                raise ExprError(f"{name}(expr) needs an array expression; to sum over an index write {name}(expr, j)")
            total = Sum(body.expr, *[(a, 0, n - 1) for a, n in body.axes])
            count = 1
            for _, n in body.axes:
                count *= n
            return TExpr(total / count if name == "mean" else total, (), body.named)
        limits = []
        for a in args[1:]:
            if not isinstance(a, ast.Name):
                raise ExprError(f"{name}(expr, j, ...) takes index names after the expression")
            if a.id not in s.ranges:
                raise ExprError(
                    f"cannot infer the range of index {a.id!r}: use it plainly in a subscript "
                    f"(like x[{a.id}]) or write Sum(expr, ({a.id}, lo, hi))"
                )
            limits.append((a.id, Integer(0), Integer(s.ranges[a.id] - 1)))
        out = self._bind(body, limits)
        if name == "mean":
            count = 1
            for index, _, _ in limits:  # the index names of args[1:]
                count *= s.ranges[index]
            out = TExpr(out.expr / count, out.axes, out.named)
        return out

    # -- per-axis forms: softmax(S, axis=-1), logsumexp(S, axis=0), mean(x, axis=1), ... --------------------
    def _axis_keyword(self, node: ast.Call) -> int | None:
        if not node.keywords:
            return None
        kw = node.keywords[0]
        assert isinstance(node.func, ast.Name)  # _Call refuses any other callee first
        if len(node.keywords) != 1 or kw.arg != "axis":
            raise ExprError(f"{node.func.id}(...) takes no keyword arguments except axis=")
        v = kw.value
        neg = False
        if isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub):
            neg, v = True, v.operand
        if not (isinstance(v, ast.Constant) and isinstance(v.value, int) and not isinstance(v.value, bool)):
            raise ExprError(f"axis= of {node.func.id} must be an integer literal such as axis=-1")
        return -v.value if neg else v.value

    def along_axis(self, name: str, node: ast.Call, axis: int) -> TExpr:
        """A library layer or reduction along one positional axis of its first argument. Inside, every reduction
        runs over that axis only and keeps it as a broadcast axis (NumPy's keepdims), so `z - logsumexp(z)` aligns;
        the call's result drops the axis when the result no longer varies along it (logsumexp, mean, var)."""
        if name not in LIBRARY and name not in self.scope.functions and name not in ("sum", "mean"):
            raise ExprError(f"{name} takes no axis= (only library layers, user functions, sum and mean do)")
        if not node.args:
            raise ExprError(f"{name}(..., axis=) needs an array argument")
        first = self.build(node.args[0])
        if not first.axes:
            raise ExprError(f"axis= of {name} needs a whole array as its first argument (not index notation)")
        rank = len(first.axes)
        if not -rank <= axis < rank:
            raise ExprError(f"axis={axis} is out of range for an argument with {rank} ax{'i' if rank == 1 else 'e'}s")
        k = axis % rank
        if name in ("sum", "mean") and len(node.args) != 1:
            raise ExprError(f"{name}(expr, axis=k) takes one expression")
        if name not in ("sum", "mean"):
            self._check_arity(name, len(node.args))
        # the arguments are the caller's expressions: a reduction written in them (`W * sum(V)`, a scalar) keeps
        # its own meaning; only the layer's body runs its reductions along the axis (fuzz: sum(V) there had
        # become sum(V, axis=0), silently)
        args = [first] + [self.build(a) for a in node.args[1:]]
        saved = self.axis
        self.axis = k
        try:
            if name in ("sum", "mean"):
                expr, limits = self._reduce_axis(first)
                total = Sum(expr, *limits)
                out = TExpr(total / first.axes[k][1] if name == "mean" else total, first.axes, first.named)
            else:
                out = self._expand(name, args)
        finally:
            self.axis = saved
        if (
            saved is None
            and len(out.axes) == rank
            and name not in _KEEPS_AXIS
            and out.axes[k][0] not in out.expr.free_symbols
        ):
            out = TExpr(out.expr, out.axes[:k] + out.axes[k + 1 :], out.named)
        return out

    def _reduce_axis(self, x: TExpr) -> tuple[sympy.Expr, list]:
        axis = self.axis
        assert axis is not None  # called only inside an axis= call
        if len(x.axes) <= axis:
            raise ExprError("a reduction along axis= met an argument with fewer axes")
        sym, n = x.axes[axis]
        d = sympy.Dummy(sym.name, integer=True)
        self.scope.bounds[d] = (Integer(0), Integer(n - 1))
        return x.expr.xreplace({sym: d}), [(d, 0, n - 1)]

    def _bind(self, body: TExpr, limits: list[tuple[str, sympy.Expr, sympy.Expr]]) -> TExpr:
        """Sum over named indices. Each bound index gets a fresh symbol so later algebra cannot capture it."""
        expr, named = body.expr, set(body.named)
        sym_limits = []
        renamed: dict = {}  # this Sum's outer limits, already bound: a later limit's bounds read them
        for name, lo, hi in limits:
            # a limit's own index in its bounds is the enclosing one (SymPy's scoping: Sum(w[i], (i, 0, i)) is a
            # prefix sum; renaming it too made the bound read itself, "nested too deeply", G3)
            lo, hi = lo.xreplace(renamed), hi.xreplace(renamed)
            old = self.scope.index(name)
            if old not in named:
                raise ExprError(f"index {name!r} is summed over but does not appear in the summed expression")
            if (hi - lo).is_number and hi - lo < -1:
                # an empty loop in the kernel, but minus the sum over hi+1..lo-1 in SymPy's (Karr's) convention:
                # the printed maths and the numbers would disagree, and reversed bounds are surely a slip
                raise ExprError(
                    f"the sum over {name} runs from {lo} down to {hi}: write its bounds from low to high "
                    f"(Sum(..., ({name}, {hi}, {lo})))"
                )
            new = sympy.Dummy(name, integer=True)
            # an inner Sum's bound may read this index (`Sum(Sum(w[q], (q, 0, p)), (p, 0, 2))`): its range must
            # follow the renaming, or q's range reads a p nothing bounds ("cannot infer the range of index", G2)
            for v in expr.atoms(sympy.Dummy):
                if v in self.scope.bounds:
                    self.scope.bounds[v] = tuple(b.xreplace({old: new}) for b in self.scope.bounds[v])
            expr = expr.xreplace({old: new})
            named.discard(old)
            self.scope.bounds[new] = (lo, hi)
            sym_limits.append((new, lo, hi))
            named |= {x for x in (lo.free_symbols | hi.free_symbols) if x in self.scope.index_syms.values()}
            renamed[old] = new
        # SymPy lists limits innermost first; ours are written outermost first.
        return TExpr(Sum(expr, *reversed(sym_limits)), body.axes, frozenset(named))

    def piecewise(self, args: list[ast.expr]) -> TExpr:
        pieces = []
        for a in args:
            if not (isinstance(a, ast.Tuple) and len(a.elts) == 2):
                raise ExprError("Piecewise takes (value, condition) pairs")
            value = self.build(a.elts[0])
            cond = self.condition(a.elts[1])
            pieces.append((value, cond))
        last = args[-1].elts[1] if args else None  # type: ignore[attr-defined]  # a Tuple: checked above
        if not (isinstance(last, ast.Constant) and last.value is True):
            raise ExprError(
                "a Piecewise must end with a (value, True) pair: where no condition holds its value is undefined "
                "(NaN at run time); write the last case's condition as True"
            )
        flat = [t for pair in pieces for t in pair]
        return self.elementwise(lambda *xs: Select(*zip(xs[::2], xs[1::2], strict=True)), flat, "Piecewise")

    # -- shape algebra ---------------------------------------------------------------------------------
    def elementwise(self, fn, args: list[TExpr], what: str) -> TExpr:
        """Apply fn to aligned arguments: positional axes must agree in size; scalars broadcast."""
        axes: tuple = ()
        exprs = []
        named: set = set()
        for a in args:
            named |= a.named
            if a.axes and not axes:
                axes = a.axes
                exprs.append(a.expr)
            elif a.axes:
                if [n for _, n in a.axes] != [n for _, n in axes]:
                    raise ExprError(f"shape mismatch in {what}: {[n for _, n in axes]} vs {[n for _, n in a.axes]}")
                sub = {s: t for (s, _), (t, _) in zip(a.axes, axes, strict=True)}
                exprs.append(a.expr.xreplace(sub))
            else:
                exprs.append(a.expr)
        try:
            value = fn(*exprs)
        except (TypeError, ValueError, AttributeError) as exc:
            if any(_is_condition(e) for e in exprs):
                raise ExprError(
                    f"a condition (comparison, not, and, or) is true or false, not a number, so it "
                    f"cannot be used in {what}; write Piecewise((1, cond), (0, True))"
                ) from None
            raise ExprError(f"cannot form {what}: {str(exc).splitlines()[0][:100]}") from None
        return TExpr(value, axes, frozenset(named))

    def matmul(self, a: TExpr, b: TExpr) -> TExpr:
        _number_only(a, "@")
        _number_only(b, "@")
        if not a.axes or not b.axes or len(a.axes) > 2 or len(b.axes) > 2:
            raise ExprError("@ needs a matrix or vector on each side")
        (ka, na), (kb, nb) = a.axes[-1], b.axes[0]
        if na != nb:
            raise ExprError(f"shape mismatch in @: {[n for _, n in a.axes]} @ {[n for _, n in b.axes]}")
        body = a.expr * b.expr.xreplace({kb: ka})
        return TExpr(Sum(body, (ka, 0, na - 1)), a.axes[:-1] + b.axes[1:], a.named | b.named)


_CONDITION_ONLY = (
    "a comparison or and/or/not is allowed only as a condition: where(cond, a, b) or Piecewise((value, cond), ...)"
)


def _count(n: int) -> str:
    return {1: "one argument", 2: "two arguments", 3: "three arguments"}.get(n, f"{n} arguments")


def _apply(fn, args):
    """fn(*args); Max/Min of constants SymPy cannot order (Max(relu(logsumexp(0)), 1.5)) stay unevaluated instead
    of raising "not comparable": their value is decided at run time like any other Max."""
    try:
        return fn(*args)
    except (TypeError, ValueError):
        if fn in (sympy.Max, sympy.Min):
            return fn(*args, evaluate=False)
        raise


# -- literal bounds: exact SymPy arithmetic on literals must neither hang nor leave float64's range ----------
_MAX_LOG10 = 308.0  # |x| < 1e308 fits float64 (max 1.797e308)
_MAX_BITS = 4096  # numerator / denominator size of an exact literal; beyond, exact arithmetic only grows


def _log10_abs(r: sympy.Rational) -> float:
    import math

    return math.log10(abs(int(r.p))) - math.log10(int(r.q))


def bound_literal_pow(base: sympy.Expr, exp: sympy.Expr) -> None:
    """Refuse a power of two literals whose value is outside float64 *before* SymPy evaluates it exactly:
    `2**10**10` has three billion digits, and SymPy would compute every one."""
    if not (isinstance(base, sympy.Rational) and isinstance(exp, sympy.Rational)) or base == 0 or abs(base) == 1:
        return
    try:
        size = abs(float(exp)) * abs(_log10_abs(base))
    except OverflowError:
        size = float("inf")
    if size > _MAX_LOG10:
        sign = "-" if (exp < 0) != (abs(base) < 1) else ""
        raise ExprError(
            f"the literal power {_short(base)}**{_short(exp)} is about 10**{sign}{size:.3g}, outside float64's range"
        )


def bound_number(e: sympy.Expr) -> None:
    """A literal value (or the numeric coefficient SymPy folds into a product or sum) must fit float64 and stay a
    small exact number. O(1): SymPy keeps the coefficient first in a Mul's and an Add's args."""
    n = (
        e
        if isinstance(e, sympy.Number)
        else (
            e.args[0]
            if isinstance(e, sympy.Mul | sympy.Add) and e.args and isinstance(e.args[0], sympy.Number)
            else None
        )
    )
    if n is None or not isinstance(n, sympy.Rational) or n == 0:
        return
    if int(n.p).bit_length() > _MAX_BITS or int(n.q).bit_length() > _MAX_BITS:
        raise ExprError(
            "literal arithmetic needs more than 1,200 digits of exact precision; write the value as a decimal number"
        )
    if _log10_abs(n) > _MAX_LOG10:
        raise ExprError(f"the literal value {_short(n)} is outside float64's range (|x| < 1.8e308)")


def _number_only(t: TExpr, what: str) -> TExpr:
    """A condition where a number is needed: one clear refusal instead of SymPy's TypeError."""
    if _is_condition(t.expr):
        raise ExprError(
            f"a condition (comparison, not, and, or) is true or false, not a number, so it cannot be "
            f"used in {what}; write Piecewise((1, cond), (0, True))"
        )
    return t


def _is_condition(e: object) -> bool:
    """A comparison, not/and/or, or True/False (a SymPy Symbol is a `Boolean` too, so that class cannot say)."""
    from sympy.logic.boolalg import BooleanAtom, BooleanFunction

    return isinstance(e, sympy.core.relational.Relational | BooleanFunction | BooleanAtom)


def check_literals(expr: sympy.Expr) -> None:
    """A whole expression: no literal outside float64, nothing complex (`sqrt(-1)`), infinite (`1/0`) or
    undefined, and a number, not a condition."""
    if _is_condition(expr):
        raise ExprError(
            "the expression is a condition (true or false), not a number; write Piecewise((1, cond), (0, True))"
        )
    if expr.has(sympy.I) or any(
        p.base.is_Number and p.base < 0 and p.exp.is_integer is False for p in expr.atoms(sympy.Pow)
    ):
        raise ExprError("the expression is complex (a square root or log of a negative literal?)")
    if expr.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
        raise ExprError("the expression divides by zero or is otherwise undefined for every input")
    for n in expr.atoms(sympy.Rational):
        bound_number(n)
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Piecewise):
            if any(not _is_condition(c) for _, c in node.args):
                raise ExprError("a Piecewise condition must be a comparison such as x > 0 (or True)")
            if any(_is_condition(v) for v, _ in node.args):
                raise ExprError("a Piecewise value is a condition, not a number")
            continue
        if _is_condition(node) or isinstance(node, sympy.Tuple):
            continue
        if any(_is_condition(a) for a in node.args):
            raise ExprError(
                "a condition (comparison, not, and, or) is true or false, not a number; use it only "
                "as a Piecewise condition, e.g. Piecewise((1, cond), (0, True))"
            )


def _short(n: sympy.Expr) -> str:
    text = str(n)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


def _describe(node: ast.AST) -> str:
    names = {
        ast.Attribute: "attribute access",
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.JoinedStr: "an f-string",
        ast.List: "a list",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.IfExp: "a conditional expression",
        ast.NamedExpr: "':='",
        ast.Starred: "a starred argument",
        ast.Await: "await",
        ast.Yield: "yield",
        ast.Slice: "a slice",
    }
    if isinstance(node, ast.Constant):  # the user's text (`None`, `'a'`), not the syntax tree's class name
        return repr(node.value)[:40]
    if type(node) in names:
        return names[type(node)]
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:37] + "..."


def make_base(name: str, shape: tuple[int, ...]):
    """An array's SymPy handle: IndexedBase (real) for arrays, a real Symbol for 0-d ones."""
    return Symbol(name, real=True) if not shape else IndexedBase(name, real=True)
