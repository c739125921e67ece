"""Per-axis library layers (issue 13): softmax / log_softmax / logsumexp / mean / sum / var / standardize along one
axis, checked against NumPy (float64) and central differences of the NumPy forward."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from fdcheck import assert_gradient

import symgrad
from symgrad.errors import SpecError
from symgrad.ir.graph import build_program

SPEC = """
name: axis
dims: {N: 3, K: 4}
inputs:
  x: [N, K]
  y: [N, K]
params:
  W: {shape: [K, K], init: normal(0, 0.5)}
  g: {shape: [K], init: 1.0}
forward:
  - S: x @ W
  - P: softmax(S, axis=-1)
  - lse0: logsumexp(S, axis=0)
  - m: mean(S, axis=1)
  - Z: standardize(S, 1e-5, axis=1)
  - ln[n, k]: Z[n, k] * g[k]
  - v: var(S, axis=0)
loss: >-
  -sum(y * log(P)) + sum(lse0) + sum(m**2) + sum(ln**3) + sum(log_softmax(S, axis=0) * y)
  + sum(sum(S, axis=1)) + sum(v)
"""


def _lse(a, axis):
    mx = a.max(axis=axis, keepdims=True)
    return (mx + np.log(np.exp(a - mx).sum(axis=axis, keepdims=True))).squeeze(axis)


def _ref(p, x, y):
    S = x @ p["W"]
    P = np.exp(S - _lse(S, 1)[:, None])
    Z = (S - S.mean(1, keepdims=True)) / np.sqrt(S.var(1, keepdims=True) + 1e-5)
    ls0 = S - _lse(S, 0)[None, :]
    return (
        -np.sum(y * np.log(P))
        + _lse(S, 0).sum()
        + np.sum(S.mean(1) ** 2)
        + np.sum((Z * p["g"]) ** 3)
        + np.sum(ls0 * y)
        + S.sum()
        + S.var(0).sum()
    )


def test_axis_layers_match_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "axis.yaml"
    path.write_text(SPEC)
    m = symgrad.load(str(path))
    rng = np.random.default_rng(0)
    p = {k: np.asarray(v, float) for k, v in m.init_params(seed=1).items()}
    batch = {"x": rng.normal(size=(2, 3, 4)), "y": rng.random((2, 3, 4))}

    def ref(q):
        return np.mean([_ref(q, batch["x"][b], batch["y"][b]) for b in range(2)])

    loss, grad = m.loss_and_grad(p, batch)
    assert loss == pytest.approx(ref(p), rel=1e-9)
    assert_gradient(grad, ref, p, atol=1e-8)


def test_axis_shapes(tmp_path):
    path = tmp_path / "axis.yaml"
    path.write_text(SPEC)
    prog = build_program(str(path))
    shapes = {st.name: st.shape for st in prog.statements if not st.hidden}
    assert shapes["P"] == (3, 4) and shapes["lse0"] == (4,) and shapes["m"] == (3,) and shapes["v"] == (4,)


@pytest.mark.parametrize(
    "expr, msg",
    [
        ("softmax(x, axis=2)", "out of range"),
        ("tanh(x, axis=0)", "takes no axis="),
        ("softmax(x, axis=k)", "integer literal"),
        ("softmax(x, dim=0)", "except axis="),
        ("softmax(x[i, j], axis=0)", "whole array"),
    ],
)
def test_axis_errors_are_one_line(tmp_path, expr, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: bad
        dims: {{N: 2, K: 3}}
        inputs: {{x: [N, K]}}
        params: {{w: {{shape: [], init: 1.0}}}}
        forward:
          - P: {expr}
        loss: w * sum(P)
        """)
    )
    with pytest.raises(SpecError, match=msg) as exc:
        build_program(str(path))
    assert ":6:" in str(exc.value)


def test_random_axis_chains_and_batch_statistics_match_numpy(tmp_path):
    """tests/fuzz_axes.py: 200 random chains of per-axis layers (negative axes too) over 1-3-d arrays, half of them
    batch-normalised at a random point, against NumPy and its central differences, and symgrad check's evaluator.
    A subprocess with the JIT off (the maths is under test), ~12 s."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "SYMGRAD_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(root / "tests" / "fuzz_axes.py"), "--n", "200", "--seed", "20261205"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("200 cases: "), last
    tally = ast.literal_eval(last.split(": ", 1)[1])
    assert tally.get("ok", 0) >= 150, tally
