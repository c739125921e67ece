"""An independent float64 reference: a plain NumPy interpreter of the parsed spec, statement by statement as written.

Why it exists: `symgrad check` used to difference the *generated* loss, so a wrong loss (a hoisted statement that
clobbers another, a misprinted constant) passed unnoticed. This module shares only the parser with the compiler
(`frontend/spec.py` for the YAML, `frontend/exprs.py` for expression text -> SymPy); nothing of the graph stage
(hoisting, normal form), the derivation, the lowering or the printers is used. Each statement's SymPy body is
evaluated by a recursive walk over the expression tree, vectorised over the batch and over the statement's indices
with NumPy broadcasting: every open index owns one axis, a `Sum` adds a trailing axis over the union of its bounds
and masks what its (possibly triangular) bounds exclude, then reduces it. Slow for big models, obviously right for
small ones."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mpmath
import numpy as np
import sympy
from sympy import Indexed, Symbol

from symgrad.frontend.exprs import ArrayRef, Builder, Scope, collect_plain_uses, make_base, parse_source
from symgrad.frontend.spec import Spec, load_spec
from symgrad.lang.library import BATCH_SIZE, BatchSum, LogSumExp, Sum, log_sigmoid, relu, sigmoid, softplus, step
from symgrad.lang.primitives import row_of

_SIG = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*([^)]*)\)\s*$")
_LHS = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[(.*)\])?$")


class EvaluatorError(Exception):
    """The reference cannot evaluate something (a node it does not know): a bug here, not in the spec."""


@dataclass
class RefStatement:
    name: str
    indices: tuple[Symbol, ...]  # one per axis of the statement's value
    shape: tuple[int, ...]
    body: sympy.Expr
    init: object = None  # a recurrence's state before step 0: a number or an input/param name (docs/spec.md)


@dataclass
class RefModel:
    """A spec read for evaluation: array shapes, constants' defaults and every statement's SymPy body, in order."""

    spec: Spec
    inputs: dict[str, tuple[int, ...]]
    params: dict[str, tuple[int, ...]]
    constants: dict[str, float]
    statements: list[RefStatement]
    loss_name: str

    @property
    def user_statements(self) -> list[str]:
        return [s.name for s in self.statements]


def build_reference(spec: Spec | str | Path) -> RefModel:
    """Parse a spec into a RefModel. The spec is assumed valid (the compiler's checks run elsewhere)."""
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    dims = dict(spec.dims)

    def shape_of(items) -> tuple[int, ...]:
        out = []
        for t in items:
            v = str(t.value).strip()
            out.append(dims[v] if v in dims else int(v))
        return tuple(out)

    refs: dict[str, ArrayRef] = {}
    inputs = {n: shape_of(d.shape) for n, d in spec.inputs.items()}
    params = {n: shape_of(d.shape) for n, d in spec.params.items()}
    for n, shp in {**inputs, **params}.items():
        refs[n] = ArrayRef(n, shp, make_base(n, shp))
    consts = {n: Symbol(n, real=True) for n in spec.constants}
    functions = {}
    for sig, body in spec.functions:
        m = _SIG.match(sig.value)
        if not m:
            raise EvaluatorError(f"function signature {sig.value!r}")
        fparams = tuple(p.strip() for p in m.group(2).split(",") if p.strip())
        functions[m.group(1)] = (fparams, parse_source(str(body.value)))

    statements: list[RefStatement] = []
    names = [d.lhs.value.split("[")[0].strip() for d in spec.forward]
    carried: dict[str, float | str] = {}  # a number, or the name of the array it starts from
    for decl in spec.forward:  # recurrences: readable at an earlier step before (and while) they are defined
        if decl.init is not None:
            name = decl.lhs.value.split("[")[0].strip()
            shp = shape_of(decl.shape)
            refs[name] = ArrayRef(name, shp, make_base(name, shp))
            text = str(decl.init.value).strip()
            try:
                carried[name] = float(text)
            except ValueError:
                carried[name] = text

    def build(text: str, later: set[str], current: str | None, lhs: list[str] | None, shape):
        scope = Scope(dict(refs), dims, consts, functions, later, current)
        tree = parse_source(str(text))
        collect_plain_uses(tree, scope, dict(zip(lhs, shape, strict=True)) if lhs and shape is not None else None)
        for idx in lhs or []:
            scope.index(idx)
        return Builder(scope).build(tree), scope

    for pos, decl in enumerate(spec.forward):
        m = _LHS.match(decl.lhs.value.strip())
        if not m:
            raise EvaluatorError(f"statement {decl.lhs.value!r}")
        name = m.group(1)
        declared = shape_of(decl.shape) if decl.shape is not None else None
        later = set(names[pos + 1 :]) - set(carried)
        if m.group(2) is None:
            value, _ = build(decl.expr.value, later, name, None, None)
            indices = tuple(s for s, _ in value.axes)
            shp = tuple(n for _, n in value.axes)
        else:
            idx = [p.strip() for p in m.group(2).split(",")]
            value, scope = build(decl.expr.value, later, name, idx, declared)
            indices = tuple(scope.index(p) for p in idx)
            shp = declared if declared is not None else tuple(scope.ranges[p] for p in idx)
        statements.append(RefStatement(name, indices, shp, value.expr, carried.get(name)))
        refs[name] = ArrayRef(name, shp, make_base(name, shp))
    # the documented name of the loss statement (docs/spec.md): L, or L2, L3, ... when the spec uses that name
    taken = set(refs) | set(spec.dims) | set(spec.constants) | _identifiers_of(spec)
    loss_name, suffix = "L", 1
    while loss_name in taken:
        suffix += 1
        loss_name = f"L{suffix}"
    value, _ = build(spec.loss.value, set(), None, None, None)
    if value.axes or value.named:
        raise EvaluatorError("the loss is not a scalar per sample")
    statements.append(RefStatement(loss_name, (), (), value.expr))
    constants = {n: float(v) for n, (v, _) in spec.constants.items()}
    return RefModel(spec, inputs, params, constants, statements, loss_name)


def _model(spec) -> RefModel:
    return spec if isinstance(spec, RefModel) else build_reference(spec)


def reference_statements(
    spec, params: dict, batch: dict | None = None, constants: dict | None = None, digits: int | None = None
) -> dict[str, np.ndarray]:
    """Every statement's value in float64, batched: shape (B, *shape) (B = 1 for a spec with no inputs); the loss
    statement (`L`) holds the per-sample objective, shape (B,).

    `digits`: evaluate in mpmath with that many significant digits instead of float64 (then rounded to float64),
    so a form written naively, such as log(1 + exp(800)), still has its exact value to compare a stable kernel with.
    """
    if digits is not None:
        with mpmath.workdps(digits):
            return _statements(_model(spec), params, batch, constants, True)
    return _statements(_model(spec), params, batch, constants, False)


def _statements(
    model: RefModel, params: dict, batch: dict | None, constants: dict | None, mp: bool
) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    n = None
    for name in model.inputs:
        if batch is None or name not in batch:
            raise EvaluatorError(f"the reference needs input {name!r} in the batch (sampled inputs too)")
        a = np.asarray(batch[name], dtype=np.float64)
        values[name] = _mp_array(a) if mp else a
        n = a.shape[0]
    for name, shp in model.params.items():
        a = np.asarray(params[name], dtype=np.float64).reshape((1, *shp))
        values[name] = _mp_array(a) if mp else a
    consts = dict(model.constants)
    consts.update({k: float(v) for k, v in (constants or {}).items()})
    if mp:
        consts = {k: mpmath.mpf(v) for k, v in consts.items()}
    ev = _Evaluator(values, consts, mp, n or 1)
    ev.carried = {st.name: st.init for st in model.statements if st.init is not None}
    out = {}

    def run(st):
        ndim = 1 + len(st.indices)
        env = {}
        for axis, (sym, size) in enumerate(zip(st.indices, st.shape, strict=True)):
            env[sym] = _axis_range(0, size, axis + 1, ndim)
        res = np.asarray(ev.value(st.body, env, ndim), dtype=object if mp else np.float64)
        lead = res.shape[0] if res.ndim == ndim else 1
        val = np.broadcast_to(res, (lead, *st.shape)).copy()
        if n is not None and lead == 1 and st.name == model.loss_name:
            val = np.broadcast_to(val, (n,)).copy()
        values[st.name] = val
        out[st.name] = val.astype(np.float64) if mp else val

    with np.errstate(all="ignore"):
        pos = 0
        while pos < len(model.statements):
            st = model.statements[pos]
            pending = [c for c in ev.carried if c not in values and _reads(st.body, c)]
            if not pending:
                run(st)
                pos += 1
                continue
            # a recurrence: the statements up to the last carried one they read, evaluated whole again and again
            # (Jacobi): after k sweeps steps 0..k-1 are exact, so T + 1 sweeps give every step as written
            # (a region holds every state its statements read: an LSTM's first gate reads h only, its cell
            # state c is carried too and must start at zero like h)
            end = max(k for k, x in enumerate(model.statements) if x.name in pending)
            while True:
                region = model.statements[pos : end + 1]
                pending = [c for c in ev.carried if c not in values and any(_reads(x.body, c) for x in region)]
                grown = max(k for k, x in enumerate(model.statements) if x.name in pending)
                if grown <= end:
                    break
                end = grown
            for c in pending:
                shape = next(x.shape for x in region if x.name == c)
                values[c] = np.zeros((n or 1, *shape), dtype=object if mp else np.float64)
            steps = max(x.shape[0] for x in region if x.name in ev.carried)
            for _ in range(steps + 1):
                for x in region:
                    run(x)
            pos = end + 1
    return out


def _reads(body, name: str) -> bool:
    return any(str(r.base) == name for r in body.atoms(Indexed))


def mpmath_nan():

    return mpmath.mpf("nan")


def _mp_array(a: np.ndarray) -> np.ndarray:

    out = np.empty(a.shape, dtype=object)
    for idx, v in np.ndenumerate(a):
        out[idx] = mpmath.mpf(float(v))
    return out


def _identifiers_of(spec) -> set[str]:
    import ast

    out = set()
    texts = [d.expr.value for d in spec.forward] + [spec.loss.value] + [b.value for _, b in spec.functions]
    for text in texts:
        try:
            tree = ast.parse(str(text).strip(), mode="eval")
        except SyntaxError:
            continue
        out |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return out


def reference_loss(
    spec, params: dict, batch: dict | None = None, constants: dict | None = None, digits: int | None = None
) -> float:
    """The objective as written (never negated for maximize), reduced over the batch by the spec's reduction
    (in mpmath with `digits` significant digits when given)."""
    model = _model(spec)
    per_sample = reference_statements(model, params, batch, constants, digits)[model.loss_name]
    if not model.inputs:
        return float(per_sample.reshape(-1)[0])
    return float(per_sample.mean() if model.spec.reduction == "mean" else per_sample.sum())


def _axis_range(lo: int, hi_excl: int, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = max(hi_excl - lo, 0)
    return np.arange(lo, hi_excl, dtype=np.int64).reshape(shape)


_UNARY = {
    sympy.exp: np.exp,
    sympy.log: np.log,
    sympy.tanh: np.tanh,
    sympy.sin: np.sin,
    sympy.cos: np.cos,
    sympy.Abs: np.abs,
    sympy.sign: np.sign,
    sympy.re: lambda x: x,  # SymPy wraps what it cannot prove real (Abs of a logsumexp): every value here is real
    sympy.im: np.zeros_like,
}


def _sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _heaviside(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5))


_PRIMS = {
    sigmoid: _sigmoid,
    relu: lambda x: np.maximum(x, 0.0),
    step: lambda x: np.where(np.asarray(x) > 0, 1.0, 0.0),
    softplus: lambda x: np.logaddexp(0.0, x),
    log_sigmoid: lambda x: -np.logaddexp(0.0, np.negative(x)),
    sympy.Heaviside: _heaviside,
}

_RELATIONS = {
    sympy.StrictGreaterThan: np.greater,
    sympy.StrictLessThan: np.less,
    sympy.GreaterThan: np.greater_equal,
    sympy.LessThan: np.less_equal,
    sympy.Equality: np.equal,
    sympy.Unequality: np.not_equal,
}


class _Evaluator:
    """Recursive walk: SymPy node -> NumPy value. Values are scalars or arrays of exactly `ndim` axes: axis 0 is
    the batch (size B, or 1 for what does not depend on a sample), one more axis per open index."""

    def __init__(self, values: dict[str, np.ndarray], constants: dict, mp: bool = False, batch: int = 1):
        self.values = values
        self.constants = constants
        self.mp = mp
        self.batch = batch  # the mini-batch's size: what batch_sum sums over and |B| stands for
        self.carried: dict = {}  # recurrence -> its init
        self.unary: dict
        self.prims: dict
        self.unary, self.prims = _mp_tables() if mp else (_UNARY, _PRIMS)

    def value(self, e, env: dict, ndim: int):
        if e.is_Integer:
            return int(e)
        if e.is_Number or e.is_NumberSymbol:
            if self.mp:
                return mpmath.mpf(e.p) / e.q if e.is_Rational else mpmath.mpf(str(e.evalf(mpmath.mp.dps)))
            return float(e)
        if isinstance(e, Symbol):
            return self.symbol(e, env, ndim)
        if isinstance(e, Indexed):
            return self.indexed(e, env, ndim)
        if isinstance(e, sympy.Add):
            return _fold(np.add, [self.value(a, env, ndim) for a in e.args])
        if isinstance(e, sympy.Mul):
            return _fold(np.multiply, [self.value(a, env, ndim) for a in e.args])
        if isinstance(e, sympy.Pow):
            return self.power(e, env, ndim)
        if isinstance(e, Sum):
            return self.reduce(e.function, list(e.limits), env, ndim, "sum")
        if isinstance(e, LogSumExp):
            return self.reduce(e.function, list(e.limits), env, ndim, "lse")
        if isinstance(e, sympy.Piecewise):
            out: np.ndarray | float = np.nan
            for value, cond in reversed(e.args):
                out = np.where(self.value(cond, env, ndim), self.value(value, env, ndim), out)
            return out
        if isinstance(e, sympy.Max | sympy.Min):
            fn: Callable = np.maximum if isinstance(e, sympy.Max) else np.minimum
            return _fold(fn, [self.value(a, env, ndim) for a in e.args])
        if e.func in _RELATIONS:
            return _RELATIONS[e.func](self.value(e.args[0], env, ndim), self.value(e.args[1], env, ndim))
        if isinstance(e, sympy.And | sympy.Or):
            fn = np.logical_and if isinstance(e, sympy.And) else np.logical_or
            return _fold(fn, [self.value(a, env, ndim) for a in e.args])
        if isinstance(e, sympy.ITE):  # what SymPy makes of a Piecewise inside a condition
            c, t, f = (self.value(a, env, ndim) for a in e.args)
            return np.where(c, t, f)
        if isinstance(e, sympy.Not):
            return np.logical_not(self.value(e.args[0], env, ndim))
        if e is sympy.true or e is sympy.false:
            return bool(e)
        if e.func in self.unary:
            arg = self.value(e.args[0], env, ndim)
            return self.unary[e.func](arg if self.mp else np.asarray(arg, dtype=np.float64))
        if e.func in self.prims:
            return self.prims[e.func](self.value(e.args[0], env, ndim))
        if isinstance(e, BatchSum):  # over the mini-batch: one value per batch (lead axis 1)
            v = np.asarray(self.value(e.args[0], env, ndim))
            v = v.reshape((1,) * (ndim - v.ndim) + v.shape) if v.ndim < ndim else v
            return v.sum(axis=0, keepdims=True) if v.shape[0] > 1 else v * self.batch
        row = row_of(e)
        if row is not None:  # any other row of the primitive table: its mpmath semantics, element by element
            args = [self.value(a, env, ndim) for a in e.args]
            if self.mp:
                return np.frompyfunc(row.reference, len(args), 1)(*args)
            fn = np.vectorize(lambda *xs: float(row.reference(*(mpmath.mpf(float(x)) for x in xs))), otypes=[float])
            return fn(*[np.asarray(a, dtype=np.float64) for a in args])
        raise EvaluatorError(f"the reference evaluator does not know {type(e).__name__}: {e}")

    def symbol(self, s: Symbol, env: dict, ndim: int):
        if s in env:
            return env[s]
        if s == BATCH_SIZE:
            return self.batch
        if s.is_integer:
            raise EvaluatorError(f"index {s} is not bound here")
        if s.name in self.constants and s.name not in self.values:
            return self.constants[s.name]
        a = self.values[s.name]  # a 0-d array: shape (B or 1,) after the batch axis
        return a.reshape((a.shape[0],) + (1,) * (ndim - 1))

    def indexed(self, e: Indexed, env: dict, ndim: int):
        a = self.values[str(e.base)]
        idx, raw = [], []
        for axis, ix in enumerate(e.indices):
            v = np.asarray(self.value(ix, env, ndim))
            if v.dtype.kind not in "iu":
                raise EvaluatorError(f"index {ix} of {e} is not an integer")
            raw.append(v)
            idx.append(np.clip(v, 0, a.shape[axis + 1] - 1))  # out of range only where a Sum's mask drops it
        lead = np.arange(a.shape[0]).reshape((a.shape[0],) + (1,) * (ndim - 1)) if a.shape[0] > 1 else 0
        got = a[(lead, *idx)]
        name = str(e.base)
        if name in self.carried:  # a recurrence read before its first step is its init
            init = self.carried[name]
            if isinstance(init, str):
                b = self.values[init]
                lead_b = np.arange(b.shape[0]).reshape((b.shape[0],) + (1,) * (ndim - 1)) if b.shape[0] > 1 else 0
                before = b[(lead_b, *idx[1:])] if b.ndim > 1 else b.reshape((b.shape[0],) + (1,) * (ndim - 1))
            else:
                before = init
            return np.where(raw[0] < 0, before, got)
        return got

    def power(self, e: sympy.Pow, env: dict, ndim: int):
        if self.mp:
            base = np.asarray(self.value(e.base, env, ndim), dtype=object)
            ex = e.exp
            if ex == sympy.Rational(1, 2):
                return self.unary["sqrt"](base)
            if ex.is_Integer:
                return base ** int(ex)
            return np.frompyfunc(lambda b, x: b**x if b >= 0 else mpmath_nan(), 2, 1)(base, self.value(ex, env, ndim))
        base = np.asarray(self.value(e.base, env, ndim), dtype=np.float64)
        ex = e.exp
        if ex == sympy.Rational(1, 2):
            return np.sqrt(base)
        if ex == -1:
            return 1.0 / base
        if ex.is_Integer:
            return np.power(base, float(int(ex)))
        return np.power(base, np.asarray(self.value(ex, env, ndim), dtype=np.float64))

    def reduce(self, body, limits: list, env: dict, ndim: int, kind: str):
        """Sum (or log-sum-exp) over the outermost limit: SymPy lists limits innermost first."""
        var, lo_e, hi_e = limits[-1]
        lo = np.asarray(self.value(lo_e, env, ndim))
        hi = np.asarray(self.value(hi_e, env, ndim))
        lo_min, hi_max = int(lo.min()), int(hi.max())
        sub = {s: v[..., None] if np.ndim(v) else v for s, v in env.items()}
        sub[var] = j = _axis_range(lo_min, max(hi_max + 1, lo_min), ndim, ndim + 1)
        mask = (j >= (lo[..., None] if lo.ndim else lo)) & (j <= (hi[..., None] if hi.ndim else hi))
        if len(limits) > 1:  # the inner limits may depend on this one (triangular sums)
            val = self.reduce(body, limits[:-1], sub, ndim + 1, kind)
        else:
            val = self.value(body, sub, ndim + 1)
        shape = np.broadcast_shapes(np.shape(val), mask.shape)
        val = np.broadcast_to(val, shape)
        mask = np.broadcast_to(mask, shape)
        if kind == "sum":
            return np.where(mask, val, 0.0).sum(axis=-1)
        if self.mp:  # no overflow to guard against: mpmath's exponent range is unbounded
            return self.unary[sympy.log](np.where(mask, self.unary[sympy.exp](val), 0).sum(axis=-1))
        val = np.where(mask, val, -np.inf)
        m = val.max(axis=-1, keepdims=True) if shape[-1] else np.full(shape[:-1] + (1,), -np.inf)
        m_safe = np.where(np.isfinite(m), m, 0.0)
        return (m_safe + np.log(np.exp(val - m_safe).sum(axis=-1, keepdims=True)))[..., 0]


def _mp_tables() -> tuple[dict, dict]:
    """The same functions over object arrays of mpmath numbers (exact forms: nothing overflows there)."""

    def f(fn):
        return np.frompyfunc(fn, 1, 1)

    nan = mpmath.mpf("nan")

    def log(x):  # real semantics, as float64 has them: no complex results
        return mpmath.log(x) if x > 0 else (mpmath.mpf("-inf") if x == 0 else nan)

    def sqrt(x):
        return mpmath.sqrt(x) if x >= 0 else nan

    unary = {
        sympy.exp: f(mpmath.exp),
        sympy.log: f(log),
        sympy.tanh: f(mpmath.tanh),
        sympy.sin: f(mpmath.sin),
        sympy.cos: f(mpmath.cos),
        sympy.Abs: f(abs),
        sympy.sign: f(mpmath.sign),
        sympy.re: f(lambda x: x),
        sympy.im: f(lambda x: 0),
        "sqrt": f(sqrt),
    }
    prims = {
        sigmoid: f(lambda x: 1 / (1 + mpmath.exp(-x))),
        relu: f(lambda x: x if x > 0 else 0 * x),
        step: f(lambda x: mpmath.mpf(1) if x > 0 else mpmath.mpf(0)),
        softplus: f(lambda x: mpmath.log1p(mpmath.exp(x))),
        log_sigmoid: f(lambda x: -mpmath.log1p(mpmath.exp(-x))),
        sympy.Heaviside: f(lambda x: mpmath.mpf(1) if x > 0 else (mpmath.mpf(0) if x < 0 else mpmath.mpf(0.5))),
    }
    return unary, prims


def _fold(fn, xs: list):
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out
