"""The reference evaluator (symgrad.checks.reference) against values written by hand with NumPy, and `symgrad check`'s
use of it: a loss that differs from the reference fails the check and names the first statement that differs."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from symgrad.checks.gradcheck import loss_check, rel_error
from symgrad.checks.reference import build_reference, reference_loss, reference_statements

RNG = np.random.default_rng(7)


def _spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_triangular_strided_and_affine_indices(tmp_path):
    path = _spec(
        tmp_path,
        """
name: idx
dims: {D: 5}
inputs: {x: [D]}
params: {w: [D]}
forward:
  a[i]: {shape: [D], expr: "Sum(w[j]*x[j], (j, 0, i - 1))"}
  e[i]: {shape: [3], expr: "x[2*i] * w[D - 1 - i]"}
  t: "Sum(Sum(x[i]*w[j], (j, i + 1, D - 1)), (i, 0, D - 1))"
loss: sum(a) + sum(e) + t
""",
    )
    x, w = RNG.normal(size=(2, 5)), RNG.normal(size=5)
    v = reference_statements(path, {"w": w}, {"x": x})
    a = np.concatenate([np.zeros((2, 1)), np.cumsum(w * x, axis=1)[:, :-1]], axis=1)  # empty sum at i = 0
    e = x[:, 0:5:2] * w[::-1][:3]
    t = np.array([sum(x[b, i] * w[j] for i in range(5) for j in range(i + 1, 5)) for b in range(2)])
    np.testing.assert_allclose(v["a"], a, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(v["e"], e, rtol=1e-14)
    np.testing.assert_allclose(v["t"], t, rtol=1e-13)
    np.testing.assert_allclose(v["L"], a.sum(1) + e.sum(1) + t, rtol=1e-13)


def test_matrices_functions_piecewise_and_library(tmp_path):
    path = _spec(
        tmp_path,
        """
name: lib
dims: {D: 3, H: 4}
inputs: {x: [D], y: [H]}
params: {W: [H, D], b: [H], s: []}
constants: {beta: 2.0}
functions: {"gelu(u)": "0.5*u*(1 + tanh(0.7978845608028654*(u + 0.044715*u**3)))"}
forward:
  h: gelu(W @ x + b)
  p: Piecewise((h, h > 0.1), (beta*h, True)) + Max(h, s) - Min(h, 0.5)
  z[k]: sum(W[k, j] * x[j], j) * sigmoid(s)
loss: softmax_cross_entropy(p, y) + bce_with_logits(s, 0.3) + logsumexp(z) + mse(h, y) + gaussian_kl(b, h)
objective: maximize
reduction: sum
""",
    )
    W, b, s = RNG.normal(size=(4, 3)), RNG.normal(size=4), np.array(0.4)
    x, y = RNG.normal(size=(3, 3)), RNG.uniform(size=(3, 4))
    u = x @ W.T + b
    h = 0.5 * u * (1 + np.tanh(0.7978845608028654 * (u + 0.044715 * u**3)))
    p = np.where(h > 0.1, h, 2.0 * h) + np.maximum(h, s) - np.minimum(h, 0.5)
    z = (x @ W.T) / (1 + np.exp(-s))

    def lse(v):
        return np.log(np.exp(v).sum(axis=1))

    per = (
        (lse(p) - (y * p).sum(1))
        + (np.logaddexp(0, s) - 0.3 * s)
        + lse(z)
        + ((h - y) ** 2).mean(1)
        - 0.5 * (1 + h - b**2 - np.exp(h)).sum(1)
    )
    got = reference_loss(path, {"W": W, "b": b, "s": s}, {"x": x, "y": y})
    assert abs(got - per.sum()) <= 1e-12 * abs(per.sum())  # maximize: not negated; reduction sum
    got2 = reference_loss(path, {"W": W, "b": b, "s": s}, {"x": x, "y": y}, constants={"beta": 3.0})
    assert got2 != got


def test_stable_at_large_logits(tmp_path):
    path = _spec(
        tmp_path,
        """
name: stab
dims: {K: 2}
inputs: {y: [K]}
params: {z: [K]}
loss: softmax_cross_entropy(z, y) + bce_with_logits(z[0], 1) + log_sigmoid(-z[1]) + softplus(z[0])
""",
    )
    z = np.array([1e4, -1e4])
    got = reference_loss(path, {"z": z}, {"y": np.array([[1.0, 0.0]])})
    assert np.isfinite(got)
    assert got == pytest.approx(0.0 + 0.0 + 0.0 + 1e4, abs=1e-9)


def test_no_inputs_and_mean(tmp_path):
    path = _spec(tmp_path, "name: q\nparams: {w: {shape: [2], init: 10.0}}\nloss: sum(w[i]**2, i)\n")
    assert reference_loss(path, {"w": np.array([10.0, 10.0])}) == 200.0
    assert build_reference(path).loss_name == "L"


def test_rel_error_treats_matching_nonfinite_as_equal():
    assert rel_error([1.0, np.inf], [1.0, np.inf]) == 0.0
    assert rel_error([1.0, np.nan], [1.0, 2.0]) == float("inf")
    assert rel_error(1.0 + 1e-12, 1.0) < 1e-11


LINREG = """
name: chk_linreg
inputs: {x: [], y: []}
params: {w: {shape: [], init: 1.0}, b: {shape: [], init: 0.0}}
forward:
  yhat: w*x + b
  r: yhat - y
loss: r**2
"""


def test_loss_check_names_the_first_differing_statement(tmp_path):
    from symgrad.runtime.loader import load

    path = _spec(tmp_path, LINREG)
    module = load(path)
    assert loss_check(path, module).ok()

    def bad_forward(theta, consts, *arrays):  # the compiler got `r` wrong (and so the loss)
        yhat, r, loss = module._forward_pass(theta, consts, *arrays)
        return yhat, r + 1.0, (r + 1.0) ** 2

    def bad_loss_and_grad(params, batch, constants=None):
        value, grads = module.loss_and_grad(params, batch, constants)
        return value + 1.0, grads

    fake = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
    fake._forward_pass, fake.loss_and_grad = bad_forward, bad_loss_and_grad
    result = loss_check(path, fake)
    assert not result.ok()
    assert result.first_bad is not None and result.first_bad[0] == "r" and result.first_bad[1] == 7


def test_cli_check_prints_the_loss_line(tmp_path):
    from symgrad.cli.main import main

    path = _spec(tmp_path, LINREG)
    out = CliRunner().invoke(main, ["check", path])
    assert out.exit_code == 0, out.output
    assert "loss" in out.output and "reference" in out.output and "ok" in out.output


def test_cli_check_fails_on_a_nonfinite_loss(tmp_path):
    from symgrad.cli.main import main

    path = _spec(tmp_path, "name: nanloss\nparams: {w: {shape: [], init: 1.0}}\nloss: w**2 + log(w - 5)\n")
    out = CliRunner().invoke(main, ["check", path])
    assert out.exit_code == 1, out.output
    assert "not finite" in out.output and "MISMATCH" in out.output
