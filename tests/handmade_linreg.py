"""Hand-written double of a generated module (docs/internals.md), independent of the code generator.

Model: yhat = w . x + b + sigma * noise, loss = scale * (yhat - y)**2, with `noise` a sampled input
(`sample: normal`) and `scale`, `sigma` constants. The runner tests use it so they do not depend on codegen.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from symgrad.runtime.optim import clip_, grad_norm_ok, update

D = 3
SPEC = {
    "name": "handmade_linreg",
    "dims": {"D": D},
    "inputs": {"x": [D], "y": [], "noise": {"shape": [], "sample": "normal"}},
    "params": {"w": [D], "b": []},
    "constants": {"scale": 1.0, "sigma": 0.0},
    "outputs": ["yhat"],
    "objective": "minimize",
    "reduction": "mean",
}
PARAMS = (("w", (D,)), ("b", ()))
OFFSETS = (0, D)
N_THETA = D + 1
INPUTS = (("x", (D,), None), ("y", (), None), ("noise", (), "normal"))
CONSTANTS = (("scale", 1.0), ("sigma", 0.0))
SIGN = 1.0
REDUCTION = "mean"


def init_params(seed: int = 0, dtype=np.float64) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(0.0, 0.1, D).astype(dtype), "b": np.zeros((), dtype)}


def flatten(params: dict, dtype=np.float64) -> np.ndarray:
    theta = np.empty(N_THETA, dtype)
    for (name, shape), off in zip(PARAMS, OFFSETS, strict=True):
        size = int(np.prod(shape))
        theta[off : off + size] = np.asarray(params[name]).reshape(-1)
    return theta


def unflatten(theta: np.ndarray) -> dict:
    out = {}
    for (name, shape), off in zip(PARAMS, OFFSETS, strict=True):
        size = int(np.prod(shape))
        out[name] = theta[off : off + size].reshape(shape)
    return out


def consts_vector(constants: dict | None = None) -> np.ndarray:
    names = [n for n, _ in CONSTANTS]
    vec = np.array([v for _, v in CONSTANTS], dtype=np.float64)
    for k, v in (constants or {}).items():
        if k not in names:
            raise ValueError(f"unknown constant {k!r}")
        vec[names.index(k)] = v
    return vec


@njit(cache=True)
def _loss_grad(theta, grad, consts, gscale, x, y, noise):
    scale = consts[0]
    sigma = consts[1]
    d = x.shape[1]
    total = 0.0
    grad[:] = 0.0
    for n in range(x.shape[0]):
        r = theta[d] + sigma * noise[n] - y[n]
        for k in range(d):
            r += theta[k] * x[n, k]
        total += scale * r * r
        dr = 2.0 * scale * r
        for k in range(d):
            grad[k] += dr * x[n, k]
        grad[d] += dr
    for k in range(d + 1):
        grad[k] *= gscale
    return total


@njit(cache=True)
def _loss(theta, consts, x, y, noise):
    grad = np.empty_like(theta)
    return _loss_grad(theta, grad, consts, 1.0, x, y, noise)


@njit(cache=True)
def _train_epoch(theta, grad, state, kind, hyper, t0, lrs, consts_steps, clip_norm, gscale, x, y, noise):
    n_steps = x.shape[0]
    losses = np.zeros(n_steps)
    for i in range(n_steps):
        loss = _loss_grad(theta, grad, consts_steps[i], gscale, x[i], y[i], noise[i])
        losses[i] = loss
        norm, ok = grad_norm_ok(grad)
        if not (np.isfinite(loss) and ok):
            return losses, i
        clip_(grad, clip_norm, norm)
        update(theta, grad, state, kind, lrs[i], hyper, t0 + i + 1)
    return losses, n_steps


def _batch_args(batch: dict, dtype) -> tuple:
    x = np.asarray(batch["x"], dtype)
    noise = batch.get("noise")
    noise = np.zeros(x.shape[0], dtype) if noise is None else np.asarray(noise, dtype)
    return x, np.asarray(batch["y"], dtype), noise


def forward(params: dict, batch: dict, constants: dict | None = None) -> dict:
    c = consts_vector(constants)
    x, _, noise = _batch_args(batch, np.asarray(params["w"]).dtype)
    return {"yhat": x @ params["w"] + params["b"] + c[1] * noise}


def loss(params: dict, batch: dict, constants: dict | None = None) -> float:
    dtype = np.asarray(params["w"]).dtype
    x, y, noise = _batch_args(batch, dtype)
    return _loss(flatten(params, dtype), consts_vector(constants), x, y, noise) / x.shape[0]


def loss_and_grad(params: dict, batch: dict, constants: dict | None = None) -> tuple:
    dtype = np.asarray(params["w"]).dtype
    x, y, noise = _batch_args(batch, dtype)
    theta = flatten(params, dtype)
    grad = np.empty_like(theta)
    total = _loss_grad(theta, grad, consts_vector(constants), 1.0 / x.shape[0], x, y, noise)
    return total / x.shape[0], {k: v.copy() for k, v in unflatten(grad).items()}
