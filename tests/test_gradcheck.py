"""`symgrad check` itself: it must pass a right gradient whatever its size next to the loss, and fail a wrong one."""

from __future__ import annotations

import types

import numpy as np
import pytest
from click.testing import CliRunner

from symgrad.checks import gradcheck
from symgrad.cli.main import main
from symgrad.runtime import loader

# Found by a fuzz campaign: dL/dR ~ 4e-3 next to a loss of ~4.2. Second-order differences at h = 1e-6 carried
# ~1e-9 of rounding, 5e-5 relative to that gradient: `symgrad check` failed a gradient that is right to 3e-11.
STACKED = """
name: small_gradient_next_to_large_loss
dims: {T: 4, C: 2, H: 3}
inputs: {x: [T, C], h_in: [H]}
params: {W: [H, C], U: [H, H], V: [H, H], R: [H, H], g0: [H]}
forward:
  - P[t, j]: sum(W[j, c]*x[t, c], c)
  - h[t, j]: {shape: [T, H], expr: "tanh(P[t, j] + sum(U[j, k]*h[t - 1, k], k))", init: h_in}
  - gg[t, j]:
      shape: [T, H]
      expr: "sigmoid(sum(V[j, k]*h[t, k], k) + sum(R[j, k]*gg[t - 1, k], k))*gg[t - 1, j] + h[t, j]"
      init: g0
  - l: logsumexp(gg, axis=0)
loss: sum(l) + h[0, 0] - 0.5*sum(gg[T - 1, j]**2, j)
"""


def test_a_right_gradient_small_next_to_the_loss_passes(tmp_path):
    spec = tmp_path / "stacked.yaml"
    spec.write_text(STACKED, encoding="utf-8")
    r = CliRunner().invoke(main, ["check", str(spec)])
    assert r.exit_code == 0, r.output
    assert "MISMATCH" not in r.output


@pytest.mark.parametrize("rel", [1e-3, 1e-4])
def test_a_gradient_wrong_by_a_small_fraction_fails(tmp_path, monkeypatch, rel):
    """The same spec with every gradient scaled by 1 + rel: the check must see it (rtol 1e-5)."""
    spec = tmp_path / "stacked.yaml"
    spec.write_text(STACKED, encoding="utf-8")
    real = loader.load(str(spec))

    def wrong(params, batch=None, constants=None):
        value, grads = real.loss_and_grad(params, batch, constants)
        return value, {k: v * (1 + rel) for k, v in grads.items()}

    fake = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    fake.loss_and_grad = wrong
    monkeypatch.setattr(loader, "load", lambda path, *a, **k: fake)
    rows = gradcheck.gradient_check(str(spec))
    assert all(err > 1e-5 for _, err in rows), rows
    assert np.isfinite([err for _, err in rows]).all()
