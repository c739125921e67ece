"""Non-affine Sum bounds (issue 13): Max/Min bounds express zero padding; reads are range-checked exactly over the
iteration domain, so a padded convolution is accepted and a bound that lets a read leave its array is refused."""

from __future__ import annotations

import numpy as np
import pytest
from fdcheck import assert_gradient

import symgrad
from symgrad.errors import SpecError
from symgrad.ir.graph import build_program

SPEC = """
name: pad
dims: {N: 6, K: 3, C: 2}
inputs: {x: [C, N], y: [N]}
params:
  W: {shape: [C, K], init: normal(0, 0.5)}
forward:
  - h[i]:
      shape: [N]
      expr: tanh(Sum(Sum(W[c, u] * x[c, i + u - 1], (u, Max(0, 1 - i), Min(2, N - i))), (c, 0, C - 1)))
loss: sum((h - y)**2)
"""


def _ref(p, x, y):
    xp = np.pad(x, ((0, 0), (1, 1)))
    h = np.tanh(np.array([np.sum(p["W"] * xp[:, i : i + 3]) for i in range(6)]))
    return np.sum((h - y) ** 2)


def test_zero_padded_convolution_matches_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "pad.yaml"
    path.write_text(SPEC)
    m = symgrad.load(str(path))
    rng = np.random.default_rng(0)
    p = {k: np.asarray(v, float) for k, v in m.init_params(seed=1).items()}
    batch = {"x": rng.normal(size=(3, 2, 6)), "y": rng.normal(size=(3, 6))}

    def ref(q):
        return np.mean([_ref(q, batch["x"][b], batch["y"][b]) for b in range(3)])

    loss, grad = m.loss_and_grad(p, batch)
    assert loss == pytest.approx(ref(p), rel=1e-12)
    assert_gradient(grad, ref, p, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("bounds", ["Max(0, -i), Min(2, N - i)", "Max(0, 1 - i), Min(2, N + 1 - i)"])
def test_a_bound_that_leaves_the_array_is_refused(tmp_path, bounds):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("Max(0, 1 - i), Min(2, N - i)", bounds))
    with pytest.raises(SpecError, match="index out of range"):
        build_program(str(path))
