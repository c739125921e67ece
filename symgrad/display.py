"""The derivation as people read it: forward statements, one adjoint equation per array, each parameter's gradient.

`\\bar v` is ∂ℓ/∂v for one sample's objective ℓ (so `\\bar ℓ = 1`). Stored log-sum-exp values are shown inline as
`\\log\\sum e^{...}`, and `exp(z_i - logsumexp(z))` is shown as `softmax(z)_i`, so softmax cross-entropy reads
`\\bar z_i = softmax(z)_i - y_i` as in the textbook.
"""

from __future__ import annotations

import sympy
from sympy import Indexed, Symbol

from symgrad.derive import Derivation, combined_equations
from symgrad.graph import Program
from symgrad.library import LogSumExp


class softmax_of(sympy.Function):  # noqa: N801  (display only)
    def _latex(self, printer, exp=None):
        arr, *idx = self.args
        sub = ",".join(printer._print(i) for i in idx)
        return rf"\operatorname{{softmax}}\left({printer._print(arr)}\right)_{{{sub}}}"

    def _sympystr(self, printer):
        arr, *idx = self.args
        return f"softmax({printer._print(arr)})[{', '.join(printer._print(i) for i in idx)}]"


def _latex_name(name: str) -> str:
    return sympy.latex(Symbol(name))


def _symbol_names(prog: Program, d: Derivation) -> dict:
    names = {}
    for a in prog.arrays.values():
        label = _latex_name(a.name)
        names[Symbol(a.name, real=True)] = label
        if a.name in d.adjoint_bases:
            base = d.adjoint_bases[a.name]
            sym = base.label if hasattr(base, "label") else base
            names[sym] = rf"\bar{{{label}}}" if len(a.name) == 1 else rf"\overline{{{label}}}"
    return names


def _display_rewrites(expr: sympy.Expr, prog: Program, d: Derivation) -> sympy.Expr:
    lse = {prog.arrays[st.name].base: st for st in prog.statements
           if st.hidden and isinstance(st.body, LogSumExp) and not st.indices}  # a per-row lse shows as exp(.)
    loss_bar = d.adjoint_bases[prog.loss_name]
    expr = expr.xreplace({loss_bar: sympy.S.One})

    def softmax(e):
        arg = e.args[0]
        for base, st in lse.items():
            rest = sympy.expand(arg + base)
            inner = st.body.function
            if isinstance(rest, Indexed) and isinstance(inner, Indexed) and rest.base == inner.base \
                    and len(st.body.limits) == len(rest.indices):
                return softmax_of(Symbol(rest.base.name, real=True), *rest.indices)
        return e

    expr = expr.replace(lambda e: isinstance(e, sympy.exp), softmax)
    subs = {base: st.body for base, st in lse.items()}
    return expr.xreplace(subs)


def _inline_lse_adjoints(eqs, prog: Program, d: Derivation) -> dict:
    """Map each stored-lse adjoint to its right-hand side so consumers show the upstream adjoint directly."""
    out = {}
    for eq in eqs:
        st = next((s for s in prog.statements if s.name == eq.target), None)
        if st is not None and st.hidden and isinstance(st.body, LogSumExp) and not st.indices and eq.rhs is not None:
            out[d.adjoint_bases[eq.target]] = eq.rhs
    return out


def derivation_lines(d: Derivation, fmt: str = "latex", wrt: list[str] | None = None) -> list[tuple[str, str]]:
    """(section, line) pairs. Sections: forward, backward, gradient."""
    prog = d.program
    names = _symbol_names(prog, d)

    def show(expr) -> str:
        if fmt == "latex":
            return sympy.latex(expr, symbol_names=names, mul_symbol=None)
        return sympy.sstr(expr)

    def head(name: str, idx, adjoint: bool) -> str:
        base = d.adjoint_bases[name] if adjoint else prog.arrays[name].base
        return show(base[tuple(idx)] if idx else base)

    out: list[tuple[str, str]] = []
    lse_hidden = {st.name for st in prog.statements if st.hidden and isinstance(st.body, LogSumExp)}
    for st in prog.statements:
        if st.name in lse_hidden:
            continue
        body = _display_rewrites(st.body, prog, d)
        lhs = head(st.name, st.indices, False)
        if st.name == prog.loss_name:
            lhs = r"\ell" if fmt == "latex" else "loss"
        out.append(("forward", f"{lhs} = {show(body)}"))
    out.append(("backward", (r"\bar{\ell} = 1" if fmt == "latex" else "loss_bar = 1")))
    eqs = combined_equations(d)
    inline = _inline_lse_adjoints(eqs, prog, d)
    for eq in eqs:
        if d.adjoint_bases[eq.target] in inline:
            continue  # a stored logsumexp's adjoint, shown inline where it is used
        if eq.rhs is not None:
            rhs = eq.rhs.xreplace(inline)
            rhs = _display_rewrites(rhs, prog, d)
            out.append(("backward", f"{head(eq.target, eq.index, True)} = {show(rhs)}"))
        for c in eq.scatter:
            rhs = _display_rewrites(c.expr.xreplace(inline), prog, d)
            loops = ", ".join(f"{show(lp.var)} \\in [{show(lp.lo)}, {show(lp.hi)}]" if fmt == "latex"
                              else f"{lp.var} in {lp.lo}..{lp.hi}" for lp in c.loops)
            op = r"\mathrel{+}=" if fmt == "latex" else "+="
            sep = r"\quad \text{for } " if fmt == "latex" else "  for "
            out.append(("backward", f"{head(eq.target, c.index, True)} {op} {show(rhs)}{sep}{loops}"))
    reduce = prog.spec.reduction
    by_target = {eq.target: eq for eq in eqs}
    for p in prog.params:
        if wrt and p.name not in wrt:
            continue
        eq = by_target.get(p.name)
        idx = list(eq.index) if eq is not None else [Symbol(c, integer=True) for c in "ijklmn"[:len(p.shape)]]
        target = p.base[tuple(idx)] if idx else p.base
        if eq is None:
            rhs_l, rhs_t = "0", "0"
        elif eq.rhs is not None and not eq.scatter:
            rhs = _display_rewrites(eq.rhs.xreplace(inline), prog, d)
            rhs_l, rhs_t = show(rhs), sympy.sstr(rhs)
        else:
            rhs_l, rhs_t = head(p.name, idx, True), f"{p.name}_bar{list(idx) if idx else ''}"
        if fmt == "latex":
            scale = r"\frac{1}{B}\sum_{b=1}^{B}" if reduce == "mean" else r"\sum_{b=1}^{B}"
            out.append(("gradient", rf"\frac{{\partial \mathcal{{L}}}}{{\partial {show(target)}}} = {scale} "
                                    rf"\left[{rhs_l}\right]^{{(b)}}"))
        else:
            scale = "mean" if reduce == "mean" else "sum"
            out.append(("gradient", f"d objective / d {sympy.sstr(target)} = {scale} over the batch of {rhs_t}"))
    return out


def render_text(d: Derivation, fmt: str, wrt: list[str] | None) -> str:
    prog = d.program
    lines = derivation_lines(d, fmt, wrt)
    titles = {"forward": "Forward (one sample)", "backward": "Backward: adjoints, v_bar = d loss / d v",
              "gradient": "Gradients of the objective"}
    if wrt:
        unknown = [w for w in wrt if w not in {p.name for p in prog.params}]
        if unknown:
            from symgrad.errors import UsageError

            raise UsageError(f"--wrt {unknown[0]!r} is not a parameter of {prog.spec.name} "
                             f"(parameters: {', '.join(p.name for p in prog.params)})")
    out, current = [], None
    comment = "%" if fmt == "latex" else "#"
    for section, text in lines:
        if section != current:
            if current is not None:
                out.append("")
            out.append(f"{comment} {titles[section]}")
            if section == "gradient" and prog.spec.objective == "maximize":
                out.append(f"{comment} objective: maximize (training ascends this gradient)")
            current = section
        out.append(text)
    return "\n".join(out) + "\n"
