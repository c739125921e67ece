"""Lower stage: forward statements and adjoint contributions -> kernel operations.

Two kinds of operation come out: `Gemm` (a contraction of two reads with plain indices, one BLAS call through
`np.dot(a, b, out)`), and `LoopNest` (everything else: elementwise work, reductions with a scalar accumulator,
scatter-adds for affine reads). The batch is an index like any other (`b`), which is what lets a dense layer over a
mini-batch be one matrix product. Each adjoint buffer's first full write assigns instead of accumulating, so most
buffers are never zero-filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
from sympy import Indexed, Symbol

from symgrad.ir.derive import Contribution, Derivation, Loop, index_loops, limit_loops
from symgrad.ir.graph import ArrayKind, Program, Statement, TextEnum, split_body
from symgrad.lang import primitives
from symgrad.lang.library import BATCH_SIZE, BatchSum, LogSumExp

# Compiler symbols start with "_", which no spec name can (an index named b or B, a constant named gscale)
BATCH = Symbol("_b", integer=True)
GSCALE = Symbol("_gscale", real=True)


class Mode(TextEnum):
    """How a loop nest writes its target (printed as is)."""

    ASSIGN = "="
    ACCUMULATE = "+="


class Reduce(TextEnum):
    """What a loop nest's inner loops compute into the accumulator."""

    SUM = "sum"
    LSE = "lse"  # log-sum-exp, max-shifted
    NONE = "none"  # no inner loops: the value is written directly


@dataclass
class Buffer:
    """An array the kernel owns: a forward value or an adjoint."""

    name: str  # name in generated code
    shape: tuple[int, ...]  # per sample
    batched: bool


@dataclass
class Gemm:
    """out (=|+=) op(A) @ op(B), every operand a 1-D or 2-D array in the kernel."""

    out: str
    a: str
    b: str
    trans_a: bool
    trans_b: bool
    accumulate: bool
    comment: str = ""


@dataclass
class LoopNest:
    """for loops: [acc = init; for inner: acc += expr;] target[index] (=|+=) value."""

    outer: list[Loop]
    inner: list[Loop]
    target: sympy.Basic  # sympy read of the target (Indexed with code-level indices) or Symbol
    expr: sympy.Expr
    mode: Mode
    reduce: Reduce = Reduce.SUM
    init: sympy.Expr = sympy.S.Zero
    comment: str = ""

    def __post_init__(self) -> None:
        self.outer, self.inner, self.target, self.init, self.expr = distinct_loop_names(
            self.outer, self.inner, self.target, self.init, self.expr
        )


def distinct_loop_names(outer: list[Loop], inner: list[Loop], target, init, expr):
    """The loop nest with no two loop variables printed alike, nor like any other symbol it reads.

    SymPy lets a Sum rebind its enclosing index, `z[i] - Sum(z[i], (i, 0, 2))/3`, and two distinct Dummies may
    share a name; printed by name, that nest became `for i: acc = z[i]; for i: acc += ...`, the inner loop
    overwriting the outer i (abs(standardize(z)) was wrong by 50%: tests/regressions/
    abs_of_standardize_rebinds_its_index.yaml). The graph stage now renames such reductions (unshadow); this is
    the kernels' own guarantee. A clashing inner variable means the inner binding wherever the summand reads it
    (SymPy's scoping), so it is renamed there and in the bounds of the loops inside it; an outer one, a distinct
    symbol by construction, everywhere it appears. New names start with "_", out of reach of spec names.
    """
    loops = [*outer, *inner]
    names = {v.name for e in (target, init, expr) for v in getattr(e, "free_symbols", ())}
    names |= {v.name for lp in loops for e in (lp.lo, lp.hi) for v in e.free_symbols} | {lp.var.name for lp in loops}
    seen: dict[str, Symbol] = {}
    for k, lp in enumerate(loops):
        if lp.var.name not in seen:
            seen[lp.var.name] = lp.var
            continue
        if k < len(outer) and seen[lp.var.name] == lp.var:  # pragma: no cover - derive never makes one
            raise AssertionError(f"loop variable {lp.var} is bound twice around {target}")
        stem, n = "_" + lp.var.name.lstrip("_"), 2
        while f"{stem}{n}" in names:
            n += 1
        new = Symbol(f"{stem}{n}", integer=True)
        names.add(new.name)
        seen[new.name] = new
        ren = {lp.var: new}
        loops[k] = Loop(new, lp.lo, lp.hi)
        loops[k + 1 :] = [Loop(q.var, q.lo.xreplace(ren), q.hi.xreplace(ren)) for q in loops[k + 1 :]]
        expr = expr.xreplace(ren)
        if k < len(outer):
            target, init = target.xreplace(ren), init.xreplace(ren)
    return loops[: len(outer)], loops[len(outer) :], target, init, expr


@dataclass
class Fill:
    buffer: str
    value: float = 0.0


@dataclass
class TimeLoop:
    """A recurrence's step loop around its statements' operations (ascending forward, descending backward).
    `guards[k]` is a condition for ops[k] (a scatter into step t - 1 runs only for t >= 1), or None."""

    var: Symbol
    size: int
    reverse: bool
    ops: list[Op] = field(default_factory=list)
    guards: list = field(default_factory=list)
    comment: str = ""


Op = Gemm | LoopNest | Fill | TimeLoop  # the op list every backend's writer implements (KernelWriter.ops)


@dataclass
class KernelIR:
    program: Program
    forward_buffers: list[Buffer]
    adjoint_buffers: list[Buffer]
    forward_ops: list[Op] = field(default_factory=list)
    backward_ops: list[Op] = field(default_factory=list)


def lower(d: Derivation) -> KernelIR:
    prog = d.program
    fwd_bufs = [Buffer(st.name, st.shape, st.batched) for st in prog.statements]
    adj_bufs = [
        Buffer(
            d.adjoint_bases[name].name if hasattr(d.adjoint_bases[name], "name") else str(d.adjoint_bases[name]),
            prog.arrays[name].shape,
            prog.arrays[name].batched,
        )
        for name in _adjoint_order(d)
        if prog.arrays[name].kind == ArrayKind.STMT and name != prog.loss_name
    ]
    ir = KernelIR(prog, fwd_bufs, adj_bufs)
    member = {n: rec for rec in prog.recurrences for n in rec.members}
    hoisted = {n: rec for rec in prog.recurrences for n in rec.hoisted}
    by_name = {st.name: st for st in prog.statements}
    loops: dict[int, TimeLoop] = {}
    for st in prog.statements:
        rec = member.get(st.name)
        if st.name in hoisted:
            continue  # emitted before its recurrence's loop (it does not depend on the step)
        if rec is None:
            ir.forward_ops.extend(_lower_statement(st, prog))
            continue
        if id(rec) not in loops:
            for name in rec.hoisted:
                ir.forward_ops.extend(_lower_statement(by_name[name], prog))
            loops[id(rec)] = TimeLoop(_step_var(rec), rec.size, False, comment=f"recurrence over {rec.members[-1]}")
            ir.forward_ops.append(loops[id(rec)])
        for op in _lower_statement(st, prog, gemm=False):
            _in_step(loops[id(rec)], op, rec.time_of[st.name], ir.forward_ops)
    written: set[str] = set()
    loss_bar = d.adjoint_bases[prog.loss_name]
    back: dict[int, TimeLoop] = {}
    deferred: list = []  # contributions of step-independent statements of an open recurrence: after its loop
    for st, contribs in d.steps:
        rec = member.get(st.name)
        if rec is None and st.name not in hoisted and deferred:
            ir.backward_ops.extend(deferred)
            deferred = []
        for c in contribs:
            if st.name in hoisted:
                deferred.extend(_lower_contribution(c, st, d, written, loss_bar))
                continue
            if rec is None:
                ir.backward_ops.extend(_lower_contribution(c, st, d, written, loss_bar))
                continue
            if id(rec) not in back:
                back[id(rec)] = TimeLoop(
                    _step_var(rec), rec.size, True, comment=f"back through the recurrence over {rec.members[-1]}"
                )
                ir.backward_ops.append(back[id(rec)])
            for op in _lower_contribution(c, st, d, written, loss_bar, gemm=False):
                _in_step(back[id(rec)], op, rec.time_of[st.name], ir.backward_ops)
    ir.backward_ops.extend(deferred)
    # params never reached by any contribution still get a zero gradient
    for p in prog.params:
        if prog.adjoint[p.name] not in written:
            ir.backward_ops.append(Fill(prog.adjoint[p.name]))
    # a statement read only where the derivative is 0 (a Piecewise condition) gets no contribution, but its own
    # contributions still read its adjoint: zero it, never leave np.empty's memory there
    unwritten = [b.name for b in adj_bufs if b.name not in written]
    ir.backward_ops[:0] = [Fill(name) for name in unwritten]
    return ir


def _step_var(rec) -> Symbol:
    return Symbol("_" + rec.time_of[rec.members[-1]].name, integer=True)


def _in_step(loop: TimeLoop, op, t: Symbol, outside: list) -> None:
    """Put op inside the step loop: its loop over t goes (t becomes the step variable); a first write becomes a
    zero fill before the loop plus accumulation, since every step adds its part."""
    if isinstance(op, Fill):
        outside.append(op)  # KernelWriter hoists fills to the kernel's top
        return
    if not isinstance(op, LoopNest):  # pragma: no cover - Gemm is disabled inside a step
        raise TypeError(f"unexpected {type(op).__name__} inside a recurrence")
    ren = {t: loop.var}
    mode = op.mode
    if mode == Mode.ASSIGN and loop.reverse:
        name = str(op.target.base if isinstance(op.target, Indexed) else op.target)
        outside.append(Fill(name))
        mode = Mode.ACCUMULATE
    outer = [Loop(lp.var, lp.lo.xreplace(ren), lp.hi.xreplace(ren)) for lp in op.outer if lp.var != t]
    inner = [Loop(lp.var, lp.lo.xreplace(ren), lp.hi.xreplace(ren)) for lp in op.inner if lp.var != t]
    if op.reduce != Reduce.NONE and any(lp.var == t for lp in op.inner) and mode == Mode.ASSIGN:
        mode = Mode.ACCUMULATE  # pragma: no cover - forward reductions never run over their own step index
    target = op.target.xreplace(ren)
    new = LoopNest(
        outer,
        inner,
        target,
        op.expr.xreplace(ren),
        mode,
        op.reduce,
        op.init.xreplace(ren) if isinstance(op.init, sympy.Basic) else op.init,
        op.comment,
    )
    conds = []
    if isinstance(target, Indexed):
        conds = [ix >= 0 for ix in target.indices if loop.var in ix.free_symbols and ix != loop.var]
    loop.ops.append(new)
    loop.guards.append(sympy.And(*conds) if conds else None)


def _adjoint_order(d: Derivation) -> list[str]:
    return [st.name for st in d.program.statements if st.name in d.needs_grad]


def _lower_statement(st: Statement, prog: Program, gemm: bool = True) -> list:
    base = prog.arrays[st.name].base
    target = base[st.indices] if st.indices else base
    outer = index_loops(st)
    if st.batched:
        outer = [Loop(BATCH, sympy.Integer(0), BATCH_SIZE - 1)] + outer
    if isinstance(st.body, BatchSum):  # one value per mini-batch: the batch is the reduction's loop
        inner = [Loop(BATCH, sympy.Integer(0), BATCH_SIZE - 1)]
        return [LoopNest(outer, inner, target, st.body.args[0], Mode.ASSIGN, reduce=Reduce.SUM, comment=_comment(st))]
    if isinstance(st.body, LogSumExp):
        inner = limit_loops(st.body.limits)
        return [LoopNest(outer, inner, target, st.body.function, Mode.ASSIGN, reduce=Reduce.LSE, comment=_comment(st))]
    e0, sums = split_body(st.body)
    ops: list = []
    if len(sums) == 1 and gemm:
        matched = _match_gemm(
            st.name, st.indices, st.batched, sums[0].function, limit_loops(sums[0].limits), prog, accumulate=False
        )
        if matched is not None:
            matched.comment = _comment(st)
            ops.append(matched)
            if e0 != 0:
                ops.append(LoopNest(outer, [], target, e0, Mode.ACCUMULATE, reduce=Reduce.NONE))
            return ops
    if not sums:
        return [LoopNest(outer, [], target, e0, Mode.ASSIGN, reduce=Reduce.NONE, comment=_comment(st))]
    if len(sums) == 1:
        return [
            LoopNest(
                outer, limit_loops(sums[0].limits), target, sums[0].function, Mode.ASSIGN, init=e0, comment=_comment(st)
            )
        ]
    ops.append(LoopNest(outer, [], target, e0, Mode.ASSIGN, reduce=Reduce.NONE, comment=_comment(st)))
    for s in sums:
        ops.append(LoopNest(outer, limit_loops(s.limits), target, s.function, Mode.ACCUMULATE))
    return ops


def _comment(st: Statement) -> str:
    label = "stored " if st.hidden else ""
    return f"{label}{st.name}" + (f"[{', '.join(map(str, st.indices))}]" if st.indices else "")


def _match_gemm(
    out_name: str,
    out_idx: tuple,
    out_batched: bool,
    g: sympy.Expr,
    inner: list[Loop],
    prog: Program,
    accumulate: bool,
    operand_lookup=None,
) -> Gemm | None:
    """g == A[...] * B[...] with plain, full-range indices that split into (m, n, k) groups of one index each."""
    if not isinstance(g, sympy.Mul) or len(g.args) != 2:
        return None
    if any(lp.lo != 0 for lp in inner):
        return None
    lookup = operand_lookup or (lambda r: _operand(r, prog))
    ops = [lookup(f) for f in g.args]
    if any(o is None for o in ops):
        return None
    (na, ia, ba, sa), (nb, ib, bb, sb) = ops
    o_idx = ((BATCH,) if out_batched else ()) + tuple(out_idx)
    # BLAS reads whole operands: every index must run over the whole axis of each operand it reads, or the call
    # would take a longer axis whole (a declared shape reads a prefix of it: fuzz G4, `gemm: incompatible shapes`)
    for lp in inner:
        his = [s[list(i).index(lp.var)] - 1 for i, s in ((ia, sa), (ib, sb)) if lp.var in i]
        if not his or any(lp.hi != h for h in his):
            return None
    if len(set(o_idx)) != len(o_idx) or not o_idx:  # a 0-d result (a dot product per batch) is a plain loop
        return None
    out_arr = prog.arrays.get(out_name)
    if out_arr is not None:
        out_sizes = dict(zip(o_idx, ((None,) if out_batched else ()) + tuple(out_arr.shape), strict=True))
        for i, s in ((ia, sa), (ib, sb)):
            if any(v in out_sizes and size != out_sizes[v] for v, size in zip(i, s, strict=True)):
                return None
    all_idx = set(o_idx) | set(ia) | set(ib)
    m = [i for i in all_idx if i in o_idx and i in ia and i not in ib]
    n = [i for i in all_idx if i in o_idx and i in ib and i not in ia]
    k = [i for i in all_idx if i in ia and i in ib and i not in o_idx]
    if len(m) + len(n) + len(k) != len(all_idx) or len(m) > 1 or len(n) > 1 or len(k) > 1:
        return None
    if len(o_idx) != len(m) + len(n) or len(ia) != len(m) + len(k) or len(ib) != len(n) + len(k):
        return None
    if not k:
        return None
    if len(ia) > 2 or len(ib) > 2 or len(o_idx) > 2:
        return None
    # Out is [m, n]; if out is ordered (n, m), swap the operands: out = B' @ A'.
    if m and n and o_idx.index(m[0]) > o_idx.index(n[0]):
        (na, ia), (nb, ib) = (nb, ib), (na, ia)
        m, n = n, m
    trans_a = bool(m) and len(ia) == 2 and ia[0] == k[0]
    trans_b = bool(n) and len(ib) == 2 and ib[1] == k[0]
    if not m and len(ia) == 1:
        trans_a = False
    if not n and len(ib) == 1:
        trans_b = False
    return Gemm(out_name, na, nb, trans_a, trans_b, accumulate)


def _operand(read, prog: Program):
    """A read usable as a BLAS operand: (code name, index tuple incl. batch, batched, sizes)."""
    if not isinstance(read, Indexed):
        return None
    arr = prog.array_of(read)
    if arr is None:
        return None
    idx = tuple(read.indices)
    if not all(isinstance(i, Symbol) for i in idx) or len(set(idx)) != len(idx):
        return None
    if arr.batched:
        return arr.name, (BATCH,) + idx, True, (None,) + tuple(arr.shape)
    return arr.name, idx, False, tuple(arr.shape)


# -- backward ------------------------------------------------------------------------------------------------
def _lower_contribution(
    c: Contribution, st: Statement, d: Derivation, written: set[str], loss_bar, gemm: bool = True
) -> list:
    prog = d.program
    arr = prog.arrays[c.target]
    expr = c.expr.xreplace({loss_bar: GSCALE})
    loops = list(c.loops)
    if st.batched or isinstance(st.body, BatchSum):
        loops = [Loop(BATCH, sympy.Integer(0), BATCH_SIZE - 1)] + loops
    t_idx = ((BATCH,) if arr.batched else ()) + tuple(c.index)
    plain = all(isinstance(i, Symbol) for i in t_idx) and len(set(t_idx)) == len(t_idx)
    loop_vars = [lp.var for lp in loops]
    full = (
        plain
        and all(i in loop_vars for i in t_idx)
        and all(lp.lo == 0 and _full_hi(lp, arr, t_idx) for lp in loops if lp.var in t_idx)
    )
    target_name = d.program.adjoint[c.target]
    first = target_name not in written
    ops: list = []
    if plain and full and gemm:
        matched = _match_gemm_adjoint(target_name, t_idx, expr, loops, d)
        if matched is not None:
            matched.accumulate = not first
            matched.comment = f"d {st.name} / d {c.target}"
            written.add(target_name)
            return [matched]
    if first and not full:
        ops.append(Fill(target_name))
    written.add(target_name)
    adj_base = sympy.IndexedBase(target_name, real=True) if arr.shape else Symbol(target_name, real=True)
    target = adj_base[tuple(c.index)] if c.index else adj_base
    mode = Mode.ASSIGN if (first and full) else Mode.ACCUMULATE
    if plain and full:
        t_loops = [lp for lp in loops if lp.var in t_idx]
        r_loops = [lp for lp in loops if lp.var not in t_idx]
        movable = all(not (lp.lo.free_symbols | lp.hi.free_symbols) & {r.var for r in r_loops} for lp in t_loops)
        if movable and [lp.var for lp in r_loops] == [BATCH]:
            # a sum over the batch only (bias gradients): batch outermost keeps every read row-contiguous
            if first:
                ops.append(Fill(target_name))
            ops.append(
                LoopNest(
                    r_loops + t_loops,
                    [],
                    target,
                    expr,
                    Mode.ACCUMULATE,
                    reduce=Reduce.NONE,
                    comment=f"d {st.name} / d {c.target}",
                )
            )
            return ops
        if movable:
            ops.append(
                LoopNest(
                    t_loops,
                    r_loops,
                    target,
                    expr,
                    mode,
                    reduce=Reduce.SUM if r_loops else Reduce.NONE,
                    comment=f"d {st.name} / d {c.target}",
                )
            )
            return ops
    ops.append(
        LoopNest(loops, [], target, expr, Mode.ACCUMULATE, reduce=Reduce.NONE, comment=f"d {st.name} / d {c.target}")
    )
    return ops


def _full_hi(lp: Loop, arr, t_idx: tuple) -> bool:
    if lp.var == BATCH:
        return True
    pos = list(t_idx).index(lp.var) - (1 if arr.batched else 0)
    return lp.hi == arr.shape[pos] - 1


def _match_gemm_adjoint(target: str, t_idx: tuple, expr: sympy.Expr, loops: list[Loop], d: Derivation):
    prog = d.program
    bar_of = d.__dict__.get("_bar_of")
    if bar_of is None:  # once per derivation: rebuilding it per contribution was quadratic
        bar_of = d.__dict__["_bar_of"] = {d.adjoint_bases[n]: n for n in d.adjoint_bases}

    def lookup(read):
        if isinstance(read, Indexed) and read.base in bar_of:
            arr = prog.arrays[bar_of[read.base]]
            idx = tuple(read.indices)
            if not all(isinstance(i, Symbol) for i in idx) or len(set(idx)) != len(idx):
                return None
            if arr.batched:
                return prog.adjoint[arr.name], (BATCH,) + idx, True, (None,) + tuple(arr.shape)
            return prog.adjoint[arr.name], idx, False, tuple(arr.shape)
        return _operand(read, prog)

    inner = [lp for lp in loops if lp.var not in t_idx]
    if any(lp.var == BATCH for lp in inner):
        inner_check = [lp for lp in inner if lp.var != BATCH]
    else:
        inner_check = inner
    # the batch loop is always full; check the others against operand sizes
    out_batched = bool(t_idx) and t_idx[0] == BATCH
    out_idx = t_idx[1:] if out_batched else t_idx
    return _match_gemm(target, out_idx, out_batched, expr, inner_check, prog, accumulate=False, operand_lookup=lookup)


# -- numeric rewrites applied before printing (STYLE.md 10): the rules are rows' rewrites in lang.primitives ----
stable_rewrites = primitives.stable_rewrites
