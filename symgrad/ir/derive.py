"""Derive stage: reverse mode over statements (DESIGN.md), SymPy for the local calculus.

For each forward statement `out[I] = E0 + Σ_t Sum_{J_t} g_t` in reverse order, every read `R` (an `Indexed` such as
`W[h, j]`, or a 0-d array symbol) of something that needs a gradient is replaced by a plain real symbol, the body
piece that holds it is differentiated with `sympy.diff`, and the adjoint contribution is

    R_bar[index of R] += out_bar[I] * ∂piece/∂R      over the loops I (and J_t for a read inside Sum_t).

Reads inside a Sum loop over the Sum's indices too, so parameter sharing accumulates, affine reads scatter, and
triangular bounds carry over. A LogSumExp statement contributes out_bar * exp(g - out) * ∂g/∂R, which reuses the stored
value. The stored output also replaces the body in its own derivative (σ' = y(1 - y), tanh' = 1 - y²).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy import Indexed, IndexedBase, Symbol
from sympy.core.logic import fuzzy_and

from symgrad.errors import SpecError
from symgrad.ir.graph import ArrayKind, Program, Statement, split_body
from symgrad.lang.library import BatchSum, LogSumExp, Sum, relu, step


@dataclass
class Loop:
    var: Symbol
    lo: sympy.Expr
    hi: sympy.Expr  # inclusive


@dataclass
class Contribution:
    """`target_bar[index] += expr` over `loops` (outermost first)."""

    target: str
    index: tuple
    loops: list[Loop]
    expr: sympy.Expr
    source: str


@dataclass
class Derivation:
    program: Program
    needs_grad: set[str]
    adjoint_bases: dict[str, sympy.Basic]  # array name -> IndexedBase / Symbol of its adjoint
    steps: list[tuple[Statement, list[Contribution]]]  # reverse order of the forward statements

    def adjoint_read(self, name: str, index: tuple = ()) -> sympy.Expr:
        base = self.adjoint_bases[name]
        return base[index] if index else base


def derive(program: Program) -> Derivation:
    arrays = program.arrays
    needs = set(a.name for a in program.params)
    reads = {st.name: {_array_name(r) for r in _reads(st.body, arrays)} for st in program.statements}
    size = -1
    while size != len(needs):  # one pass unless a recurrence reads a later statement
        size = len(needs)
        for st in program.statements:
            if reads[st.name] & needs:
                needs.add(st.name)
    # keep only what also reaches the loss: a statement the loss never reads has no adjoint to propagate
    reaches = {program.loss_name}
    size = -1
    while size != len(reaches):
        size = len(reaches)
        for st in reversed(program.statements):
            if st.name in reaches:
                reaches |= reads[st.name]
    needs &= reaches
    if program.loss_name not in needs:
        raise SpecError(
            "the loss does not depend on any parameter, so there is nothing to differentiate",
            program.spec.path,
            program.spec.loss.line,
        )
    bases = {}
    for name in needs:
        shape = arrays[name].shape
        code = program.adjoint[name]
        bases[name] = Symbol(code, real=True) if not shape else IndexedBase(code, real=True)
    d = Derivation(program, needs, bases, [])
    for st in reversed(program.statements):
        if st.name not in needs:
            continue
        d.steps.append((st, _statement_adjoints(st, d)))
    return d


def _array_name(read) -> str:
    return str(read.base) if isinstance(read, Indexed) else str(read)


_SCALARS: dict = {}


def _scalar_names(arrays: dict) -> set[str]:
    """Names of 0-d arrays, computed once per program (per statement it was quadratic in the spec's size)."""
    if _SCALARS.get("arrays") is not arrays or _SCALARS.get("len") != len(arrays):  # holds the dict: no id reuse
        _SCALARS.update(arrays=arrays, len=len(arrays), names={n for n, a in arrays.items() if not a.shape})
    return _SCALARS["names"]


def _reads(expr: sympy.Expr, arrays: dict) -> list:
    names = _scalar_names(arrays)
    out = set(expr.atoms(Indexed))
    out |= {s for s in expr.atoms(Symbol) if s.name in names and not s.is_integer}
    return sorted(out, key=sympy.default_sort_key)


def _out_read(st: Statement, d: Derivation):
    base = d.program.arrays[st.name].base
    return base[st.indices] if st.indices else base


def _statement_adjoints(st: Statement, d: Derivation) -> list[Contribution]:
    out_bar = d.adjoint_read(st.name, st.indices)
    out_val = _out_read(st, d)
    outer = index_loops(st)
    contributions: list[Contribution] = []
    if isinstance(st.body, LogSumExp):
        loops = outer + limit_loops(st.body.limits)
        g = st.body.function
        weight = sympy.exp(g - out_val)
        contributions += _pieces(g, out_bar * weight, loops, st, d, reuse=None)
        return contributions
    if isinstance(st.body, BatchSum):  # every sample's summand gets out_bar (lower loops over the batch)
        return _pieces(st.body.args[0], out_bar, outer, st, d, reuse=None)
    e0, sums = split_body(st.body)
    if e0 != 0:
        contributions += _pieces(e0, out_bar, outer, st, d, reuse=(st.body, out_val) if not sums else None)
    for term in sums:
        contributions += _pieces(term.function, out_bar, outer + limit_loops(term.limits), st, d, reuse=None)
    return contributions


def limit_loops(limits) -> list[Loop]:
    """A Sum's limits as loops, outermost first (SymPy stores limits innermost first)."""
    return [Loop(v, lo, hi) for v, lo, hi in reversed(limits)]


def index_loops(st: Statement) -> list[Loop]:
    """One loop per index of a statement's target, over its whole axis."""
    return [Loop(i, sympy.Integer(0), sympy.Integer(n - 1)) for i, n in zip(st.indices, st.shape, strict=True)]


def _pieces(
    piece: sympy.Expr, seed: sympy.Expr, loops: list[Loop], st: Statement, d: Derivation, reuse
) -> list[Contribution]:
    reads = [r for r in _reads(piece, d.program.arrays) if _array_name(r) in d.needs_grad]
    if not reads:
        return []
    plain = {r: sympy.Dummy(f"r{n}", real=True) for n, r in enumerate(reads)}
    back = {v: k for k, v in plain.items()}
    scalar = _ties_split_evenly(piece.xreplace(plain))
    out = []
    for r in reads:
        partial = _ties_restored(sympy.diff(scalar, plain[r]))
        if partial.has(sympy.Derivative) or partial.has(sympy.Subs):
            fns = sorted({type(f).__name__ for f in partial.atoms(sympy.Derivative)} or {"?"})
            raise SpecError(
                f"no derivative rule for a function in statement {st.name} ({', '.join(fns)})",
                d.program.spec.path,
                st.line,
            )
        partial = partial.xreplace(back)
        if reuse is not None:
            partial = _reuse_stored(partial, *reuse)
        if partial == 0:
            continue
        # powsimp first: d/dp (1-p)**g is g*(1-p)**g/(1-p) until combined, and that divides by 0 at p = 1
        partial = sympy.factor_terms(sympy.powsimp(partial, combine="exp"))
        out.append(
            Contribution(
                _array_name(r), tuple(r.indices) if isinstance(r, Indexed) else (), list(loops), seed * partial, st.name
            )
        )
    return out


class _TieMax(sympy.Function):
    """Max of three or more arguments while it is differentiated. SymPy's rule, Heaviside(a_k - Max(others)),
    gives every tied argument 1/2, so a k-way tie (a 2x2 max-pool over a blank patch: four equal values) got k/2
    times the gradient. Here a tie splits it evenly, 1/k each, so the weights always sum to 1 (a subgradient);
    two arguments keep SymPy's 1/2 each."""

    pick = sympy.Max

    def _eval_is_extended_real(self):  # a Max of reals is real: keeps SymPy's assumption queries short
        return fuzzy_and(a.is_extended_real for a in self.args)

    def _eval_is_finite(self):
        return fuzzy_and(a.is_finite for a in self.args)

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        args = [_ties_restored(a) for a in self.args]
        picked = []
        for k, a in enumerate(args):
            # against the others, recomputed here, not against the stored Max: a stored value and a recomputed
            # argument may round apart (reassociated sums), and then no argument would be picked (0/0)
            best = self.pick(*(b for j, b in enumerate(args) if j != k))
            picked.append(sympy.Piecewise((1, a >= best if self.pick is sympy.Max else a <= best), (0, True)))
        return picked[argindex - 1] / sympy.Add(*picked)


class _TieMin(_TieMax):
    """Min of three or more arguments while it is differentiated (see _TieMax)."""

    pick = sympy.Min


def _ties_split_evenly(expr: sympy.Expr) -> sympy.Expr:
    return expr.replace(
        lambda e: isinstance(e, (sympy.Max, sympy.Min)) and len(e.args) >= 3,
        lambda e: (_TieMax if isinstance(e, sympy.Max) else _TieMin)(*e.args),
    )


def _ties_restored(expr: sympy.Expr) -> sympy.Expr:
    return expr.replace(lambda e: isinstance(e, _TieMax), lambda e: e.pick(*e.args))


def _reuse_stored(partial: sympy.Expr, body: sympy.Expr, out_val) -> sympy.Expr:
    """Backward reads the stored forward value: σ(s)(1-σ(s)) -> y(1-y), 1 - tanh² -> 1 - y², step(s) -> step(y)."""
    if body.is_Atom or isinstance(body, Indexed):
        return partial
    partial = partial.subs(body, out_val)
    if isinstance(body, relu):
        partial = partial.subs(step(body.args[0]), step(out_val))
    return partial


# -- the combined view for people: one equation per adjoint --------------------------------------------------
@dataclass
class AdjointEquation:
    """`target_bar[index] = rhs` (assign) or a list of `+=` lines when a read is scattered (affine index)."""

    target: str
    index: tuple
    rhs: sympy.Expr | None
    scatter: list[Contribution]
    is_param: bool


def combined_equations(d: Derivation) -> list[AdjointEquation]:
    """Group contributions by target. A contribution whose target index is a list of distinct loop variables is
    renamed to the target's canonical indices, and its remaining loops become Σ: so the textbook forms appear."""
    prog = d.program
    by_target: dict[str, list[Contribution]] = {}
    order: list[str] = []
    for _st, contribs in d.steps:
        for c in contribs:
            if c.target not in by_target:
                by_target[c.target] = []
                order.append(c.target)
            by_target[c.target].append(c)
    equations = []
    for name in order:
        arr = prog.arrays[name]
        canon = _canonical_indices(arr.shape, name)
        rhs_terms, scatter = [], []
        for c in by_target[name]:
            ok = all(isinstance(ix, Symbol) for ix in c.index) and len(set(c.index)) == len(c.index)
            loop_vars = [lp.var for lp in c.loops]
            if not ok or any(ix not in loop_vars for ix in c.index):
                scatter.append(c)
                continue
            pos = {v: n for n, v in enumerate(c.index)}
            full = all(lp.lo == 0 and lp.hi == arr.shape[pos[lp.var]] - 1 for lp in c.loops if lp.var in pos)
            if not full:
                scatter.append(c)
                continue
            rest = [lp for lp in c.loops if lp.var not in pos]
            ren = dict(zip(c.index, canon, strict=True))
            spare = iter(s for s in "klmnpqrstuv" if Symbol(s, integer=True) not in canon)
            for lp in rest:
                ren[lp.var] = Symbol(next(spare), integer=True)
            expr = c.expr.xreplace(ren)
            if rest:
                limits = [(ren[lp.var], lp.lo.xreplace(ren), lp.hi.xreplace(ren)) for lp in reversed(rest)]
                expr = Sum(expr, *limits)
            src = next(st for st in prog.statements if st.name == c.source)
            if arr.kind == ArrayKind.STMT and not arr.batched and (src.batched or isinstance(src.body, BatchSum)):
                expr = BatchSum(expr)  # a per-batch value's adjoint gathers every sample's part
            rhs_terms.append(expr)
        rhs = sympy.Add(*rhs_terms) if rhs_terms else None
        equations.append(AdjointEquation(name, tuple(canon), rhs, scatter, arr.kind == ArrayKind.PARAM))
    return equations


def _canonical_indices(shape: tuple[int, ...], name: str) -> list[Symbol]:
    letters = "ijklmnpq"
    return [Symbol(letters[n] if n < len(letters) else f"i{n}", integer=True) for n in range(len(shape))]
