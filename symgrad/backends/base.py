"""Render stage: KernelIR -> a Python module of Numba kernels, through a SymPy code printer and Jinja2 templates.

The printer owns the maths (STYLE.md 3): scalar bodies, stable primitives, index arithmetic. Templates under
`templates/<backend>/` only lay the module out. A backend differs from another by a dict of deltas
(`BACKENDS`) and its template folder, never by a second derivation.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path

import jinja2
import sympy
from sympy import Indexed, Symbol
from sympy.printing.pycode import PythonCodePrinter

import symgrad
from symgrad.backends import codetext
from symgrad.errors import CodegenError, SpecError
from symgrad.frontend.spec import read_spec_bytes
from symgrad.ir.derive import Loop
from symgrad.ir.graph import Program
from symgrad.ir.lower import (
    BATCH,
    BATCH_SIZE,
    GSCALE,
    Fill,
    Gemm,
    KernelIR,
    LoopNest,
    Reduce,
    TimeLoop,
    stable_rewrites,
)
from symgrad.ir.pipeline import Compiled
from symgrad.lang.names import RESERVED
from symgrad.lang.primitives import helper_imports, helper_name, row_of

BACKENDS_DIR = Path(__file__).parent  # each backend's templates: backends/<name>/templates/


class KernelPrinter(PythonCodePrinter):
    """Prints scalar SymPy bodies as Numba-compilable Python: reads as array indexing, primitives as helpers."""

    # A backend's printer differs only in these deltas (a subclass sets them): which column of the primitives table
    # it prints, the prefix of its helper module, and the array whose dtype picks float32 fast paths (None: no
    # dtype-aware helpers).
    backend_name = "cpu"
    helper_prefix = "_mf."
    witness: str | None = "_theta"

    def __init__(self, names: dict, batched: set, scalars0d: set, loopvars: dict, locals_: dict | None = None):
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})
        self.names = names  # sympy base -> code name
        self.batched = batched  # code names with a leading batch axis
        self.scalars0d = scalars0d  # code names of 0-d arrays (stored with shape (1,) or (B,))
        self.loopvars = loopvars  # index symbol -> code name
        self.locals_ = locals_ or {}  # symbol -> local variable name (constants, cse temps)

    def _print_Symbol(self, expr):
        if expr in self.locals_:
            return self.locals_[expr]
        if expr in self.loopvars:
            return self.loopvars[expr]
        if expr == BATCH:
            return "_b"
        if expr in self.names:
            name = self.names[expr]
            return f"{name}[_b]" if name in self.batched else f"{name}[0]"
        if expr == GSCALE:
            return "_gscale"
        if expr == BATCH_SIZE:
            return "_B"
        return super()._print_Symbol(expr)

    _print_Dummy = _print_Symbol

    def _print_Indexed(self, expr):
        name = self.names.get(expr.base, str(expr.base))
        idx = [self._print(i) for i in expr.indices]
        if name in self.batched:
            idx = ["_b"] + idx
        return f"{name}[{', '.join(idx)}]"

    def _print_Rational(self, expr):
        return _float_literal(float(expr))

    def _print_Integer(self, expr):
        n = int(expr)
        # beyond 2**53 an integer is a float to Numba anyway, and beyond int64 Numba refuses the literal
        return str(n) if abs(n) <= 2**53 else _float_literal(float(expr))

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        b = self.parenthesize(base, sympy.printing.precedence.PRECEDENCE["Pow"])
        if exp == 2:  # parenthesised: it may be printed as a denominator (a/(b*b), never a/b*b)
            return f"({b}*{b})" if base.is_Atom or isinstance(base, Indexed) else f"({self._print(base)})**2"
        if exp == -1:
            return f"1.0/{b}"
        if exp == sympy.Rational(1, 2):
            return f"math.sqrt({self._print(base)})"
        if exp == -sympy.Rational(1, 2):
            return f"1.0/math.sqrt({self._print(base)})"
        if exp.is_Integer:
            return f"{b}**{self._print_Integer(exp)}"
        return f"{b}**{self.parenthesize(exp, sympy.printing.precedence.PRECEDENCE['Pow'])}"

    def _print(self, expr, **kwargs):
        row = row_of(expr)
        if row is not None:
            text = self._print_primitive(row, expr)
            if text is not None:
                return text
        return super()._print(expr, **kwargs)

    def _print_primitive(self, row, expr) -> str | None:
        """A call of a row of the primitives table with this backend's numeric form; None: SymPy's own printer.
        On the CPU, a row with a float32 fast path takes the witness array as a last argument."""
        witness = self.witness
        name = helper_name(row, self.backend_name, dtype_aware=bool(witness))
        if name is None:
            return None
        args = expr.args[: row.arity] if isinstance(row.arity, int) else expr.args  # Heaviside(x, 1/2): x only
        printed = [self._print(a) for a in args]
        if witness and name == row.cpu32:
            printed.append(witness)
        prefix = "" if "." in name else self.helper_prefix
        return f"{prefix}{name}({', '.join(printed)})"

    def _print_Piecewise(self, expr):
        parts = []
        for value, cond in expr.args:
            if cond == sympy.true:
                parts.append(f"{self._print(value)}")
                break
            parts.append(f"{self._print(value)} if {self._print(cond)} else ")
        else:
            parts.append("math.nan")
        return "(" + "".join(parts) + ")"

    _print_Select = _print_Piecewise

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _nested(self, fn: str, args) -> str:
        """max(a, b, c) as max(max(a, b), c): Numba's builtins take two scalars."""
        printed = [self._print(a) for a in args]
        out = printed[0]
        for a in printed[1:]:
            out = f"{fn}({out}, {a})"
        return out

    def _print_Max(self, expr):
        return self._nested("max", expr.args)

    def _print_Min(self, expr):
        return self._nested("min", expr.args)


def _float_literal(x: float) -> str:
    """A float as code: a constant folded by SymPy past float64 (2 * 1e308 in a derivative) is what float
    arithmetic gives too, an infinity; `repr` would print the undefined name `inf`."""
    if x != x:
        return "math.nan"
    if x in (math.inf, -math.inf):
        return "math.inf" if x > 0 else "(-math.inf)"
    return repr(x)


class _Lines:
    """Indented lines: the render stage's only layout, so templates stay free of maths."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def add(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)


def _code_names(prog: Program) -> dict:
    return {a.base: a.name for a in prog.arrays.values()}


class KernelWriter:
    """Turns KernelIR operations into Python lines."""

    printer_class = KernelPrinter  # a backend's writer names its printer subclass here

    def __init__(self, ir: KernelIR):
        self.ir = ir
        prog = ir.program
        self.prog = prog
        self.names = _code_names(prog)
        self.batched = {a.name for a in prog.arrays.values() if a.batched}
        self.batched |= {prog.adjoint[a.name] for a in prog.arrays.values() if a.batched}
        self.scalars0d = {a.name for a in prog.arrays.values() if not a.shape}
        self.scalars0d |= {prog.adjoint[n] for n in self.scalars0d}
        self.adjoint_names = set(prog.adjoint.values())
        self.const_locals = {sym: name for name, (_, sym) in prog.constants.items()}
        self.outer_loopvars: dict = {}  # loop variables of enclosing step loops (recurrences)
        self._printer_names: dict | None = None
        self.tmp = 0
        # loop variables must not shadow arrays, constants, helpers or modules the kernel uses
        self.reserved = (
            {a.name for a in prog.arrays.values()}
            | set(prog.constants)
            | self.adjoint_names
            | RESERVED
            | {"l", "O", "I"}
        )
        self.reserved |= set(helper_imports("cpu")) | set(helper_imports("cuda"))  # CUDA calls helpers unprefixed
        for a in prog.arrays.values():
            bar = prog.adjoint[a.name]
            self.names[sympy.IndexedBase(bar, real=True)] = bar
            self.names[Symbol(bar, real=True)] = bar

    def printer(self, loopvars: dict, extra: dict | None = None) -> KernelPrinter:
        if self._printer_names is None:  # built once: rebuilding it per call made rendering quadratic
            self._printer_names = dict(self.names)
        names = self._printer_names  # shared, read-only in the printer
        locs = dict(self.const_locals)
        locs.update(extra or {})
        return self.printer_class(names, self.batched, self.scalars0d, loopvars, locs)

    def ops(self, ops: list) -> list[str]:
        out = _Lines()
        # A Fill only ever precedes the first write of a buffer nothing has written yet, so all of them can go
        # first; that lets the loop nests around them fuse.
        ops = [op for op in ops if isinstance(op, Fill)] + [op for op in ops if not isinstance(op, Fill)]
        for group in self.fuse(ops):
            op = group[0]
            if isinstance(op, Gemm):
                self.gemm(op, out)
            elif isinstance(op, Fill):
                out.add(f"{op.buffer}[...] = 0.0")
            elif isinstance(op, LoopNest):
                self.loopnest(group, out)
            elif isinstance(op, TimeLoop):
                self.timeloop(op, out)
            else:  # pragma: no cover - a new op kind without a writer is a bug
                raise CodegenError(f"no writer for {type(op).__name__}")
        return out.lines

    # -- fusion: consecutive loop nests over the same outer loops become one pass ------------------------------
    def _written_index(self, op: LoopNest):
        """(array name, index incl. the batch) that op writes, and whether each outer iteration writes its own
        element (the index is exactly the outer loop variables)."""
        t = op.target
        name = self.names.get(t.base if isinstance(t, Indexed) else t) or str(t.base if isinstance(t, Indexed) else t)
        idx = tuple(t.indices) if isinstance(t, Indexed) else ()
        if name in self.batched:
            idx = (BATCH,) + idx
        own = (
            not op.inner
            and sorted(map(str, idx)) == sorted(str(lp.var) for lp in op.outer)
            and len(set(idx)) == len(idx)
            and all(isinstance(i, Symbol) for i in idx)
        )
        return name, idx, own

    def _reads(self, op: LoopNest) -> list:
        out = []
        exprs = [op.expr, op.init] if isinstance(op.init, sympy.Basic) else [op.expr]
        for e in exprs:
            for r in e.atoms(Indexed):
                name = self.names.get(r.base) or str(r.base)
                idx = tuple(r.indices)
                out.append((name, (BATCH,) + idx if name in self.batched else idx))
            for s in e.atoms(Symbol):
                name = self.names.get(s) or (s.name if s.name in self.adjoint_names else None)
                if name is not None and name in self.scalars0d:
                    out.append((name, (BATCH,) if name in self.batched else ()))
        return out

    def fuse(self, ops: list) -> list[list]:
        groups: list[list] = []
        state: tuple[dict, set] = ({}, set())  # the last group's writes and read names, kept as it grows
        for op in ops:
            last = groups[-1] if groups else None
            if isinstance(op, LoopNest) and last and isinstance(last[0], LoopNest):
                renamed = self._fusable(last, op, state)
                if renamed is not None:
                    last.append(renamed)
                    self._grow(state, renamed)
                    continue
            groups.append([op])
            state = ({}, set())
            if isinstance(op, LoopNest):
                self._grow(state, op)
        return groups

    def _grow(self, state: tuple[dict, set], op: LoopNest) -> None:
        """Add one nest to a group's state (linear fusion: a group is never rescanned per candidate)."""
        name, idx, own = self._written_index(op)
        state[0][name] = (idx, own)
        state[1].update(r for r, _ in self._reads(op))

    def _fusable(self, group: list, op: LoopNest, state: tuple[dict, set] | None = None):
        if state is None:
            state = ({}, set())
            for g in group:
                self._grow(state, g)
        head = group[0]
        if len(op.outer) != len(head.outer):
            return None
        ren: dict = {}
        for a, b in zip(op.outer, head.outer, strict=True):
            if a.lo.xreplace(ren) != b.lo or a.hi.xreplace(ren) != b.hi:
                return None
            ren[a.var] = b.var
        inner_vars = {lp.var for lp in op.inner}
        if inner_vars & set(ren.values()) - set(ren):
            return None  # an inner loop variable would collide with a renamed outer one
        renamed = LoopNest(
            head.outer,
            [Loop(lp.var, lp.lo.xreplace(ren), lp.hi.xreplace(ren)) for lp in op.inner],
            op.target.xreplace(ren),
            op.expr.xreplace(ren),
            op.mode,
            op.reduce,
            op.init.xreplace(ren) if isinstance(op.init, sympy.Basic) else op.init,
            op.comment,
        )
        writes, read_names = state  # consistent by construction: each append was checked against them
        for name, idx in self._reads(renamed):  # read-after-write: only this iteration's own element
            if name in writes and not (writes[name][1] and writes[name][0] == idx):
                return None
        name, idx, own = self._written_index(renamed)
        if name in read_names:
            return None  # write-after-read: an earlier nest still reads what this one writes
        if name in writes and not (own and writes[name] == (idx, True)):
            return None
        if renamed.reduce != Reduce.NONE:
            return None if any(lp.var in ren for lp in renamed.inner) else renamed
        return renamed

    def gemm(self, op: Gemm, out: _Lines) -> None:
        a = f"{op.a}.T" if op.trans_a else op.a
        b = f"{op.b}.T" if op.trans_b else op.b
        if op.comment:
            out.add(f"# {op.comment}: one BLAS call")
        if op.accumulate:
            out.add(f"_mf.gemm_acc({a}, {b}, {op.out})")
        else:
            out.add(f"_mf.gemm({a}, {b}, {op.out})")

    def loopnest(self, group, out: _Lines) -> None:
        """One loop nest, or several fused ones sharing their outer loops (one pass over the data)."""
        group = group if isinstance(group, list) else [group]
        loopvars = self.loop_names(group[0].outer + [lp for op in group for lp in op.inner])
        pr0 = self.printer(loopvars)
        comments = [op.comment for op in group if op.comment]
        if comments:
            out.add(f"# {'; '.join(comments)}")
        for lp in group[0].outer:
            out.add(f"for {loopvars[lp.var]} in range({pr0.doprint(lp.lo)}, {self._hi(lp, pr0)}):")
            out.depth += 1
        for op in group:
            self._body(op, loopvars, out)
        out.depth -= len(group[0].outer)

    def timeloop(self, op: TimeLoop, out: _Lines) -> None:
        """A recurrence's step loop: its statements run one step at a time, each op as its own loop nest."""
        name = self.loop_names([Loop(op.var, sympy.Integer(0), sympy.Integer(op.size - 1))])[op.var]
        out.add(f"# {op.comment}")
        out.add(f"for {name} in range({op.size - 1}, -1, -1):" if op.reverse else f"for {name} in range(0, {op.size}):")
        out.depth += 1
        self.outer_loopvars[op.var] = name
        try:
            for sub, guard in zip(op.ops, op.guards, strict=True):
                if guard is not None:
                    out.add(f"if {self.printer(dict(self.outer_loopvars)).doprint(guard)}:")
                    out.depth += 1
                self.loopnest([sub], out)
                if guard is not None:
                    out.depth -= 1
        finally:
            del self.outer_loopvars[op.var]
            out.depth -= 1

    def loop_names(self, loops: list) -> dict:
        """A readable, unique code name per loop variable (`_b` for the batch), never shadowing the kernel's names."""
        names: dict = dict(self.outer_loopvars)
        used: set[str] = set(names.values())
        for lp in loops:
            if lp.var in names:
                continue
            base = "_b" if lp.var == BATCH else lp.var.name.lstrip("_") or "i"
            name, n = base, 1
            while name in used or name in self.reserved:
                n += 1
                name = f"{base}{n}"
            used.add(name)
            names[lp.var] = name
        return names

    def _body(self, op: LoopNest, loopvars: dict, out: _Lines) -> None:
        expr, init, subs, locs, pr = self.prepare(op, loopvars, name_reads=True)
        target = pr.doprint(op.target)
        self.reduction(
            op,
            op.reduce,
            list(op.inner),
            expr,
            init,
            subs,
            locs,
            pr,
            loopvars,
            out,
            lambda v: f"{target} {op.mode} {v}",
        )

    # -- shared by every backend's writer: one body's numeric rewrites, CSE and the reduction around it --------
    NEG_INF = "-math.inf"  # the start of a max-shifted log-sum-exp, as the kernel spells it

    def prepare(self, op: LoopNest, loopvars: dict, name_reads: bool = False):
        """The body ready to print: stable rewrites, common subexpressions as `_t<n>` locals (and, when
        `name_reads`, a long body's array reads as locals too, loaded once), and a printer that knows them."""
        expr = stable_rewrites(op.expr)
        init = stable_rewrites(op.init)
        subs, reduced = sympy.cse([expr], symbols=sympy.numbered_symbols("_t"), optimizations=None)
        expr = reduced[0]
        if name_reads and len(sympy.sstr(expr)) > 90:  # long bodies read better (and load once) with reads named
            reads = sorted(expr.atoms(Indexed), key=sympy.default_sort_key)
            named = {r: Symbol(f"_r{n}") for n, r in enumerate(reads)}
            if reads and any(v.has(*reads) for _, v in subs):  # a local reads them too: load them first
                subs = [(named[r], r) for r in reads] + [(k, v.xreplace(named)) for k, v in subs]
            else:
                subs = list(subs) + [(named[r], r) for r in reads]
            expr = expr.xreplace(named)
            if len(sympy.sstr(expr)) > 90:  # still long: each condition (a tie split's indicators) a local
                cases = sorted(expr.atoms(sympy.Piecewise), key=sympy.default_sort_key)
                picked = {c: Symbol(f"_p{n}") for n, c in enumerate(cases)}
                subs = subs + [(picked[c], c) for c in cases]
                expr = expr.xreplace(picked)
        locs = {}
        for sym, _ in subs:
            locs[sym] = f"_t{self.tmp}"
            self.tmp += 1
        return expr, init, subs, locs, self.printer(loopvars, locs)

    def reduction(
        self, op: LoopNest, reduce: Reduce, inner: list, expr, init, subs, locs, pr, loopvars: dict, out: _Lines, write
    ) -> None:
        """Write `expr` into the target through `write(value_text)`: directly, as a sum over `inner`, or as a
        max-shifted log-sum-exp over the op's inner loops (exp never overflows)."""
        if reduce == Reduce.NONE:
            for sym, value in subs:
                out.add(f"{locs[sym]} = {pr.doprint(value)}")
            out.add(write(pr.doprint(expr)))
        elif reduce == Reduce.SUM:
            out.add(f"_acc = {pr.doprint(init)}" if init != 0 else "_acc = 0.0")
            for lp in inner:
                out.add(f"for {loopvars[lp.var]} in range({pr.doprint(lp.lo)}, {self._hi(lp, pr)}):")
                out.depth += 1
            for sym, value in subs:
                out.add(f"{locs[sym]} = {pr.doprint(value)}")
            out.add(f"_acc += {pr.doprint(expr)}")
            out.depth -= len(inner)
            out.add(write("_acc"))
        else:
            out.add(f"_m = {self.NEG_INF}")
            self._inner(op, loopvars, pr, out, subs, locs, f"_m = max(_m, {pr.doprint(expr)})")
            out.add("_acc = 0.0")
            shifted = pr.doprint(sympy.exp(sympy.Symbol("_SHIFTED")))
            self._inner(
                op, loopvars, pr, out, subs, locs, f"_acc += {shifted.replace('_SHIFTED', f'{pr.doprint(expr)} - _m')}"
            )
            logacc = pr.doprint(sympy.log(sympy.Symbol("_ACC", positive=True)))
            out.add(write(f"_m + {logacc.replace('_ACC', '_acc')}"))

    def _inner(self, op, loopvars, pr, out, subs, locs, line):
        for lp in op.inner:
            out.add(f"for {loopvars[lp.var]} in range({pr.doprint(lp.lo)}, {self._hi(lp, pr)}):")
            out.depth += 1
        for sym, value in subs:
            out.add(f"{locs[sym]} = {pr.doprint(value)}")
        out.add(line)
        out.depth -= len(op.inner)

    @staticmethod
    def _hi(lp, pr) -> str:
        return pr.doprint(sympy.expand(lp.hi + 1))


def _env(backend: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(BACKENDS_DIR / backend / "templates")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pytuple"] = pytuple
    env.filters.update(codetext.FILTERS)  # the one path for spec text into code (symgrad/backends/codetext.py)
    return env


def pytuple(names, indent: int = 0, quoted: bool = False, bare: bool = False) -> str:
    """A tuple of names (or of their string literals) that stays within the line length: wrapped inside the
    parentheses when a model has many statements."""
    import json
    import textwrap

    items = [json.dumps(n) if quoted else str(n) for n in names]
    flat = ", ".join(items) + ("," if len(items) == 1 else "")
    if indent + len(flat) <= 90:
        return flat if bare else f"({flat})"
    pad = " " * (indent + 4)
    body = textwrap.fill(
        ", ".join(items) + ",",
        width=110,
        initial_indent=pad,
        subsequent_indent=pad,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return "(\n" + body + "\n" + " " * indent + ")"


def check_names(prog: Program) -> None:
    """Every spec name is written bare into code: refuse (as a bug) anything that is not a plain identifier."""
    for name in [prog.spec.name, *prog.arrays, *prog.constants]:
        codetext.identifier(name)


def finish_module(text: str, spec_path: str) -> str:
    """Compile check, then the body digest stamped into the header (`symgrad.load` verifies it before import)."""
    from symgrad.artifacts import stamp

    try:
        compile(text, f"<generated from {spec_path}>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        if "nested blocks" in str(exc.msg):
            raise SpecError(
                "the spec needs loops nested deeper than Python allows (20); use fewer axes in one statement",
                spec_path,
                1,
            ) from None
        raise CodegenError(
            f"generated module for {spec_path} does not compile: {exc.msg} (line {exc.lineno})"
        ) from None
    return stamp(text)


def spec_metadata(prog: Program) -> dict:
    s = prog.spec
    return {
        "name": s.name,
        "description": s.description,
        "dims": dict(s.dims),
        "inputs": {a.name: {"shape": list(a.shape), "sample": a.sample} for a in prog.inputs},
        "params": {a.name: {"shape": list(a.shape), "init": _init_text(a.init)} for a in prog.params},
        "constants": {n: v for n, (v, _) in prog.constants.items()},
        "outputs": list(prog.outputs),
        "loss": s.loss.value,
        "objective": s.objective,
        "reduction": s.reduction,
    }


def _init_text(init: tuple | None) -> str:
    assert init is not None  # every param has one (the graph parses it, zeros by default)
    kind, args = init
    if kind == "constant":
        return repr(args[0])
    return f"{kind}({', '.join(repr(a) for a in args)})" if args else kind


def param_layout(prog: Program) -> tuple[list[dict], int]:
    """Each parameter's slice of the flat vector theta (declaration order), and theta's length."""
    params, off = [], 0
    for a in prog.params:
        size = 1
        for n in a.shape:
            size *= n
        params.append(
            {
                "name": a.name,
                "shape": tuple(a.shape),
                "offset": off,
                "size": size,
                "view_shape": tuple(a.shape) if a.shape else (1,),
                "init": a.init,
                "grad_name": prog.adjoint[a.name],
            }
        )
        off += size
    return params, off


def module_context(c: Compiled, display_path: str | None, description: str) -> dict:
    """The render context every backend's module template shares: provenance, SPEC, the flat layout, inputs, loss."""
    prog = c.program
    params, n_theta = param_layout(prog)
    inputs = [{"name": a.name, "shape": tuple(a.shape), "sample": a.sample} for a in prog.inputs]
    return {
        "spec_path": display_path or c.spec_path,
        "sha256": hashlib.sha256(read_spec_bytes(c.spec_path)).hexdigest(),
        "version": symgrad.__version__,
        "name": prog.spec.name,
        "description": description,
        "metadata": _pyrepr(spec_metadata(prog)),
        "params": params,
        "n_theta": n_theta,
        "inputs": inputs,
        "input_args": "".join(f", {a['name']}" for a in inputs),
        "loss": prog.loss_name,
        "outputs": prog.outputs,
        "sign": -1.0 if prog.spec.objective == "maximize" else 1.0,
        "reduction": prog.spec.reduction,
        "has_inputs": bool(inputs),
        "batch_source": inputs[0]["name"] if inputs else None,
    }


def render_template(backend: str, ctx: dict, spec_path: str) -> str:
    """Lay the module out with the backend's `module.py.j2`, then compile-check and stamp it."""
    try:
        text = _env(backend).get_template("module.py.j2").render(**ctx)
    except jinja2.TemplateError as exc:
        raise CodegenError(f"template error while generating the {backend} module for {spec_path}: {exc}") from exc
    return finish_module(text, spec_path)


@contextlib.contextmanager
def printer_errors(spec_path: str, backend: str):
    """A printer failure is a bug: one clear error, never half a file."""
    try:
        yield
    except CodegenError:
        raise
    except Exception as exc:
        raise CodegenError(f"cannot print {backend} kernels for {spec_path}: {exc}") from exc


def statement_inputs(prog) -> dict[str, tuple[str, ...]]:
    """The inputs each statement reads, directly or through earlier statements: `forward` then asks a batch only for
    the inputs its outputs depend on (predicting needs no labels)."""
    from symgrad.ir.derive import _array_name, _reads

    order = [a.name for a in prog.inputs]
    deps: dict[str, set[str]] = {}
    for st in prog.statements:
        got: set[str] = set()
        for r in _reads(st.body, prog.arrays):
            name = _array_name(r)
            got |= {name} if name in order else deps.get(name, set())
        deps[st.name] = got
    return {k: tuple(n for n in order if n in v) for k, v in deps.items()}


def _docwrap(text: str) -> str:
    """Wrapped for reading; escaping is the template's `doc` filter (codetext.doc_text), never done here."""
    import textwrap

    return "\n".join(textwrap.wrap(text, 100)) or text


def _names_in(text: str) -> set[str]:
    """Every bare name in code text (not an attribute): one scan answers "is name used?" for all names."""
    import re

    return set(re.findall(r"(?<![\w.])[A-Za-z_]\w*", text))


def _pyrepr(obj, indent: int = 4, level: int = 1) -> str:
    """Deterministic, readable literal for SPEC (dict order as built, one key per line at the top)."""
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        if level > 2 or (level == 2 and len(repr(obj)) < 80):
            return "{" + ", ".join(f"{k!r}: {_pyrepr(v, indent, level + 1)}" for k, v in obj.items()) + "}"
        pad = " " * (indent * level)
        inner = ",\n".join(f"{pad}{k!r}: {_pyrepr(v, indent, level + 1)}" for k, v in obj.items())
        return "{\n" + inner + ",\n" + " " * (indent * (level - 1)) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_pyrepr(v, indent, level + 1) for v in obj) + "]"
    if isinstance(obj, str) and len(obj) > 80:
        import textwrap

        pad = " " * (indent * level)
        chunks = textwrap.wrap(obj, 76, drop_whitespace=False, replace_whitespace=False, expand_tabs=False)
        if "".join(chunks) != obj:  # the literal must be the text exactly
            chunks = [obj[i : i + 76] for i in range(0, len(obj), 76)]
        return "(\n" + "\n".join(f"{pad}    {codetext.py_literal(c)}" for c in chunks) + f"\n{pad})"
    return codetext.py_literal(obj)
