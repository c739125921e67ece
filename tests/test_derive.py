"""Derivation: the MATH.md worked numbers come out exactly from the derived statements, and the printed
gradients have the textbook forms (softmax(z) - y, sigmoid(z) - y, stored sigma and tanh)."""

from __future__ import annotations

import sympy
from click.testing import CliRunner

from symgrad.cli.main import main
from symgrad.display.derivation import render_text
from symgrad.ir.derive import combined_equations, derive
from symgrad.ir.graph import build_program


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def _evaluate_scalar(d, values: dict) -> dict:
    """Evaluate a scalar spec's forward statements and combined adjoint equations exactly (SymPy Rationals):
    independent of the generated code, it checks the derived statements themselves."""
    prog = d.program
    env = {prog.arrays[k].base: sympy.Rational(str(v)) for k, v in values.items()}
    for st in prog.statements:
        env[prog.arrays[st.name].base] = st.body.xreplace(env)
    env[d.adjoint_bases[prog.loss_name]] = sympy.Integer(1)
    for eq in combined_equations(d):
        assert not eq.scatter
        env[d.adjoint_bases[eq.target]] = sympy.simplify(eq.rhs.xreplace(env))
    return {name: env[base] for name, base in d.adjoint_bases.items() if base in env}


LINREG = """
name: linreg
inputs: {x: [], y: []}
params: {w: {shape: [], init: 1.0}, b: {shape: [], init: 0.0}}
forward:
  yhat: w*x + b
loss: (yhat - y)**2
"""


def test_worked_number_1_exact(tmp_path):
    d = derive(build_program(_write(tmp_path, "linreg", LINREG)))
    grads = _evaluate_scalar(d, {"w": 1, "b": 0, "x": "2.1", "y": 4})
    assert grads["w"] == sympy.Rational("-7.98")
    assert grads["b"] == sympy.Rational("-3.8")
    # one SGD step with lr 0.01: w = 1.0798, b = 0.038, and the loss after it
    w = 1 - sympy.Rational("0.01") * grads["w"]
    b = 0 - sympy.Rational("0.01") * grads["b"]
    assert (w, b) == (sympy.Rational("1.0798"), sympy.Rational("0.038"))
    assert abs(float((w * sympy.Rational("2.1") + b - 4) ** 2) - 2.8710591364) < 1e-10


def test_worked_number_2_exact(tmp_path):
    spec = LINREG.replace("loss: (yhat - y)**2", "loss: (y - (w*x + b))**2")
    d = derive(build_program(_write(tmp_path, "linreg2", spec)))
    grads = _evaluate_scalar(d, {"w": 1, "b": "0.5", "x": "1.4", "y": "2.1"})
    assert grads["w"] == sympy.Rational("-0.56")
    assert grads["b"] == sympy.Rational("-0.4")


def test_mlp_backprop_is_textbook():
    text = render_text(derive(build_program("specs/mlp_digits.yaml")), "text", None)
    assert "z_bar[i] = softmax(z)[i] - y[i]" in text
    assert "h_bar[i] = Sum(W2[k, i]*z_bar[k], (k, 0, 9))" in text  # W^T delta
    assert "W2_bar[i, j] = h[j]*z_bar[i]" in text  # delta x^T
    assert "s_h_bar[i] = step(h[i])*h_bar[i]" in text  # relu' read from the stored output
    assert "b1_bar[i] = s_h_bar[i]" in text


def test_sigmoid_bce_gives_p_minus_y_and_stored_values(tmp_path):
    spec = """
name: logreg
dims: {D: 3}
inputs: {x: [D], y: []}
params: {w: [D], v: [D], u: [D]}
forward:
  s: sigmoid(sum(v[i] * x[i], i))
  t: tanh(sum(u[i] * x[i], i))
  z: sum(w[i] * x[i], i) + s + t
loss: bce_with_logits(z, y)
"""
    text = render_text(derive(build_program(_write(tmp_path, "logreg", spec))), "text", None)
    assert "z_bar = -y + sigmoid(z)" in text
    assert "s_s_bar = s*s_bar*(1 - s)" in text  # sigma' = s(1 - s), read from the stored s
    assert "s_t_bar = t_bar*(1 - t**2)" in text  # tanh' = 1 - t^2, read from the stored t


def test_parameter_sharing_accumulates(tmp_path):
    spec = """
name: tied
dims: {D: 3, H: 2}
inputs: {x: [D]}
params: {W: {shape: [H, D], init: normal(0, 1)}}
forward:
  h[k]: tanh(sum(W[k, j] * x[j], j))
  r[j]: sum(W[k, j] * h[k], k)
loss: sum((r[j] - x[j])**2, j)
"""
    d = derive(build_program(_write(tmp_path, "tied", spec)))
    targets = [c.target for _, cs in d.steps for c in cs]
    assert targets.count("W") == 2  # the tied weight is read twice and gets both contributions


def test_missing_rule_raises_not_zero(tmp_path):
    from symgrad.errors import SpecError

    class nodiff(sympy.Function):  # noqa: N801
        pass

    spec = LINREG
    prog = build_program(_write(tmp_path, "lr", spec))
    st = prog.statements[0]
    st.body = nodiff(st.body)
    try:
        derive(prog)
    except SpecError as exc:
        assert "no derivative rule" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a function without a derivative rule must raise")


def test_cli_derive_latex_text_and_render(tmp_path):
    r = CliRunner().invoke(main, ["derive", "specs/mlp_digits.yaml"])
    assert r.exit_code == 0, r.output
    assert r"\operatorname{softmax}\left(z\right)_{i} - {y}_{i}" in r.output
    r = CliRunner().invoke(main, ["derive", "specs/nade.yaml", "--format", "text", "--wrt", "W"])
    assert r.exit_code == 0 and "d objective / d W" in r.output and "d objective / d V" not in r.output
    for out in ("d.png", "d.html"):
        r = CliRunner().invoke(main, ["derive", "specs/vae.yaml", "--render", str(tmp_path / out)])
        assert r.exit_code == 0, r.output
        assert (tmp_path / out).stat().st_size > 1000
    html = (tmp_path / "d.html").read_text()
    assert "<math" in html and "<details>" in html  # typeset by the browser (MathML), the LaTeX source folded
    assert "<script" not in html and "<link" not in html and "src=" not in html  # opens offline
    r = CliRunner().invoke(main, ["derive", "specs/mlp_digits.yaml", "--wrt", "nope"])
    assert r.exit_code == 2 and "nope" in r.output


def test_derive_is_fast_for_every_shipped_spec():
    import time
    from pathlib import Path

    for path in sorted(Path("specs").glob("*.yaml")):
        start = time.perf_counter()
        render_text(derive(build_program(str(path))), "latex", None)
        assert time.perf_counter() - start < 5.0, path


def test_a_reduction_written_twice_is_stored_once(tmp_path):
    """swish(W @ x) expands to s * sigmoid(s): the product W @ x must be one stored statement, not two."""
    spec = """
name: swishnet
dims: {D: 3, H: 2}
inputs: {x: [D]}
functions: {"swish(s)": "s*sigmoid(s)"}
params: {W: {shape: [H, D], init: normal(0, 1)}}
forward:
  h: swish(W @ x)
loss: sum(h)
"""
    prog = build_program(_write(tmp_path, "swishnet", spec))
    hidden = [st.name for st in prog.statements if st.hidden]
    assert hidden == ["s_h"], hidden


def test_hand_written_logsumexp_is_rewritten_stable(tmp_path):
    """log(sum(exp(z))) written by hand is evaluated max-shifted: finite at z = 1e4, gradient softmax(z) - y."""
    import numpy as np

    import symgrad

    spec = """
name: rowlse
dims: {N: 2, K: 3}
inputs: {Y: [N, K]}
params: {Z: {shape: [N, K], init: normal(0, 1)}}
forward:
  l[n]: log(sum(exp(Z[n, k]), k))
loss: sum(l[n] - sum(Y[n, k] * Z[n, k], k), n)
"""
    m = symgrad.load(_write(tmp_path, "rowlse", spec))
    z = np.array([[1e4, -1e4, 0.5], [3.0, 2.0, 1.0]])
    y = np.array([[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
    value, grads = m.loss_and_grad({"Z": z}, {"Y": y})
    soft = np.exp(z - z.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    lse = z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
    assert np.isfinite(value) and abs(value - (lse.sum() - (y[0] * z).sum())) < 1e-9 * abs(value)
    np.testing.assert_allclose(grads["Z"], soft - y[0], rtol=1e-12, atol=1e-12)


def test_every_node_symgrad_makes_is_known_real():
    """Fuzz E5: LogSumExp answered 'unknown' to is_real, so an enclosing exp or tanh asked SymPy for as_real_imag
    and Mod of its whole argument, exponential in the nesting: a 400-character loss parsed for over 9 minutes
    (tests/regressions/random_deep_nest_parse_time.yaml, 2 s now). Every node the compiler makes from real
    arguments must say it is real, so that SymPy's evaluation stops at the first question."""
    from symgrad.ir.derive import _TieMax, _TieMin
    from symgrad.lang.library import ELEMENTWISE, BatchSum, LogSumExp, Sum

    x = sympy.IndexedBase("x", real=True)
    j = sympy.Symbol("j", integer=True)
    a, b, c = sympy.symbols("a b c", real=True)
    nodes = {
        "logsumexp": LogSumExp(x[j] * a, (j, 0, 2)),
        "sum": Sum(x[j] * a, (j, 0, 2)),
        "batch_sum": BatchSum(a * b),
        "tie_max": _TieMax(a, b, c),
        "tie_min": _TieMin(a, b, c),
    }
    for name, row in ELEMENTWISE.items():
        if not {"cond", "unit"} & set(row.test_args):  # positive arguments: log and sqrt are real only there
            nodes[name] = row.sympy(*(sympy.exp(v) + 2 for v in (a, b, c)[: row.nargs]))
    unknown = sorted(name for name, node in nodes.items() if node.is_real is not True)
    assert not unknown, f"is_real is not True for {unknown}"


def test_tanh_of_a_maybe_complex_argument_asks_no_further(monkeypatch):
    """Random fuzz seed 349: exp(tanh(relu((w - s/3)/sqrt(s/3 + 1/2)))) parsed for over 5 minutes (6 s now). SymPy's
    tanh asked `as_real_imag()` and a Mod (a polynomial gcd) of any argument not known real, here a sqrt of a
    maybe-negative sum; symgrad's handler answers "unknown" instead, so building the node never expands it."""
    from symgrad.lang.primitives import relu  # importing the table installs the handlers

    s, w = sympy.symbols("s w", real=True)
    arg = relu((w - s / 3) / sympy.sqrt(s / 3 + sympy.Rational(1, 2)))
    assert arg.is_real is None  # a sqrt of a maybe-negative sum: SymPy cannot tell

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"as_real_imag asked of {self}")

    monkeypatch.setattr(sympy.Expr, "as_real_imag", refuse)
    node = sympy.exp(sympy.tanh(arg))
    assert isinstance(node, sympy.exp) and node.args[0].is_real is None and node.args[0].is_finite is None
    assert sympy.tanh(s).is_real is True and sympy.tanh(s).is_finite is True
