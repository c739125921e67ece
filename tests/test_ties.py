"""Max/Min at a tie: the gradient splits evenly over the tied arguments (1/k each), so the weights sum to 1.

Found by a fuzz campaign: SymPy's rule gives every tied argument Heaviside(0) = 1/2, which is a subgradient only for
two arguments; a k-way tie got k/2 times the gradient. The shipped cnn_digits hits it on every blank 2x2 pooling
window (four equal relu(bias) values), where dL/dbias was off by up to 28%. The points below sit ON the tie, but the
losses are smooth there along the parameters (every argument moves with them alike), so central differences of a
NumPy forward are the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from fdcheck import assert_gradient

import symgrad


def _load(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return symgrad.load(str(path))


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_tie_of_k_arguments_splits_the_gradient_evenly(tmp_path, op, k):
    args = ", ".join(f"a*x[{i}] + c" for i in range(k))
    m = _load(
        tmp_path,
        f"name: tie{k}\ndims: {{D: {k}}}\ninputs: {{x: [D]}}\nparams: {{a: [], c: []}}\n"
        f"forward:\n  m: {op}({args})\nloss: m**2\n",
    )
    pick = np.max if op == "Max" else np.min
    # sample 0: all k arguments tie; sample 1: k - 1 of them tie (at the extreme for Max and for Min alike)
    far = 0.1 if op == "Max" else 1.3
    x = np.array([[0.7] * k, [0.7] * (k - 1) + [far]])
    params = {"a": np.array(0.3), "c": np.array(0.2)}

    def ref(p):
        return float(np.mean(pick(p["a"] * x + p["c"], axis=1) ** 2))

    value, grad = m.loss_and_grad(params, {"x": x})
    assert value == pytest.approx(ref(params), rel=1e-12)
    assert_gradient(grad, ref, params, rtol=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_pool_over_a_blank_patch(tmp_path, dtype):
    """cnn_digits' form: relu(bias + conv) pooled 2x2 over a zero image: four equal values in every window."""
    m = _load(
        tmp_path,
        """
name: tie_pool
dims: {S: 5, O: 4, Q: 2}
inputs: {x: [S, S]}
params: {F: [2, 2], bc: []}
forward:
  conv[i, j]:
    shape: [O, O]
    expr: relu(bc + Sum(Sum(F[p, q]*x[i + p, j + q], (q, 0, 1)), (p, 0, 1)))
  pool[u, v]:
    shape: [Q, Q]
    expr: Max(conv[2*u, 2*v], conv[2*u + 1, 2*v], conv[2*u, 2*v + 1], conv[2*u + 1, 2*v + 1])
loss: sum(pool[u, v]**2, u, v)
""",
    )
    x = np.zeros((3, 5, 5))
    # a blob: in window (0, 1) only two values that do not depend on F tie; the other windows have one largest
    x[1, 1:3, 1:3] = [[0.5, -0.3], [1.1, 0.7]]
    x[2, 4, 4] = 2.0  # outside every window the pool reads
    params = {"F": np.array([[0.3, -0.2], [0.1, 0.4]]), "bc": np.array(0.5)}

    def ref(p):
        total = 0.0
        for img in x:
            conv = np.array(
                [[max(0.0, p["bc"] + np.sum(p["F"] * img[i : i + 2, j : j + 2])) for j in range(4)] for i in range(4)]
            )
            pool = conv.reshape(2, 2, 2, 2).max(axis=(1, 3))
            total += np.sum(pool**2)
        return total / len(x)

    cast = {k: v.astype(dtype) for k, v in params.items()}
    value, grad = m.loss_and_grad(cast, {"x": x.astype(dtype)})
    tol = 1e-6 if dtype == np.float64 else 2e-6
    assert value == pytest.approx(ref(params), rel=tol)
    assert_gradient({k: np.asarray(v, np.float64) for k, v in grad.items()}, ref, params, rtol=tol * 10, atol=1e-6)
    # samples 0 and 2 are blank: pool = relu(0.5) = 0.5 in all 4 windows, d/dbc of sum(pool**2) = 4 * 2 * 0.5 each
    blank_share = 2 * 4.0 / 3
    assert float(grad["bc"]) > blank_share - 1e-5  # a 4/2 = 2x overcount made this 2 * blank_share and more
