"""The derivation as people read it: forward statements, one adjoint equation per array, each parameter's gradient.

`\\bar v` is ∂ℓ/∂v for one sample's objective ℓ (so `\\bar ℓ = 1`). Stored log-sum-exp values are shown inline as
`\\log\\sum e^{...}`, and `exp(z_i - logsumexp(z))` is shown as `softmax(z)_i`, so softmax cross-entropy reads
`\\bar z_i = softmax(z)_i - y_i` as in the textbook.

The backward section is in dependency order (every adjoint is defined before a line reads it), so the page can be
checked top-down. Bound indices that the parser reserves (`_j`) are shown under readable free letters, and the batch
index is `\\mathsf{b}` over `\\mathcal{B}`, a symbol no spec name can print as.

`symgrad.derive(spec)` returns a `Derivation` whose equations are SymPy objects, with rich display in Jupyter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sympy
from sympy import Indexed, Symbol

from symgrad.ir.derive import Derivation as _Internal
from symgrad.ir.derive import combined_equations
from symgrad.ir.graph import Program
from symgrad.lang.library import BATCH_SIZE, LogSumExp

TITLES = {
    "forward": "Forward (one sample)",
    "backward": "Backward: adjoints, v_bar = d loss / d v",
    "gradient": "Gradients of the objective",
}


class softmax_of(sympy.Function):  # noqa: N801  (display only)
    def _latex(self, printer, exp=None):
        arr, *idx = self.args
        sub = ",".join(printer._print(i) for i in idx)
        return rf"\operatorname{{softmax}}\left({printer._print(arr)}\right)_{{{sub}}}"

    def _sympystr(self, printer):
        arr, *idx = self.args
        return f"softmax({printer._print(arr)})[{', '.join(printer._print(i) for i in idx)}]"


def _latex_name(name: str) -> str:
    """SymPy's LaTeX for a name (`W1` -> `W_{1}`, `mu` -> `\\mu`); a plain multi-letter name becomes one italic word
    (`\\mathit{logvar}`), not a product of letters."""
    label = sympy.latex(Symbol(name))
    return rf"\mathit{{{label}}}" if label == name and len(name) > 1 and name.isalnum() else label


def _symbol_names(prog: Program, d: _Internal) -> dict:
    names = {BATCH_SIZE: r"|\mathcal{B}|"}
    for a in prog.arrays.values():
        label = _latex_name(a.name)
        names[Symbol(a.name, real=True)] = label
        if a.name in d.adjoint_bases:
            base = d.adjoint_bases[a.name]
            sym = base.label if hasattr(base, "label") else base
            names[sym] = rf"\bar{{{label}}}" if len(a.name) == 1 else rf"\overline{{{label}}}"
    return names


def _display_rewrites(expr: sympy.Expr, prog: Program, d: _Internal) -> sympy.Expr:
    lse = {
        prog.arrays[st.name].base: st
        for st in prog.statements
        if st.hidden and isinstance(st.body, LogSumExp) and not st.indices
    }  # a per-row lse shows as exp(.)
    loss_bar = d.adjoint_bases[prog.loss_name]
    expr = expr.xreplace({loss_bar: sympy.S.One})

    def softmax(e):
        arg = e.args[0]
        for base, st in lse.items():
            rest = sympy.expand(arg + base)
            inner = st.body.function
            if (
                isinstance(rest, Indexed)
                and isinstance(inner, Indexed)
                and rest.base == inner.base
                and len(st.body.limits) == len(rest.indices)
            ):
                return softmax_of(Symbol(rest.base.name, real=True), *rest.indices)
        return e

    expr = expr.replace(lambda e: isinstance(e, sympy.exp), softmax)
    subs = {base: st.body for base, st in lse.items()}
    return expr.xreplace(subs)


def _inline_lse_adjoints(eqs, prog: Program, d: _Internal) -> dict:
    """Map each stored-lse adjoint to its right-hand side so consumers show the upstream adjoint directly."""
    out = {}
    for eq in eqs:
        st = next((s for s in prog.statements if s.name == eq.target), None)
        if st is not None and st.hidden and isinstance(st.body, LogSumExp) and not st.indices and eq.rhs is not None:
            out[d.adjoint_bases[eq.target]] = eq.rhs
    return out


@dataclass
class Equation:
    """One line of the derivation. `op` is `=` or `+=` (a scattered contribution, over `loops`: (var, lo, hi)
    inclusive). A gradient line's `rhs` is per sample: the batch gradient is its mean (or sum) over the batch."""

    section: str  # "forward" | "backward" | "gradient"
    target: str  # the array (statement, adjoint's array or parameter) the line defines
    lhs: sympy.Expr
    rhs: sympy.Expr
    op: str = "="
    loops: tuple = ()

    @property
    def eq(self) -> sympy.Eq:
        """The line as a SymPy equation (for `+=`, the contribution it adds)."""
        return sympy.Eq(self.lhs, self.rhs, evaluate=False)


def _basic(e) -> sympy.Basic:
    """A loop bound may be a plain int; everything else here is already a SymPy object (never spec text)."""
    return e if isinstance(e, sympy.Basic) else sympy.Integer(e)


def _readable(lhs, rhs, loops) -> tuple:
    """Rename reserved bound indices (`_j`) to free readable letters, consistently over one line."""
    exprs = [lhs, rhs] + [e for lp in loops for e in lp]
    syms = set().union(*(_basic(e).free_symbols for e in exprs))
    for e in (lhs, rhs):  # bound variables of Sums are not free
        for s in _basic(e).atoms(sympy.Sum):
            syms |= {v for v, *_ in s.limits}
    reserved = sorted(
        (s for s in syms if (isinstance(s, sympy.Dummy) or s.name.startswith("_")) and s != BATCH_SIZE),
        key=lambda s: s.name,
    )
    if not reserved:
        return lhs, rhs, loops
    taken = {s.name for s in syms if s not in reserved}
    ren = {}
    for s in reserved:
        pool = [s.name.lstrip("_") or "j"] + list("jklmnpqrstuvw") + [f"j{k}" for k in range(1, 50)]
        new = next(c for c in pool if c not in taken)
        taken.add(new)
        ren[s] = Symbol(new, **{k: v for k, v in s.assumptions0.items() if k in ("integer", "real")})

    def fix(e):
        return _basic(e).xreplace(ren)

    return fix(lhs), fix(rhs), tuple(tuple(fix(x) for x in lp) for lp in loops)


def _reads_adjoint(expr, d: _Internal) -> set[str]:
    out = set()
    for name, base in d.adjoint_bases.items():
        if expr.has(base):
            out.add(name)
    return out


def _on_path(nodes: list, wrt: list[str]) -> set[str]:
    """The adjoints a parameter's gradient is computed from, transitively."""
    deps = {n["target"]: n["reads"] for n in nodes}
    need, todo = set(), list(wrt)
    while todo:
        t = todo.pop()
        if t in need:
            continue
        need.add(t)
        todo.extend(deps.get(t, ()))
    return need


def _topological(nodes: list) -> list:
    """Order so that every adjoint is written before a line reads it, keeping the reverse-mode order otherwise."""
    defined = {n["target"] for n in nodes}
    done: set[str] = set()
    out, rest = [], list(nodes)
    while rest:
        pick = next(
            (n for n in rest if all(r in done or r == n["target"] or r not in defined for r in n["reads"])), rest[0]
        )  # a cycle cannot occur (reverse mode over a DAG); fall back to the given order
        rest.remove(pick)
        done.add(pick["target"])
        out.append(pick)
    return out


def equations(d: _Internal, wrt: list[str] | None = None) -> list[Equation]:
    """Every line of the derivation as SymPy objects: forward, backward (dependency order), gradients.
    With `wrt`, only the statements on the path from those parameters to the loss."""
    prog = d.program
    eqs = combined_equations(d)
    inline = _inline_lse_adjoints(eqs, prog, d)
    nodes: list[dict[str, Any]] = []  # target, lines, eq, reads
    for eq in eqs:
        if d.adjoint_bases[eq.target] in inline:
            continue  # a stored logsumexp's adjoint, shown inline where it is used
        lines = []
        if eq.rhs is not None:
            base = d.adjoint_bases[eq.target]
            lhs = base[tuple(eq.index)] if eq.index else base
            lines.append(Equation("backward", eq.target, lhs, _display_rewrites(eq.rhs.xreplace(inline), prog, d)))
        for c in eq.scatter:
            base = d.adjoint_bases[eq.target]
            lhs = base[tuple(c.index)] if c.index else base
            rhs = _display_rewrites(c.expr.xreplace(inline), prog, d)
            lines.append(
                Equation("backward", eq.target, lhs, rhs, "+=", tuple((lp.var, lp.lo, lp.hi) for lp in c.loops))
            )
        reads = set().union(*(_reads_adjoint(ln.rhs, d) for ln in lines)) - {eq.target} if lines else set()
        nodes.append({"target": eq.target, "lines": lines, "eq": eq, "reads": reads})
    nodes = _topological(nodes)
    need = _on_path(nodes, wrt) if wrt else None

    out: list[Equation] = []
    lse_hidden = {st.name for st in prog.statements if st.hidden and isinstance(st.body, LogSumExp)}
    for st in prog.statements:
        if st.name in lse_hidden or (need is not None and st.name not in need and st.name != prog.loss_name):
            continue
        base = prog.arrays[st.name].base
        lhs = base[tuple(st.indices)] if st.indices else base
        out.append(Equation("forward", st.name, lhs, _display_rewrites(st.body, prog, d)))
    loss_bar = d.adjoint_bases[prog.loss_name]
    out.append(Equation("backward", prog.loss_name, loss_bar, sympy.S.One))
    for n in nodes:
        if need is None or n["target"] in need:
            out.extend(n["lines"])
    by_target = {n["target"]: n for n in nodes}
    for p in prog.params:
        if wrt and p.name not in wrt:
            continue
        node = by_target.get(p.name)
        p_eq = node["eq"] if node else None
        idx = list(p_eq.index) if p_eq is not None else [Symbol(c, integer=True) for c in "ijklmn"[: len(p.shape)]]
        bar = d.adjoint_bases.get(
            p.name, sympy.IndexedBase(f"{p.name}_bar", real=True) if p.shape else Symbol(f"{p.name}_bar", real=True)
        )
        lhs = bar[tuple(idx)] if idx else bar
        if node is None:
            rhs = sympy.S.Zero
        elif len(node["lines"]) == 1 and node["lines"][0].op == "=":
            rhs = node["lines"][0].rhs
        else:
            rhs = lhs  # accumulated by the += lines above
        out.append(Equation("gradient", p.name, lhs, rhs))
    for e in out:
        e.lhs, e.rhs, e.loops = _readable(e.lhs, e.rhs, e.loops)
    return out


def derivation_lines(d: _Internal, fmt: str = "latex", wrt: list[str] | None = None) -> list[tuple[str, str]]:
    """(section, line) pairs. Sections: forward, backward, gradient."""
    return [(e.section, text) for e, text in _formatted(d, equations(d, wrt), fmt)]


def _formatted(d: _Internal, eqs: list[Equation], fmt: str) -> list[tuple[Equation, str]]:
    prog = d.program
    names = _symbol_names(prog, d)

    def show(expr) -> str:
        if fmt == "latex":
            return sympy.latex(expr, symbol_names=names, mul_symbol=None)
        return sympy.sstr(expr)

    out = []
    for e in eqs:
        if e.section == "forward":
            lhs = (r"\ell" if fmt == "latex" else "loss") if e.target == prog.loss_name else show(e.lhs)
            out.append((e, f"{lhs} = {show(e.rhs)}"))
        elif e.section == "backward" and e.target == prog.loss_name and e.rhs == 1:
            out.append((e, r"\bar{\ell} = 1" if fmt == "latex" else "loss_bar = 1"))
        elif e.section == "backward":
            if e.op == "=":
                out.append((e, f"{show(e.lhs)} = {show(e.rhs)}"))
            else:
                loops = ", ".join(
                    f"{show(v)} \\in [{show(lo)}, {show(hi)}]" if fmt == "latex" else f"{v} in {lo}..{hi}"
                    for v, lo, hi in e.loops
                )
                op = r"\mathrel{+}=" if fmt == "latex" else "+="
                sep = r"\quad \text{for } " if fmt == "latex" else "  for "
                out.append((e, f"{show(e.lhs)} {op} {show(e.rhs)}{sep}{loops}"))
        else:
            p = prog.arrays[e.target]
            target = p.base[tuple(e.lhs.indices)] if isinstance(e.lhs, Indexed) else p.base
            mean = prog.spec.reduction == "mean"
            if fmt == "latex":
                scale = (r"\frac{1}{|\mathcal{B}|}" if mean else "") + r"\sum_{\mathsf{b} \in \mathcal{B}}"
                out.append(
                    (
                        e,
                        rf"\frac{{\partial \mathcal{{L}}}}{{\partial {show(target)}}} = {scale} "
                        rf"\left[{show(e.rhs)}\right]^{{(\mathsf{{b}})}}",
                    )
                )
            else:
                scale = "mean" if mean else "sum"
                out.append((e, f"d objective / d {sympy.sstr(target)} = {scale} over the batch of {sympy.sstr(e.rhs)}"))
    return out


def _check_wrt(prog: Program, wrt: list[str] | None, flag: str = "--wrt") -> None:
    if wrt:
        unknown = [w for w in wrt if w not in {p.name for p in prog.params}]
        if unknown:
            from symgrad.errors import UsageError

            raise UsageError(
                f"{flag} {unknown[0]!r} is not a parameter of {prog.spec.name} "
                f"(parameters: {', '.join(p.name for p in prog.params)})"
            )


def render_text(d: _Internal, fmt: str, wrt: list[str] | None) -> str:
    prog = d.program
    _check_wrt(prog, wrt)
    lines = derivation_lines(d, fmt, wrt)
    out, current = [], None
    comment = "%" if fmt == "latex" else "#"
    for section, text in lines:
        if section != current:
            if current is not None:
                out.append("")
            out.append(f"{comment} {TITLES[section]}")
            if section == "gradient" and prog.spec.objective == "maximize":
                out.append(f"{comment} objective: maximize (training ascends this gradient)")
            current = section
        out.append(text)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- public object


@dataclass
class Derivation:
    """A spec's derivation: `forward`, `backward` (adjoints, in dependency order) and `gradients` are lists of
    `Equation`, whose `lhs`, `rhs` and `.eq` are SymPy objects. Shows itself as LaTeX or MathML in Jupyter."""

    name: str
    objective: str
    reduction: str
    forward: list[Equation]
    backward: list[Equation]
    gradients: list[Equation]
    wrt: list[str] | None = None
    _internal: _Internal | None = field(default=None, repr=False)

    @property
    def equations(self) -> list[Equation]:
        return [*self.forward, *self.backward, *self.gradients]

    def adjoint(self, name: str) -> sympy.Eq:
        """The (assigned) adjoint equation of array `name`: `name_bar = ...`."""
        for e in self.backward:
            if e.target == name and e.op == "=":
                return e.eq
        raise KeyError(f"no assigned adjoint equation for {name!r} (scattered ones are in .backward)")

    def gradient(self, name: str) -> sympy.Eq:
        """The per-sample gradient of parameter `name` (the batch gradient is its mean, or sum, over the batch)."""
        for e in self.gradients:
            if e.target == name:
                return e.eq
        raise KeyError(f"{name!r} is not a parameter of {self.name} (or not in wrt)")

    def _derivation(self) -> _Internal:
        assert self._internal is not None, "a Derivation is made by symgrad.derive(), which sets _internal"
        return self._internal

    def lines(self, fmt: str = "latex") -> list[tuple[str, str]]:
        return [(e.section, text) for e, text in _formatted(self._derivation(), self.equations, fmt)]

    def latex(self) -> str:
        return render_text(self._derivation(), "latex", self.wrt)

    def text(self) -> str:
        return render_text(self._derivation(), "text", self.wrt)

    def __str__(self) -> str:
        return self.text()

    def _repr_latex_(self) -> str:
        rows = [text.replace(" = ", " &= ", 1) if " = " in text else "&" + text for _, text in self.lines("latex")]
        return "$$\\begin{aligned}" + " \\\\\n".join(rows) + "\\end{aligned}$$"

    def _repr_html_(self) -> str:
        from symgrad.display.page import html_body

        return html_body(self.lines("latex"), self.name, standalone=False)


def derive(spec: str | Path, wrt: list[str] | str | None = None) -> Derivation:
    """Derive a spec's gradients and return them as SymPy equations (the same lines `symgrad derive` prints)."""
    from symgrad.errors import UsageError
    from symgrad.ir.derive import derive as run_derive
    from symgrad.ir.graph import build_program

    if not isinstance(spec, (str, os.PathLike)) or isinstance(spec, bytes):
        raise UsageError(f"derive takes a spec path, got {type(spec).__name__} {spec!r}"[:200])
    if wrt is not None and not isinstance(wrt, str):
        if not isinstance(wrt, (list, tuple)) or not all(isinstance(w, str) for w in wrt):
            raise UsageError(f"wrt must be a parameter name or a list of them, got {wrt!r}"[:200])
    wrt = [wrt] if isinstance(wrt, str) else (list(wrt) if wrt else None)
    d = run_derive(build_program(os.fspath(spec)))
    _check_wrt(d.program, wrt, "wrt")
    eqs = equations(d, wrt)
    spec_ = d.program.spec
    return Derivation(
        spec_.name,
        spec_.objective,
        spec_.reduction,
        [e for e in eqs if e.section == "forward"],
        [e for e in eqs if e.section == "backward"],
        [e for e in eqs if e.section == "gradient"],
        wrt,
        d,
    )
