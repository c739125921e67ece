"""Batch statistics (issue 13): `batch_mean(...)` / `batch_sum(...)` reduce over the mini-batch, so BatchNorm's
training-mode statistics are written like everything else and their coupling between samples is derived. Checked
against a NumPy forward over the whole batch and central differences of it."""

from __future__ import annotations

import numpy as np
import pytest
from fdcheck import assert_gradient

import symgrad
from symgrad.display.derivation import render_text
from symgrad.errors import SpecError
from symgrad.ir.graph import build_program

SPEC = """
name: bn
dims: {D: 3, H: 4}
inputs: {x: [D], y: []}
constants: {eps: 0.00001}
params:
  W: {shape: [H, D], init: normal(0, 0.5)}
  g: {shape: [H], init: 1.0}
  be: {shape: [H], init: 0.0}
  v: {shape: [H], init: normal(0, 0.5)}
forward:
  - s: W @ x
  - mu: batch_mean(s)
  - sig2: batch_mean((s - mu)**2)
  - hn: (s - mu) / sqrt(sig2 + eps) * g + be
  - out: v @ tanh(hn)
loss: (out - y)**2
"""


def _ref(p, x, y):
    s = x @ p["W"].T
    mu = s.mean(0)
    hn = (s - mu) / np.sqrt(((s - mu) ** 2).mean(0) + 1e-5) * p["g"] + p["be"]
    return np.mean((np.tanh(hn) @ p["v"] - y) ** 2)


def _check_against(tmp_path, monkeypatch, text, ref):
    """Build `text`, compare its loss and gradient on a batch of 5 with the NumPy forward `ref`; return what the
    caller may check further."""
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "s.yaml"
    path.write_text(text)
    m = symgrad.load(str(path))
    rng = np.random.default_rng(0)
    p = {k: np.asarray(v, float) for k, v in m.init_params(seed=1).items()}
    x, y = rng.normal(size=(5, 3)), rng.normal(size=5)
    loss, grad = m.loss_and_grad(p, {"x": x, "y": y})
    assert loss == pytest.approx(ref(p, x, y), rel=1e-12)
    assert_gradient(grad, lambda q: ref(q, x, y), p)
    return m, p, x, y


def test_batchnorm_gradient_couples_samples(tmp_path, monkeypatch):
    m, p, x, y = _check_against(tmp_path, monkeypatch, SPEC, _ref)
    # the statistics are per mini-batch: another batch gives another normalisation
    out = m.forward(p, {"x": x, "y": y})["out"]
    assert out.shape == (5,)


def test_statistics_are_per_batch_and_shown_as_batch_sums(tmp_path):
    path = tmp_path / "bn.yaml"
    path.write_text(SPEC)
    prog = build_program(str(path))
    batched = {st.name: st.batched for st in prog.statements}
    assert not batched["mu"] and not batched["sig2"] and batched["hn"] and batched["s"]
    from symgrad.ir.derive import derive

    text = render_text(derive(prog), "latex", None)
    assert r"\sum_{\mathsf{b} \in \mathcal{B}}" in text and r"|\mathcal{B}|" in text


def test_cuda_refuses_batch_statistics_in_one_line(tmp_path):
    from symgrad.backends.cuda.codegen import render_cuda_module

    path = tmp_path / "bn.yaml"
    path.write_text(SPEC)
    with pytest.raises(SpecError, match="CPU backend only"):
        render_cuda_module(str(path))


def test_reference_evaluator_reduces_over_the_batch(tmp_path):
    from symgrad.checks.reference import build_reference, reference_loss

    path = tmp_path / "bn.yaml"
    path.write_text(SPEC)
    model = build_reference(str(path))
    rng = np.random.default_rng(2)
    p = {"W": rng.normal(size=(4, 3)), "g": rng.normal(size=4), "be": rng.normal(size=4), "v": rng.normal(size=4)}
    x, y = rng.normal(size=(6, 3)), rng.normal(size=6)
    assert reference_loss(model, p, {"x": x, "y": y}) == pytest.approx(_ref(p, x, y), rel=1e-12)


# the same BatchNorm as SPEC (same header), its normalisation written in one statement
ONE_STATEMENT = (
    SPEC[: SPEC.index("forward:")].replace("name: bn", "name: bn1")
    + """forward:
  - hn: (W @ x - batch_mean(W @ x)) / sqrt(batch_mean((W @ x - batch_mean(W @ x))**2) + eps) * g + be
  - out: v @ tanh(hn)
loss: (out - y)**2
"""
)

NESTED_IN_A_LAYER = """
name: bmsoft
dims: {D: 3, H: 4}
inputs: {x: [D], y: []}
params:
  W: {shape: [H, D], init: normal(0, 1)}
  a: {shape: [], init: 0.5}
  v: {shape: [H], init: normal(0, 1)}
forward:
  h: softmax(batch_mean(W @ x)) * a
loss: (v @ tanh(W @ x + h) - y)**2
"""


def _ref_soft(p, x, y):
    m = (x @ p["W"].T).mean(0)
    h = np.exp(m - m.max()) / np.exp(m - m.max()).sum() * p["a"]
    return np.mean((np.tanh(x @ p["W"].T + h) @ p["v"] - y) ** 2)


@pytest.mark.parametrize("text, ref", [(ONE_STATEMENT, _ref), (NESTED_IN_A_LAYER, _ref_soft)], ids=["bn", "softmax"])
def test_batch_statistic_nested_inside_a_statement(tmp_path, monkeypatch, text, ref):
    """Regression (fuzz campaign 2026-12-04): a batch_mean inside a larger expression (BatchNorm in one statement,
    a layer applied to a batch mean) stopped the compiler with a traceback, `index _B has no known range`: the
    batch size, batch_mean's divisor, was taken for an index of the hidden statement that stores the sum."""
    _check_against(tmp_path, monkeypatch, text, ref)
