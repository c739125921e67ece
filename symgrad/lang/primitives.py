"""The one table of primitives: every elementwise function a spec may call, and the ones derivatives introduce.

A row holds everything about one function: its spec name and arity, its SymPy semantics (a class made from the row's
derivative and LaTeX, or SymPy's own function), a high-precision reference (mpmath, for tests), the name of its
numeric form on each backend, and the numeric rewrites that produce it. The parser (frontend/exprs.py) builds a
row's SymPy callable; the printers (backends/base.py, backends/cuda/codegen.py) print a row's call through
`helper_name`; backends/cpu/mathfns.py and backends/cuda/mathfns.py hold the numeric forms; the CUDA template
imports `helper_imports("cuda")`; tests/test_primitives.py proves every backend implements every row and runs an
all-primitives spec on each. Recipe: docs/architecture.md.

Helper names per backend: `None` means SymPy's own printer (a Python builtin such as `abs`/`max`, or a power such as
`math.sqrt`); `"math.x"` is printed as is; any other name is a function of the backend's helper module (CPU:
`symgrad.backends.cpu.mathfns`, called `_mf.name(...)`; CUDA: `symgrad.backends.cuda.mathfns`, imported by name).
`cpu32` names the CPU entry that also takes the witness array (`_mf.name(x, _theta)`), so one kernel picks a
float32 fast path by dtype.

Subgradient conventions at kinks (what every framework uses): relu'(0) = 0, sign' = 0, Max/Min at a k-way tie split
1/k each (SymPy's Heaviside(0) = 1/2 for two arguments; ir/derive.py's _TieMax for three or more), clip passes the
gradient to x on lo <= x <= hi, to lo where x < lo, to hi where x > hi, and where(cond, a, b) sends it to the branch
taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import sympy
from sympy.core.function import ArgumentIndexError


@dataclass(frozen=True)
class Primitive:
    """One row of the table."""

    name: str  # spec name (or, for internal rows, the SymPy class it prints)
    sympy: Callable  # what the parser calls with SymPy arguments
    arity: int | tuple[int, int | None]  # exact, or (min, max) with None for unbounded
    reference: Callable  # mpmath semantics, for tests (and evalf of the classes made here)
    cpu: str | None = None  # CPU float64 form (see the module docstring)
    cpu32: str | None = None  # CPU dtype-aware entry (float32 fast path), or None: `cpu` serves both dtypes
    cuda: str | None = None  # CUDA device form
    spec: bool = True  # callable from a spec; False: only introduced by derivatives (step, heaviside, digamma)
    test_args: tuple[str, ...] = ("x",)  # argument kinds for the all-primitives test (x y pos lo hi cond mid unit)
    aliases: tuple[str, ...] = ()
    rewrites: tuple[Callable, ...] = ()  # numeric rewrites whose result is this row (see stable_rewrites)
    doc: str = ""

    @property
    def nargs(self) -> int:
        return self.arity if isinstance(self.arity, int) else self.arity[0]


TABLE: list[Primitive] = []


def _row(row: Primitive) -> Callable:
    TABLE.append(row)
    return row.sympy


def _function(
    name: str,
    nargs: int,
    derivative: Callable,
    latex: Callable,
    reference: Callable,
    doc: str,
    real: bool | None = None,
) -> type[sympy.Function]:
    """A SymPy function class from a row's derivative (one partial per argument) and LaTeX."""

    def fdiff(self, argindex=1):
        parts = derivative(*self.args)
        if not 1 <= argindex <= len(parts):
            raise ArgumentIndexError(self, argindex)
        return parts[argindex - 1]

    def _latex(self, printer, exp=None):
        body = latex(*[printer._print(a) for a in self.args])
        return rf"\left({body}\right)^{{{exp}}}" if exp else body

    def _eval_is_real(self):
        return real if real is not None else all(a.is_real for a in self.args) or None

    def _eval_evalf(self, prec):
        args = [a.evalf(prec) for a in self.args]
        if not all(a.is_Number for a in args):
            return None
        with mpmath.workprec(prec):
            value = reference(*[a._to_mpmath(prec) for a in args])
        return sympy.Float(value, precision=prec)

    attrs = {
        "nargs": nargs,
        "fdiff": fdiff,
        "_latex": _latex,
        "_eval_is_real": _eval_is_real,
        "_eval_evalf": _eval_evalf,
        "__doc__": doc,
        "__module__": __name__,
    }
    return type(name, (sympy.Function,), attrs)


def _define(
    name: str,
    nargs: int,
    derivative: Callable,
    latex: Callable,
    reference: Callable,
    doc: str,
    real: bool | None = None,
    **row,
) -> type[sympy.Function]:
    cls = _function(name, nargs, derivative, latex, reference, doc, real)
    TABLE.append(Primitive(name, cls, nargs, reference, doc=doc, **row))
    return cls


def _lr(x):  # LaTeX \left( x \right)
    return rf"\left({x}\right)"


# -- numeric rewrites (issue 11): hand-written unstable forms -> the stable primitive ------------------------------
# Each rule belongs to the row it produces (`Primitive.rewrites`); they are tried in table order, so a specific form
# (log(1 + exp(a)) -> softplus) wins over a general one (log(1 + a) -> log1p).
def _one_plus(e) -> sympy.Expr | None:
    """x when e is 1 + x (two terms), else None."""
    if isinstance(e, sympy.Add) and len(e.args) == 2 and sympy.S.One in e.args:
        return e.args[0] if e.args[1] == 1 else e.args[1]
    return None


def _negated(e) -> sympy.Expr | None:
    """x when e is -x (a product with -1), else None."""
    if e is not None and isinstance(e, sympy.Mul) and e.args[0] == -1:
        return sympy.Mul(*e.args[1:])
    return None


def _rw_softplus(e) -> sympy.Expr | None:
    """log(1 + exp(a)) -> softplus(a)."""
    other = _one_plus(e.args[0]) if isinstance(e, sympy.log) else None
    return softplus(other.args[0]) if isinstance(other, sympy.exp) else None


def _rw_log_sigmoid(e) -> sympy.Expr | None:
    """log(sigmoid(a)) -> log_sigmoid(a); log(1 - sigmoid(a)) -> log_sigmoid(-a)."""
    if not isinstance(e, sympy.log):
        return None
    if isinstance(e.args[0], sigmoid):
        return log_sigmoid(e.args[0].args[0])
    neg = _negated(_one_plus(e.args[0]))
    return log_sigmoid(-neg.args[0]) if isinstance(neg, sigmoid) else None


def _rw_log1p(e) -> sympy.Expr | None:
    """log(1 + a) -> log1p(a) (tried after softplus' and log_sigmoid's rules: the table's order)."""
    other = _one_plus(e.args[0]) if isinstance(e, sympy.log) else None
    return log1p(other) if other is not None else None


def _rw_logcosh(e) -> sympy.Expr | None:
    """log(cosh(a)), the log-cosh loss, as two exact forms: log1p(2 sinh(a/2)^2) for |a| < 1 (cosh(a) - 1 without
    the cancellation that leaves log(cosh(1e-6)) with 4 digits) and |a| + log1p(exp(-2|a|)) - log(2) beyond (finite
    where cosh overflows: |a| > 710 in float64, > 89 in float32). Both derivatives are tanh(a), not inf/inf."""
    if not (isinstance(e, sympy.log) and isinstance(e.args[0], sympy.cosh)):
        return None
    a = e.args[0].args[0]
    small = log1p(2 * sympy.sinh(a / 2) ** 2)
    large = sympy.Abs(a) + log1p(sympy.exp(-2 * sympy.Abs(a))) - sympy.log(2)
    return sympy.Piecewise((small, sympy.Abs(a) < 1), (large, True))


def _rw_expm1(e) -> sympy.Expr | None:
    """exp(a) - 1 -> expm1(a); 1 - exp(a) -> -expm1(a) (two-term sums, as written)."""
    if not (isinstance(e, sympy.Add) and len(e.args) == 2):
        return None
    a, b = e.args
    if a == -1 and isinstance(b, sympy.exp):
        return expm1(b.args[0])
    neg = _negated(b)
    if a == 1 and isinstance(neg, sympy.exp):
        return -expm1(neg.args[0])
    return None


def _rw_sigmoid(e) -> sympy.Expr | None:
    """1/(1 + exp(a)) -> sigmoid(-a) (a hand-written sigmoid: its derivative is inf/inf at a = 800), and
    exp(a) * sigmoid(-a) -> sigmoid(a) (what e^a / (1 + e^a) becomes after the first rule)."""
    if isinstance(e, sympy.Pow) and e.exp == -1:
        other = _one_plus(e.base)
        if isinstance(other, sympy.exp):
            return sigmoid(-other.args[0])
    if isinstance(e, sympy.Mul):
        exps = [f for f in e.args if isinstance(f, sympy.exp)]
        for f in exps:
            s = sigmoid(-f.args[0])
            if s in e.args:
                rest = list(e.args)
                rest.remove(f)
                rest.remove(s)
                return sympy.Mul(sigmoid(f.args[0]), *rest)
    return None


# -- SymPy's own functions: their semantics, derivative and LaTeX are SymPy's ------------------------------------
_row(Primitive("exp", sympy.exp, 1, mpmath.exp, "math.exp", "exp", "math.exp"))
_row(Primitive("log", sympy.log, 1, mpmath.log, "math.log", "log", "math.log", test_args=("pos",)))
_row(Primitive("sqrt", sympy.sqrt, 1, mpmath.sqrt, test_args=("pos",), doc="printed as a power: math.sqrt"))
_row(Primitive("abs", sympy.Abs, 1, abs, aliases=("Abs",), doc="abs'(0) = sign(0) = 0"))
_row(Primitive("tanh", sympy.tanh, 1, mpmath.tanh, "math.tanh", "tanh", "math.tanh"))


def _tanh_real_if_argument_is(self):
    """tanh(x) is real and finite for real x; otherwise "unknown", asked no further. SymPy's own handlers go on to
    `x.as_real_imag()` and `im % (pi/2)`, a polynomial gcd of the whole argument: a tanh of a maybe-complex
    sqrt(s + 1/2) inside exp(...) parsed for over 5 minutes (random fuzz, seed 349). Every value in a spec is
    real, so the answer "unknown" costs nothing (kernels compute in real arithmetic either way)."""
    return True if self.args[0].is_extended_real else None


# SymPy precomputes each class's assumption handlers (`_prop_handler`); these two replace tanh's in this process
for _fact in ("real", "finite"):
    sympy.tanh._prop_handler[_fact] = _tanh_real_if_argument_is
_row(Primitive("sin", sympy.sin, 1, mpmath.sin, "math.sin", None, "math.sin"))
_row(Primitive("cos", sympy.cos, 1, mpmath.cos, "math.cos", None, "math.cos"))
_row(Primitive("sinh", sympy.sinh, 1, mpmath.sinh, "math.sinh", None, "math.sinh", test_args=("mid",)))
_row(Primitive("cosh", sympy.cosh, 1, mpmath.cosh, "math.cosh", None, "math.cosh", test_args=("mid",)))
_row(Primitive("atan", sympy.atan, 1, mpmath.atan, "math.atan", None, "math.atan"))
# The rest of SymPy's real elementwise functions a spec is likely to write (inverse trigonometric and hyperbolic,
# tan, erfc, atan2(y, x)): their derivatives and LaTeX are SymPy's, their values libm's.
_row(Primitive("tan", sympy.tan, 1, mpmath.tan, "math.tan", None, "math.tan", test_args=("unit",)))
_row(Primitive("asin", sympy.asin, 1, mpmath.asin, "math.asin", None, "math.asin", test_args=("unit",)))
_row(Primitive("acos", sympy.acos, 1, mpmath.acos, "math.acos", None, "math.acos", test_args=("unit",)))
_row(Primitive("asinh", sympy.asinh, 1, mpmath.asinh, "math.asinh", None, "math.asinh"))
_row(Primitive("acosh", sympy.acosh, 1, mpmath.acosh, "math.acosh", None, "math.acosh", test_args=("pos",)))
_row(Primitive("atanh", sympy.atanh, 1, mpmath.atanh, "math.atanh", None, "math.atanh", test_args=("unit",)))
_row(Primitive("erfc", sympy.erfc, 1, mpmath.erfc, "math.erfc", None, "math.erfc"))
_row(Primitive("atan2", sympy.atan2, 2, mpmath.atan2, "math.atan2", None, "math.atan2", test_args=("x", "pos")))
_row(
    Primitive("erf", sympy.erf, 1, mpmath.erf, "math.erf", None, "math.erf", doc="exact GELU: x*(1 + erf(x/sqrt(2)))/2")
)
_row(Primitive("Max", sympy.Max, (2, None), max, test_args=("x", "y"), doc="printed as nested max(a, b)"))
_row(Primitive("Min", sympy.Min, (2, None), min, test_args=("x", "y"), doc="printed as nested min(a, b)"))

# -- introduced by derivatives only ------------------------------------------------------------------------------
_row(
    Primitive(
        "Heaviside",
        sympy.Heaviside,
        1,
        lambda x: mpmath.mpf(1) if x > 0 else mpmath.mpf(0 if x < 0 else 0.5),
        "heaviside",
        None,
        "heaviside",
        spec=False,
        doc="Max/Min's derivative; H(0) = 1/2",
    )
)
_row(Primitive("sympy.sign", sympy.sign, 1, mpmath.sign, "sign", None, "sign", spec=False, doc="Abs's derivative"))

step = _define(
    "step",
    1,
    lambda x: [sympy.S.Zero],
    lambda x: rf"\mathbb{{1}}\left[{x} > 0\right]",
    lambda x: mpmath.mpf(1 if x > 0 else 0),
    "Indicator of x > 0: relu's derivative (the subgradient 0 at the kink).",
    real=True,
    cpu="step",
    cuda="step",
    spec=False,
)

digamma = _define(
    "digamma",
    1,
    lambda x: [sympy.polygamma(1, x)],
    lambda x: rf"\psi{_lr(x)}",
    mpmath.digamma,
    "psi(x) = d/dx log|Gamma(x)|: lgamma's derivative.",
    cpu="digamma",
    cuda="digamma",
    spec=False,
    test_args=("pos",),
)

# -- symgrad's functions: semantics, derivative and LaTeX written here -------------------------------------------
sigmoid: type[sympy.Function] = _define(
    "sigmoid",
    1,
    lambda x: [sigmoid(x) * (1 - sigmoid(x))],
    lambda x: rf"\sigma{_lr(x)}",
    lambda x: 1 / (1 + mpmath.exp(-x)),
    "Logistic function. Its derivative is written with its own value, so backward reuses the stored forward.",
    cpu="sigmoid",
    cpu32="sigmoid_w",
    cuda="sigmoid",
    rewrites=(_rw_sigmoid,),
)

relu = _define(
    "relu",
    1,
    lambda x: [step(x)],
    lambda x: rf"\operatorname{{relu}}{_lr(x)}",
    lambda x: max(x, mpmath.mpf(0)),
    "max(x, 0); relu'(0) = 0.",
    cpu="relu",
    cuda="relu",
)

softplus = _define(
    "softplus",
    1,
    lambda x: [sigmoid(x)],
    lambda x: rf"\operatorname{{softplus}}{_lr(x)}",
    lambda x: mpmath.log1p(mpmath.exp(x)),
    "log(1 + e^x), printed in the stable form max(x, 0) + log1p(e^-|x|).",
    cpu="softplus",
    cpu32="softplus_w",
    cuda="softplus",
    rewrites=(_rw_softplus,),
)

log_sigmoid = _define(
    "log_sigmoid",
    1,
    lambda x: [sigmoid(-x)],
    lambda x: rf"\log\sigma{_lr(x)}",
    lambda x: -mpmath.log1p(mpmath.exp(-x)),
    "log σ(x) = -softplus(-x): finite for x = -1e4 where log(sigmoid(x)) is -inf.",
    cpu="log_sigmoid",
    cpu32="log_sigmoid_w",
    cuda="log_sigmoid",
    rewrites=(_rw_log_sigmoid,),
)

log1p = _define(
    "log1p",
    1,
    lambda x: [1 / (1 + x)],
    lambda x: rf"\log\left(1 + {x}\right)",
    mpmath.log1p,
    "log(1 + x), exact for tiny x.",
    cpu="math.log1p",
    cpu32="log1p",
    cuda="math.log1p",
    test_args=("pos",),
    rewrites=(_rw_log1p, _rw_logcosh),
)

expm1 = _define(
    "expm1",
    1,
    lambda x: [sympy.exp(x)],
    lambda x: rf"\left(e^{{{x}}} - 1\right)",
    mpmath.expm1,
    "e^x - 1, exact for tiny x.",
    cpu="math.expm1",
    cpu32="expm1",
    cuda="math.expm1",
    rewrites=(_rw_expm1,),
)

lgamma = _define(
    "lgamma",
    1,
    lambda x: [digamma(x)],
    lambda x: rf"\log\Gamma{_lr(x)}",
    lambda x: mpmath.log(abs(mpmath.gamma(x))),
    "log|Γ(x)| (Python's math.lgamma): negative binomial and Dirichlet likelihoods.",
    cpu="math.lgamma",
    cuda="math.lgamma",
    test_args=("pos",),
    aliases=("loggamma",),  # SymPy's name: specs are written in SymPy's syntax (a Student-t likelihood used it)
)

sign = _define(
    "sign",
    1,
    lambda x: [sympy.S.Zero],
    lambda x: rf"\operatorname{{sign}}{_lr(x)}",
    mpmath.sign,
    "-1, 0 or 1; its derivative is 0 everywhere (the subgradient at 0 included).",
    cpu="sign",
    cuda="sign",
)


def _clip_parts(x, lo, hi):
    inside = sympy.Piecewise((1, sympy.And(x >= lo, x <= hi)), (0, True))
    return [inside, sympy.Piecewise((1, x < lo), (0, True)), sympy.Piecewise((1, x > hi), (0, True))]


clip = _define(
    "clip",
    3,
    _clip_parts,
    lambda x, lo, hi: rf"\operatorname{{clip}}\left({x}, {lo}, {hi}\right)",
    lambda x, lo, hi: min(max(x, lo), hi),
    "min(max(x, lo), hi), NumPy's clip.",
    cpu="clip",
    cuda="clip",
    test_args=("x", "lo", "hi"),
)


def where(cond, a, b):
    """where(cond, a, b): a where cond holds, else b. cond is a comparison (or and/or/not of comparisons)."""
    return sympy.Piecewise((a, cond), (b, True))


_row(
    Primitive(
        "where",
        where,
        3,
        lambda c, a, b: a if c else b,
        test_args=("cond", "x", "y"),
        doc="a Piecewise: printed as a conditional expression on every backend",
    )
)

# Named constants. A spec's own dim, constant or array of the same name wins (`E` is a common dim name).
CONSTANTS: dict[str, sympy.Expr] = {"pi": sympy.pi, "E": sympy.E}

# -- lookups the parser and the printers use ---------------------------------------------------------------------
ELEMENTWISE: dict[str, Primitive] = {n: r for r in TABLE if r.spec for n in (r.name, *r.aliases)}
_BY_CLASS: dict[type, Primitive] = {r.sympy: r for r in TABLE if isinstance(r.sympy, type)}


def row_of(expr) -> Primitive | None:
    """The row that prints `expr` (a call of a primitive), or None."""
    return _BY_CLASS.get(type(expr))


def helper_name(row: Primitive, backend: str, dtype_aware: bool = False) -> str | None:
    """The printed callable of a row on a backend ("cpu", "cpu32" when a witness is available, "cuda")."""
    if backend == "cpu" and dtype_aware and row.cpu32:
        return row.cpu32
    return getattr(row, "cuda" if backend == "cuda" else "cpu")


def helper_imports(backend: str) -> list[str]:
    """Names a backend's module imports from its helper module (the CUDA template's import line)."""
    names = {helper_name(r, backend) for r in TABLE} | ({r.cpu32 for r in TABLE} if backend == "cpu" else set())
    return sorted(n for n in names if n and "." not in n)


REWRITES: tuple[Callable, ...] = tuple(rule for r in TABLE for rule in r.rewrites)  # in table order


def stable_rewrites(expr):
    """Apply every rewrite bottom-up until nothing changes. Run on statement bodies before derivation (so the
    derivatives are of the stable form too) and on every printed body after it."""
    if not isinstance(expr, sympy.Basic):
        return expr
    memo: dict = {}

    def walk(e):
        if e in memo:
            return memo[e]
        out = e
        if e.args and not e.is_Atom and not isinstance(e, sympy.Indexed):
            args = tuple(walk(a) for a in e.args)
            if args != e.args:
                out = e.func(*args)
        for _ in range(8):
            for rule in REWRITES:
                new = rule(out) if isinstance(out, sympy.Expr) else None
                if new is not None and new != out:
                    out = walk(new)
                    break
            else:
                break
        memo[e] = out
        return out

    return walk(expr)
