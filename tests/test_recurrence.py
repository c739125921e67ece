"""Recurrences (issue 13): `h[t, j]: {shape: [T, H], expr: "... h[t - 1, k] ...", init: h0}` runs as a loop over t
in the generated kernels, forward and backward through time. Checked against NumPy forwards written here and
central differences of them; module size does not grow with T."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from fdcheck import assert_gradient

import symgrad
from symgrad.backends.cpu.codegen import render as render_module
from symgrad.errors import SpecError
from symgrad.ir.graph import build_program

ELMAN = """
name: elman
dims: {T: 5, C: 3, H: 4, K: 2}
inputs: {x: [T, C], y: [K]}
params:
  Wx: {shape: [H, C], init: normal(0, 0.5)}
  Wh: {shape: [H, H], init: normal(0, 0.5)}
  b: {shape: [H], init: 0.1}
  h0: {shape: [H], init: normal(0, 0.5)}
  Wy: {shape: [K, H], init: normal(0, 0.5)}
forward:
  - h[t, j]:
      shape: [T, H]
      expr: tanh(sum(Wx[j, c] * x[t, c], c) + sum(Wh[j, k] * h[t - 1, k], k) + b[j])
      init: h0
  - z[k]: sum(Wy[k, j] * h[T - 1, j], j)
loss: softmax_cross_entropy(z, y) + 0.1 * sum(h**2)
"""

GRU = """
name: gru
dims: {T: 4, C: 2, H: 3, K: 2}
inputs: {x: [T, C], y: [K]}
params:
  Wz: {shape: [H, C], init: normal(0, 0.7)}
  Uz: {shape: [H, H], init: normal(0, 0.7)}
  Wr: {shape: [H, C], init: normal(0, 0.7)}
  Ur: {shape: [H, H], init: normal(0, 0.7)}
  Wn: {shape: [H, C], init: normal(0, 0.7)}
  Un: {shape: [H, H], init: normal(0, 0.7)}
  Wo: {shape: [K, H], init: normal(0, 0.7)}
forward:
  - u[t, j]: {shape: [T, H], expr: "sigmoid(sum(Wz[j, c]*x[t, c], c) + sum(Uz[j, k]*h[t - 1, k], k))"}
  - r[t, j]: {shape: [T, H], expr: "sigmoid(sum(Wr[j, c]*x[t, c], c) + sum(Ur[j, k]*h[t - 1, k], k))"}
  - n[t, j]: {shape: [T, H], expr: "tanh(sum(Wn[j, c]*x[t, c], c) + r[t, j]*sum(Un[j, k]*h[t - 1, k], k))"}
  - h[t, j]: {shape: [T, H], expr: "(1 - u[t, j])*n[t, j] + u[t, j]*h[t - 1, j]", init: 0}
  - z[k]: sum(Wo[k, j] * h[T - 1, j], j)
loss: softmax_cross_entropy(z, y)
"""

# Two states in one step: the first gate reads h only, the cell state s is carried as well (the reference evaluator
# once started only the states the step's first statement reads: KeyError 's' in `symgrad check`).
LSTM = """
name: lstm
dims: {T: 3, C: 2, H: 3, K: 2}
inputs: {x: [T, C], y: [K]}
params:
  Wi: {shape: [H, C], init: normal(0, 0.7)}
  Ui: {shape: [H, H], init: normal(0, 0.7)}
  Wf: {shape: [H, C], init: normal(0, 0.7)}
  Uf: {shape: [H, H], init: normal(0, 0.7)}
  Wg: {shape: [H, C], init: normal(0, 0.7)}
  Ug: {shape: [H, H], init: normal(0, 0.7)}
  Wo: {shape: [H, C], init: normal(0, 0.7)}
  Uo: {shape: [H, H], init: normal(0, 0.7)}
  h0: {shape: [H], init: normal(0, 0.7)}
  V: {shape: [K, H], init: normal(0, 0.7)}
forward:
  - i[t, j]: {shape: [T, H], expr: "sigmoid(sum(Wi[j, c]*x[t, c], c) + sum(Ui[j, k]*h[t - 1, k], k))"}
  - f[t, j]: {shape: [T, H], expr: "sigmoid(sum(Wf[j, c]*x[t, c], c) + sum(Uf[j, k]*h[t - 1, k], k))"}
  - g[t, j]: {shape: [T, H], expr: "tanh(sum(Wg[j, c]*x[t, c], c) + sum(Ug[j, k]*h[t - 1, k], k))"}
  - o[t, j]: {shape: [T, H], expr: "sigmoid(sum(Wo[j, c]*x[t, c], c) + sum(Uo[j, k]*h[t - 1, k], k))"}
  - s[t, j]: {shape: [T, H], expr: "f[t, j]*s[t - 1, j] + i[t, j]*g[t, j]", init: 0}
  - h[t, j]: {shape: [T, H], expr: "o[t, j]*tanh(s[t, j])", init: h0}
  - z[k]: sum(V[k, j] * h[T - 1, j], j)
loss: softmax_cross_entropy(z, y)
"""


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _ce(z, y):
    return np.log(np.exp(z - z.max()).sum()) + z.max() - y @ z


def _elman(p, x, y):
    h, hs = p["h0"], []
    for t in range(5):
        h = np.tanh(p["Wx"] @ x[t] + p["Wh"] @ h + p["b"])
        hs.append(h)
    return _ce(p["Wy"] @ h, y) + 0.1 * np.sum(np.array(hs) ** 2)


def _gru(p, x, y):
    h = np.zeros(3)
    for t in range(4):
        u = _sig(p["Wz"] @ x[t] + p["Uz"] @ h)
        r = _sig(p["Wr"] @ x[t] + p["Ur"] @ h)
        n = np.tanh(p["Wn"] @ x[t] + r * (p["Un"] @ h))
        h = (1 - u) * n + u * h
    return _ce(p["Wo"] @ h, y)


def _lstm(p, x, y):
    h, c = p["h0"], np.zeros(3)
    for t in range(3):
        i = _sig(p["Wi"] @ x[t] + p["Ui"] @ h)
        f = _sig(p["Wf"] @ x[t] + p["Uf"] @ h)
        g = np.tanh(p["Wg"] @ x[t] + p["Ug"] @ h)
        o = _sig(p["Wo"] @ x[t] + p["Uo"] @ h)
        c = f * c + i * g
        h = o * np.tanh(c)
    return _ce(p["V"] @ h, y)


CASES = [(ELMAN, _elman), (GRU, _gru), (LSTM, _lstm)]
IDS = ["elman", "gru", "lstm"]


@pytest.mark.parametrize("text, ref", CASES, ids=IDS)
def test_recurrence_matches_numpy_bptt(tmp_path, monkeypatch, text, ref):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "rec.yaml"
    path.write_text(text)
    m = symgrad.load(str(path))
    rng = np.random.default_rng(0)
    p = {k: np.asarray(v, float) for k, v in m.init_params(seed=4).items()}
    (xn, xs, _), (yn, ys, _) = m.INPUTS
    batch = {xn: 2 * rng.normal(size=(3, *xs)), yn: np.eye(2)[[0, 1, 1]]}

    def mean_ref(q):
        return np.mean([ref(q, batch["x"][b], batch["y"][b]) for b in range(3)])

    loss, grad = m.loss_and_grad(p, batch)
    assert loss == pytest.approx(mean_ref(p), rel=1e-10)
    assert_gradient(grad, mean_ref, p, h=1e-5)


def test_module_size_does_not_grow_with_T(tmp_path):
    sizes = []
    for T in (5, 50):
        path = tmp_path / f"elman{T}.yaml"
        path.write_text(ELMAN.replace("T: 5", f"T: {T}").replace("range(5)", ""))
        sizes.append(len(render_module(str(path)).splitlines()))
    assert sizes[0] == sizes[1]


def test_step_loops_in_generated_code(tmp_path):
    path = tmp_path / "elman.yaml"
    path.write_text(ELMAN)
    text = render_module(str(path))
    assert "for t in range(0, 5):" in text and "for t in range(4, -1, -1):" in text


BASE = """\
name: bad
dims: {T: 3, H: 2}
inputs: {x: [T, H]}
params: {W: {shape: [H, H], init: 0.5}}
forward:
"""


@pytest.mark.parametrize(
    "stmts, msg",
    [
        ('  - h[t, j]: {shape: [T, H], expr: "tanh(sum(W[j, k]*h[t, k], k))", init: 0}', "before it is computed"),
        ('  - h[t, j]: {shape: [T, H], expr: "tanh(sum(W[j, k]*h[t + 1, k], k))", init: 0}', "out of range"),
        ('  - h[t, j]: {expr: "tanh(sum(W[j, k]*h[t - 1, k], k))", init: 0}', "index form with a shape"),
        ('  - h[t, j]: {shape: [T, H], expr: "tanh(x[t, j])", init: 0}', "nothing reads it"),
        ('  - h[t, j]: {shape: [T, H], expr: "tanh(sum(W[j, k]*h[t - 1, k], k))", init: W}', "has shape"),
        ('  - h[t, j]: {shape: [T, H], expr: "tanh(sum(W[j, k]*h[t - 1, k], k))"}', "refers to itself"),
        (
            '  - a[t, j]: {shape: [T, H], expr: "x[t, j] + h[t, j]"}\n'
            '  - h[t, j]: {shape: [T, H], expr: "tanh(a[t, j] + h[t - 1, j])", init: 0}',
            "before it is computed",
        ),
        (
            '  - a[j, t]: {shape: [H, T], expr: "x[t, j] + h[t - 1, j]"}\n'
            '  - h[t, j]: {shape: [T, H], expr: "tanh(a[j, t])", init: 0}',
            "first index must be the step index",
        ),
    ],
)
def test_bad_recurrences_are_one_line_errors(tmp_path, stmts, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + stmts + "\nloss: sum(W) * sum(h)\n")
    with pytest.raises(SpecError, match=msg) as exc:
        build_program(str(path))
    assert str(exc.value).startswith(str(path) + ":")


def test_cuda_refuses_a_recurrence_in_one_line(tmp_path):
    from symgrad.backends.cuda.codegen import render_cuda_module

    path = tmp_path / "elman.yaml"
    path.write_text(textwrap.dedent(ELMAN))
    with pytest.raises(SpecError, match="CPU backend only"):
        render_cuda_module(str(path))


@pytest.mark.parametrize("text, ref", CASES, ids=IDS)
def test_reference_evaluator_runs_recurrences(tmp_path, text, ref):
    """The independent evaluator (symgrad check) reads a recurrence as written: step by step from its init."""
    from symgrad.checks.reference import build_reference, reference_loss

    path = tmp_path / "rec.yaml"
    path.write_text(text)
    model = build_reference(str(path))
    rng = np.random.default_rng(1)
    p = {k: rng.normal(size=shape) * 0.6 for k, shape in model.params.items()}
    batch = {k: rng.normal(size=(2, *shape)) for k, shape in model.inputs.items()}
    want = np.mean([ref(p, batch["x"][b], batch["y"][b]) for b in range(2)])
    assert reference_loss(model, p, batch) == pytest.approx(want, rel=1e-12)


def test_random_multi_state_recurrences_match_a_step_loop(tmp_path):
    """tests/fuzz_recurrences.py: 150 random recurrences of 1-3 states (lags 1-2, current-step reads, gates inside the
    step, every kind of init) against a NumPy loop over t and its central differences. A subprocess with the JIT off
    (the maths is under test, not Numba), ~15 s."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "SYMGRAD_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(root / "tests" / "fuzz_recurrences.py"), "--n", "150", "--seed", "20261205"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    import ast

    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("150 cases: "), last
    tally = ast.literal_eval(last.split(": ", 1)[1])
    assert tally.get("ok", 0) >= 100, tally  # the generator must keep drawing mostly valid specs
