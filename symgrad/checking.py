"""`symgrad check`: generated gradients against float64 central differences of the generated loss."""

from __future__ import annotations

import numpy as np


def random_batch(module, rng: np.random.Generator, n: int = 3) -> dict | None:
    """Inputs in (0.1, 1): positive, so specs that take logs of data stay in their domain."""
    if not module.INPUTS:
        return None
    return {name: rng.uniform(0.1, 1.0, size=(n, *shape)) for name, shape, _ in module.INPUTS}


def gradient_check(spec_path: str, seed: int = 0, eps: float = 1e-6, directions: int = 3) -> list[tuple[str, float]]:
    """Worst relative error per parameter, over random directions (and every element of small params)."""
    from symgrad.loader import load

    module = load(spec_path)
    rng = np.random.default_rng(seed)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in module.init_params(seed).items()}
    batch = random_batch(module, rng)
    _, grads = module.loss_and_grad(params, batch)
    rows = []
    for name, value in params.items():
        dirs = [rng.standard_normal(value.shape) for _ in range(directions)]
        if value.size <= 16:
            for i in range(value.size):
                e = np.zeros(value.size)
                e[i] = 1.0
                dirs.append(e.reshape(value.shape))
        worst = 0.0
        for d in dirs:
            plus = dict(params, **{name: value + eps * d})
            minus = dict(params, **{name: value - eps * d})
            fd = (module.loss(plus, batch) - module.loss(minus, batch)) / (2 * eps)
            an = float(np.sum(grads[name] * d))
            scale = max(abs(fd), abs(an), 1e-6)
            worst = max(worst, abs(fd - an) / scale)
        rows.append((name, worst))
    return rows
