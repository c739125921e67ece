"""The training loop's workspace (issue 16): one scratch buffer per `_train_epoch` call instead of fresh arrays per
step. Trust first: a kernel that read a buffer before writing it would now read the previous step's values, so
every spec's gradient is computed in a workspace filled with NaN and with garbage from another batch, and must
equal the fresh-allocation result exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import symgrad
from symgrad.checks.gradcheck import random_batch
from symgrad.runtime.support import batch_arrays

ROOT = Path(__file__).resolve().parent.parent
# the shipped specs and the reference corpus cover every op kind (products, loop nests, recurrences, batch
# statistics, convolutions); the benchmark specs repeat their shapes at a larger size and would only add compile time
SPECS = sorted(str(p.relative_to(ROOT)) for d in ("specs", "tests/refspecs") for p in (ROOT / d).glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS)
def test_dirty_workspace_changes_nothing(spec):
    m = symgrad.load(ROOT / spec)
    rng = np.random.default_rng(3)
    params = m.init_params(0)
    theta = m.flatten(params, np.float64)
    consts = m.consts_vector(None)
    arrays = batch_arrays(m, random_batch(m, rng, n=4), np.float64)
    b = arrays[0].shape[0] if arrays else 1
    per, fixed = m._WS
    fresh = np.zeros_like(theta)
    # the reference run gets a zeroed workspace: the same compiled signature as the dirty runs (one compile per
    # spec); the no-workspace path that allocates is what every other test runs
    total = m._loss_grad(theta, fresh, consts, 0.25, *arrays, np.zeros(b * per + fixed))
    for fill in (np.nan, 1e300):
        ws = np.full(b * per + fixed, fill)
        grad = np.full_like(theta, fill)
        assert m._loss_grad(theta, grad, consts, 0.25, *arrays, ws) == total
        np.testing.assert_array_equal(grad, fresh)
    # the previous step's leftovers from another batch are harmless too
    other = batch_arrays(m, random_batch(m, np.random.default_rng(4), n=4), np.float64)
    ws = np.empty(b * per + fixed)
    m._loss_grad(theta, np.empty_like(theta), consts, 0.25, *other, ws)
    grad = np.empty_like(theta)
    assert m._loss_grad(theta, grad, consts, 0.25, *arrays, ws) == total
    np.testing.assert_array_equal(grad, fresh)
    fwd = m._forward_pass(theta, consts, *arrays, np.zeros(b * per + fixed))
    fwd_ws = m._forward_pass(theta, consts, *arrays, np.full(b * per + fixed, np.nan))
    for a, c in zip(fwd, fwd_ws, strict=True):
        np.testing.assert_array_equal(a, c)


def test_train_epoch_allocates_the_workspace_once():
    """The epoch kernel's text makes one workspace and passes it to every step's `_loss_grad`."""
    src = Path(symgrad.load(ROOT / "specs/vae.yaml").__file__).read_text()
    body = src.split("def _train_epoch", 1)[1].split("\ndef ", 1)[0]
    assert body.count("_mf.scratch(") == 1 and ", _ws)" in body
    lg = src.split("def _loss_grad", 1)[1].split("\ndef ", 1)[0]
    assert "np.empty(" not in lg and lg.count("_mf.scratch(") == 1  # only when the caller passes no workspace
