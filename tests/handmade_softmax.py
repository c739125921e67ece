"""Hand-written double of a generated classifier: z = W x + b, softmax cross-entropy, one-hot y [K]."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from symgrad.runtime.optim import clip_, grad_norm_ok, update

D, K = 4, 3
SPEC = {
    "name": "handmade_softmax",
    "inputs": {"x": [D], "y": [K]},
    "params": {"W": [K, D], "b": [K]},
    "outputs": ["z"],
    "objective": "minimize",
    "reduction": "mean",
}
PARAMS = (("W", (K, D)), ("b", (K,)))
OFFSETS = (0, K * D)
N_THETA = K * D + K
INPUTS = (("x", (D,), None), ("y", (K,), None))
CONSTANTS = ()
SIGN = 1.0
REDUCTION = "mean"


def init_params(seed: int = 0, dtype=np.float64) -> dict:
    return {"W": np.zeros((K, D), dtype), "b": np.zeros(K, dtype)}


def flatten(params: dict, dtype=np.float64) -> np.ndarray:
    return np.concatenate([np.asarray(params["W"], dtype).ravel(), np.asarray(params["b"], dtype).ravel()])


def unflatten(theta: np.ndarray) -> dict:
    return {"W": theta[: K * D].reshape(K, D), "b": theta[K * D :].reshape(K)}


def consts_vector(constants: dict | None = None) -> np.ndarray:
    if constants:
        raise ValueError(f"unknown constant {next(iter(constants))!r}")
    return np.zeros(1)  # padded like the generated modules


@njit(cache=True)
def _loss_grad(theta, grad, consts, gscale, x, y):
    total = 0.0
    grad[:] = 0.0
    z = np.empty(K)
    for n in range(x.shape[0]):
        zmax = -np.inf
        for k in range(K):
            z[k] = theta[K * D + k]
            for d in range(D):
                z[k] += theta[k * D + d] * x[n, d]
            zmax = max(zmax, z[k])
        s = 0.0
        for k in range(K):
            s += math.exp(z[k] - zmax)
        lse = zmax + math.log(s)
        for k in range(K):
            total += y[n, k] * (lse - z[k])
            dz = math.exp(z[k] - lse) * 1.0 - y[n, k]  # sum(y) = 1
            for d in range(D):
                grad[k * D + d] += gscale * dz * x[n, d]
            grad[K * D + k] += gscale * dz
    return total


@njit(cache=True)
def _loss(theta, consts, x, y):
    return _loss_grad(theta, np.empty_like(theta), consts, 1.0, x, y)


@njit(cache=True)
def _train_epoch(theta, grad, state, kind, hyper, t0, lrs, consts_steps, clip_norm, gscale, x, y):
    n_steps = x.shape[0]
    losses = np.zeros(n_steps)
    for i in range(n_steps):
        loss = _loss_grad(theta, grad, consts_steps[i], gscale, x[i], y[i])
        losses[i] = loss
        norm, ok = grad_norm_ok(grad)
        if not (np.isfinite(loss) and ok):
            return losses, i
        clip_(grad, clip_norm, norm)
        update(theta, grad, state, kind, lrs[i], hyper, t0 + i + 1)
    return losses, n_steps


def forward(params: dict, batch: dict, constants=None) -> dict:
    return {"z": np.asarray(batch["x"]) @ params["W"].T + params["b"]}


def loss(params: dict, batch: dict, constants=None) -> float:
    x, y = np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64)
    return _loss(flatten(params), consts_vector(constants), x, y) / x.shape[0]
