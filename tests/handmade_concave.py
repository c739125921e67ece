"""Hand-written double of a generated module with no inputs and `objective: maximize`.

f(w) = -sum((w - c)**2) with c = [1, 2, 3]: concave, maximum 0 at w = c. Full-batch gradient ascent.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from symgrad.runtime.optim import clip_, grad_norm_ok, update

SPEC = {
    "name": "handmade_concave",
    "inputs": {},
    "params": {"w": [3]},
    "objective": "maximize",
    "reduction": "mean",
    "outputs": [],
}
PARAMS = (("w", (3,)),)
OFFSETS = (0,)
N_THETA = 3
INPUTS = ()
CONSTANTS = ()
SIGN = -1.0
REDUCTION = "mean"


def init_params(seed: int = 0, dtype=np.float64) -> dict:
    return {"w": np.array([10.0, -10.0, 0.0], dtype)}


def flatten(params: dict, dtype=np.float64) -> np.ndarray:
    return np.asarray(params["w"], dtype).reshape(-1).copy()


def unflatten(theta: np.ndarray) -> dict:
    return {"w": theta[0:3].reshape(3)}


def consts_vector(constants: dict | None = None) -> np.ndarray:
    if constants:
        raise ValueError(f"unknown constant {next(iter(constants))!r}")
    return np.zeros(0)


@njit(cache=True)
def _loss_grad(theta, grad, consts, gscale):
    total = 0.0
    for k in range(3):
        r = theta[k] - (k + 1.0)
        total -= r * r
        grad[k] = gscale * (-2.0 * r)
    return total


@njit(cache=True)
def _loss(theta, consts):
    return _loss_grad(theta, np.empty_like(theta), consts, 1.0)


@njit(cache=True)
def _train_epoch(theta, grad, state, kind, hyper, t0, lrs, consts_steps, clip_norm, gscale):
    n_steps = lrs.shape[0]
    losses = np.zeros(n_steps)
    for i in range(n_steps):
        loss = _loss_grad(theta, grad, consts_steps[i], gscale)
        losses[i] = loss
        norm, ok = grad_norm_ok(grad)
        if not (np.isfinite(loss) and ok):
            return losses, i
        clip_(grad, clip_norm, norm)
        update(theta, grad, state, kind, lrs[i], hyper, t0 + i + 1)
    return losses, n_steps


def forward(params: dict, batch=None, constants=None) -> dict:
    return {}


def loss(params: dict, batch=None, constants=None) -> float:
    return _loss(flatten(params), consts_vector(constants))


def loss_and_grad(params: dict, batch=None, constants=None) -> tuple:
    theta = flatten(params)
    grad = np.empty_like(theta)
    total = _loss_grad(theta, grad, consts_vector(constants), 1.0)
    return total, {"w": grad.copy()}
