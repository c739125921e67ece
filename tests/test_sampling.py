"""Sampled inputs (issue 13): normal, uniform, gumbel and bernoulli(p), drawn by the runner every step."""

from __future__ import annotations

import numpy as np
import pytest

import symgrad
from symgrad.errors import SpecError
from symgrad.frontend.spec import load_spec
from symgrad.lang import sampling


@pytest.mark.parametrize(
    "kind, mean, var",
    [
        ("normal", 0.0, 1.0),
        ("uniform", 0.5, 1 / 12),
        ("gumbel", 0.5772156649, np.pi**2 / 6),
        ("bernoulli(0.8)", 0.8, 0.16),
    ],
)
def test_draws_have_the_kinds_moments(kind, mean, var):
    x = sampling.draw(np.random.default_rng(0), kind, (200_000,), np.float32)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert abs(x.mean() - mean) < 0.02 and abs(x.var() - var) < 0.03 * max(var, 1)


@pytest.mark.parametrize("text", ["cauchy", "bernoulli(1.5)", "bernoulli(p)", "bernoulli()", "normal(0, 1)"])
def test_unknown_kinds_are_one_line_errors(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ninputs: {{m: {{shape: [2], sample: '{text}'}}}}\nparams: {{w: []}}\nloss: w*sum(m)\n")
    with pytest.raises(SpecError, match="unknown sample kind") as exc:
        load_spec(str(path))
    assert f"{path}:2:" in str(exc.value)


def test_dropout_mask_trains_and_is_drawn_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "drop.yaml"
    path.write_text("""
name: drop
dims: {D: 4, H: 8}
inputs:
  x: [D]
  y: []
  keep: {shape: [H], sample: bernoulli(0.75)}
params:
  W: {shape: [H, D], init: normal(0, 0.5)}
  v: {shape: [H], init: normal(0, 0.5)}
forward:
  - h: relu(W @ x) * keep / 0.75
loss: (v @ h - y)**2
""")
    m = symgrad.load(str(path))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4))
    data = {"x": x, "y": x @ np.array([1.0, -1.0, 0.5, 0.0])}
    res = symgrad.train(m, data, optimizer=symgrad.Adam(1e-2), epochs=20, batch_size=32, progress=False)
    assert res.history[-1] < 0.5 * res.history[0]
    a = m.loss(res.params, data)  # drawn (from a fixed seed: an evaluation is reproducible)
    assert a == m.loss(res.params, data)
    ones = m.loss(res.params, {**data, "keep": np.full((256, 8), 0.75)})  # the batch may supply it
    assert ones != a
