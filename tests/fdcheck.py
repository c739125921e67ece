"""Central differences of an independent reference loss, for the tests that compare a generated gradient to it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def central_differences(loss: Callable[[dict], float], params: dict, h: float = 1e-6) -> dict:
    """d loss / d params, element by element, in float64."""
    out = {}
    for k, v in params.items():
        num = np.zeros_like(v, dtype=np.float64)
        for idx in np.ndindex(v.shape):
            hi = {a: np.array(w, dtype=np.float64, copy=True) for a, w in params.items()}
            lo = {a: np.array(w, dtype=np.float64, copy=True) for a, w in params.items()}
            hi[k][idx] += h
            lo[k][idx] -= h
            num[idx] = (loss(hi) - loss(lo)) / (2 * h)
        out[k] = num
    return out


def assert_gradient(
    grad: dict, loss: Callable[[dict], float], params: dict, h: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-9
) -> None:
    for k, num in central_differences(loss, params, h).items():
        np.testing.assert_allclose(grad[k], num, rtol=rtol, atol=atol, err_msg=f"d loss / d {k}")
