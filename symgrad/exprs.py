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
from sympy import Indexed, IndexedBase, Integer, Rational, Sum, Symbol

from symgrad.library import ELEMENTWISE, LIBRARY, LogSumExp

_INDEX_NAMES = "ijklmnpqrstuvabcdefgho"


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
    base: object  # IndexedBase, or Symbol for a 0-d array


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
            if name and name not in self.used_names and name not in self.arrays and name not in self.dims \
                    and name not in self.constants:
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
        raise ExprError(f"expression cannot be parsed: {src[:60]!r}") from None


def collect_plain_uses(node: ast.AST, scope: Scope) -> None:
    """Pass 1: an index variable written alone in a subscript (`W[h, j]`) takes that axis's size as its range."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and _is_index_name(sub.id, scope):
            scope.used_names.add(sub.id)
        if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id in scope.arrays:
            shape = scope.arrays[sub.value.id].shape
            elts = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
            if len(elts) != len(shape):
                continue  # reported with a better message in pass 2
            for axis, elt in enumerate(elts):
                if isinstance(elt, ast.Name) and _is_index_name(elt.id, scope):
                    size = shape[axis]
                    prev = scope.ranges.get(elt.id)
                    if prev is not None and prev != size:
                        raise ExprError(
                            f"index {elt.id} ranges over {prev} elsewhere but over {size} in "
                            f"{sub.value.id}[...] (shape mismatch)")
                    scope.ranges[elt.id] = size


def _is_index_name(name: str, scope: Scope) -> bool:
    return (name != scope.current and name not in scope.arrays and name not in scope.dims
            and name not in scope.constants
            and name not in scope.functions and name not in ELEMENTWISE and name not in LIBRARY
            and name not in scope.later)


class Builder:
    """Pass 2: builds a TExpr from a whitelisted syntax tree."""

    def __init__(self, scope: Scope, internal: bool = False):
        self.scope = scope
        self.internal = internal  # library bodies may call `_logsumexp`; spec text may not
        self.env: dict[str, TExpr] = {}  # function parameters while expanding a call
        self.depth = 0

    # -- entry -----------------------------------------------------------------------------------------
    def build(self, node: ast.AST) -> TExpr:
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
        return TExpr(Rational(repr(value)))  # exact decimal: 2.1 stays 21/10, so worked numbers come out exact

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
            raise ExprError(f"{ref.name} has {len(ref.shape)} ax{'i' if len(ref.shape) == 1 else 'e'}s "
                            f"(shape {list(ref.shape)}) but is indexed with {len(elts)}")
        if not ref.shape:
            raise ExprError(f"{ref.name} is a scalar and cannot be indexed")
        idx, named = [], set()
        for elt in elts:
            e = self._affine(elt)
            idx.append(e)
            named |= {sym for sym in e.free_symbols if sym in self.scope.index_syms.values()}
        return TExpr(ref.base[tuple(idx)], (), frozenset(named))

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
        x = self.build(node.operand)
        if isinstance(node.op, ast.USub | ast.UAdd):
            _number_only(x, "a sign (-x)")
        if isinstance(node.op, ast.USub):
            return TExpr(-x.expr, x.axes, x.named)
        if isinstance(node.op, ast.UAdd):
            return x
        if isinstance(node.op, ast.Not):
            return TExpr(sympy.Not(x.expr), x.axes, x.named)
        raise ExprError(f"operator {type(node.op).__name__} is not allowed")

    def _BinOp(self, node: ast.BinOp) -> TExpr:
        if isinstance(node.op, ast.MatMult):
            return self.matmul(self.build(node.left), self.build(node.right))
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b}
        op = ops.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed (use + - * / ** @)")
        left, right = self.build(node.left), self.build(node.right)
        if isinstance(node.op, ast.Pow):
            bound_literal_pow(left.expr, right.expr)
        out = self.elementwise(op, [left, right], "an arithmetic operation")
        bound_number(out.expr)
        return out

    def _Compare(self, node: ast.Compare) -> TExpr:
        rel = {ast.Gt: sympy.Gt, ast.Lt: sympy.Lt, ast.GtE: sympy.Ge, ast.LtE: sympy.Le,
               ast.Eq: sympy.Eq, ast.NotEq: sympy.Ne}
        parts = [self.build(node.left)] + [self.build(c) for c in node.comparators]
        conds = []
        for op, a, b in zip(node.ops, parts, parts[1:], strict=False):
            if type(op) not in rel:
                raise ExprError(f"comparison {type(op).__name__} is not allowed")
            relation = rel[type(op)]
            conds.append(self.elementwise(lambda x, y, r=relation: r(x, y), [a, b], "a comparison"))
        return self.elementwise(lambda *c: sympy.And(*c), conds, "a comparison") if len(conds) > 1 else conds[0]

    def _BoolOp(self, node: ast.BoolOp) -> TExpr:
        fn = sympy.And if isinstance(node.op, ast.And) else sympy.Or
        return self.elementwise(lambda *a: fn(*a), [self.build(v) for v in node.values], "a condition")

    # -- calls -----------------------------------------------------------------------------------------
    def _Call(self, node: ast.Call) -> TExpr:
        if not isinstance(node.func, ast.Name):
            raise ExprError(f"{_describe(node.func)} cannot be called; only named functions can")
        if node.keywords:
            raise ExprError(f"{node.func.id}(...) takes no keyword arguments")
        name = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExprError("starred arguments are not allowed")
        if name in ("sum", "Sum", "mean"):
            return self.reduction(name, node.args)
        if name == "Piecewise":
            return self.piecewise(node.args)
        if name == "_logsumexp" and self.internal:
            (arg,) = node.args
            x = self.build(arg)
            if not x.axes:
                raise ExprError("logsumexp needs an array (whole-array notation)")
            return TExpr(LogSumExp(x.expr, *[(s, 0, n - 1) for s, n in x.axes]), (), x.named)
        if name in self.scope.functions or name in LIBRARY:
            params, body = self.scope.functions.get(name) or (LIBRARY[name][0], None)
            if body is None:
                body = parse_source(LIBRARY[name][1])
            if len(node.args) != len(params):
                raise ExprError(f"{name} takes {len(params)} argument{'s' if len(params) != 1 else ''}, "
                                f"got {len(node.args)}")
            args = [self.build(a) for a in node.args]
            saved, saved_internal = self.env, self.internal
            self.env = dict(zip(params, args, strict=True))
            self.internal = name in LIBRARY and name not in self.scope.functions
            try:
                return self.build(body)
            finally:
                self.env, self.internal = saved, saved_internal
        if name in ELEMENTWISE:
            fn = ELEMENTWISE[name]
            if name in ("Max", "Min"):
                if len(node.args) < 2:
                    raise ExprError(f"{name} takes at least two arguments")
            elif len(node.args) != 1:
                raise ExprError(f"{name} takes one argument, got {len(node.args)}")
            return self.elementwise(lambda *a: fn(*a), [self.build(a) for a in node.args], f"{name}(...)")
        raise ExprError(f"unknown function {name!r}")

    def reduction(self, name: str, args: list[ast.AST]) -> TExpr:
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
                limits.append((lim.elts[0].id, self._affine(lim.elts[1]), self._affine(lim.elts[2])))
            body = _number_only(self.build(args[0]), f"{name}(...)")
            return self._bind(body, limits)
        body = _number_only(self.build(args[0]), f"{name}(...)")
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
                raise ExprError(f"cannot infer the range of index {a.id!r}: use it plainly in a subscript "
                                f"(like x[{a.id}]) or write Sum(expr, ({a.id}, lo, hi))")
            limits.append((a.id, Integer(0), Integer(s.ranges[a.id] - 1)))
        out = self._bind(body, limits)
        if name == "mean":
            count = 1
            for a in args[1:]:
                count *= s.ranges[a.id]
            out = TExpr(out.expr / count, out.axes, out.named)
        return out

    def _bind(self, body: TExpr, limits: list[tuple[str, sympy.Expr, sympy.Expr]]) -> TExpr:
        """Sum over named indices. Each bound index gets a fresh symbol so later algebra cannot capture it."""
        expr, named = body.expr, set(body.named)
        sym_limits = []
        for name, lo, hi in limits:
            old = self.scope.index(name)
            if old not in named:
                raise ExprError(f"index {name!r} is summed over but does not appear in the summed expression")
            new = sympy.Dummy(name, integer=True)
            expr = expr.xreplace({old: new})
            named.discard(old)
            lo_s, hi_s = lo.xreplace({old: new}), hi.xreplace({old: new})
            self.scope.bounds[new] = (lo_s, hi_s)
            sym_limits.append((new, lo_s, hi_s))
            named |= {x for x in (lo.free_symbols | hi.free_symbols) if x in self.scope.index_syms.values()}
        # SymPy lists limits innermost first; ours are written outermost first.
        return TExpr(Sum(expr, *reversed(sym_limits)), body.axes, frozenset(named))

    def piecewise(self, args: list[ast.AST]) -> TExpr:
        pieces = []
        for a in args:
            if not (isinstance(a, ast.Tuple) and len(a.elts) == 2):
                raise ExprError("Piecewise takes (value, condition) pairs")
            value = self.build(a.elts[0])
            cond_node = a.elts[1]
            if isinstance(cond_node, ast.Constant) and cond_node.value is True:
                cond = TExpr(sympy.true)
            else:
                cond = self.build(cond_node)
            pieces.append((value, cond))
        flat = [t for pair in pieces for t in pair]
        return self.elementwise(lambda *xs: sympy.Piecewise(*zip(xs[::2], xs[1::2], strict=True)), flat,
                                "Piecewise")

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
                raise ExprError(f"a condition (comparison, not, and, or) is true or false, not a number, so it "
                                f"cannot be used in {what}; write Piecewise((1, cond), (0, True))") from None
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
        raise ExprError(f"the literal power {_short(base)}**{_short(exp)} is about 10**{sign}{size:.3g}, "
                        f"outside float64's range")


def bound_number(e: sympy.Expr) -> None:
    """A literal value (or the numeric coefficient SymPy folds into a product or sum) must fit float64 and stay a
    small exact number. O(1): SymPy keeps the coefficient first in a Mul's and an Add's args."""
    n = e if isinstance(e, sympy.Number) else (e.args[0] if isinstance(e, sympy.Mul | sympy.Add) and e.args
                                               and isinstance(e.args[0], sympy.Number) else None)
    if n is None or not isinstance(n, sympy.Rational) or n == 0:
        return
    if int(n.p).bit_length() > _MAX_BITS or int(n.q).bit_length() > _MAX_BITS:
        raise ExprError("literal arithmetic needs more than 1,200 digits of exact precision; write the value "
                        "as a decimal number")
    if _log10_abs(n) > _MAX_LOG10:
        raise ExprError(f"the literal value {_short(n)} is outside float64's range (|x| < 1.8e308)")


def _number_only(t: TExpr, what: str) -> TExpr:
    """A condition where a number is needed: one clear refusal instead of SymPy's TypeError."""
    if _is_condition(t.expr):
        raise ExprError(f"a condition (comparison, not, and, or) is true or false, not a number, so it cannot be "
                        f"used in {what}; write Piecewise((1, cond), (0, True))")
    return t


def _is_condition(e: object) -> bool:
    """A comparison, not/and/or, or True/False (a SymPy Symbol is a `Boolean` too, so that class cannot say)."""
    from sympy.logic.boolalg import BooleanAtom, BooleanFunction

    return isinstance(e, sympy.core.relational.Relational | BooleanFunction | BooleanAtom)


def check_literals(expr: sympy.Expr) -> None:
    """A whole expression: no literal outside float64, nothing complex (`sqrt(-1)`), infinite (`1/0`) or
    undefined, and a number, not a condition."""
    if _is_condition(expr):
        raise ExprError("the expression is a condition (true or false), not a number; write "
                        "Piecewise((1, cond), (0, True))")
    if expr.has(sympy.I) or any(p.base.is_Number and p.base < 0 and p.exp.is_integer is False
                                for p in expr.atoms(sympy.Pow)):
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
            raise ExprError("a condition (comparison, not, and, or) is true or false, not a number; use it only "
                            "as a Piecewise condition, e.g. Piecewise((1, cond), (0, True))")


def _short(n: sympy.Expr) -> str:
    text = str(n)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


def _describe(node: ast.AST) -> str:
    names = {ast.Attribute: "attribute access", ast.Lambda: "a lambda", ast.ListComp: "a comprehension",
             ast.GeneratorExp: "a comprehension", ast.JoinedStr: "an f-string", ast.List: "a list",
             ast.Dict: "a dict", ast.Set: "a set", ast.IfExp: "a conditional expression", ast.NamedExpr: "':='",
             ast.Starred: "a starred argument", ast.Await: "await", ast.Yield: "yield", ast.Slice: "a slice"}
    return names.get(type(node), type(node).__name__)


def make_base(name: str, shape: tuple[int, ...]):
    """An array's SymPy handle: IndexedBase (real) for arrays, a real Symbol for 0-d ones."""
    return Symbol(name, real=True) if not shape else IndexedBase(name, real=True)


def reads_of(expr: sympy.Expr, scalar_names: set[str]) -> list:
    """Every array read in an expression: Indexed objects and the Symbols that stand for 0-d arrays."""
    out = set(expr.atoms(Indexed))
    out |= {s for s in expr.atoms(Symbol) if s.name in scalar_names and not s.is_integer}
    return sorted(out, key=sympy.default_sort_key)
