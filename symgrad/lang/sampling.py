"""Sampled inputs (`sample:` in a spec's long-form input): the noise a model draws every step unless the batch
supplies it. One parser and one drawer, used by the runner, the evaluator and the Python API alike.

| kind | draws |
| --- | --- |
| `normal` | N(0, 1) (the VAE's reparameterisation noise) |
| `uniform` | U(0, 1) |
| `gumbel` | standard Gumbel, -log(-log U) (Gumbel-max / Gumbel-softmax) |
| `bernoulli(p)` | 1 with probability p, else 0 (a dropout keep-mask: multiply by it and divide by p) |
"""

from __future__ import annotations

import re

import numpy as np

KINDS = ("normal", "uniform", "gumbel", "bernoulli(p)")
_BERNOULLI = re.compile(r"^bernoulli\(\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\)$")


def parse(text: str) -> str | None:
    """The canonical kind for a `sample:` value, or None when it is not one (the caller reports FILE:LINE)."""
    text = str(text).strip()
    if text in ("normal", "uniform", "gumbel"):
        return text
    m = _BERNOULLI.match(text)
    if m:
        p = float(m.group(1))
        if 0.0 <= p <= 1.0:
            return f"bernoulli({p!r})"
    return None


def draw(rng: np.random.Generator, kind: str, shape: tuple, dtype=np.float64) -> np.ndarray:
    """Samples of one kind, C-contiguous in dtype."""
    if kind == "normal":
        out = rng.standard_normal(shape)
    elif kind == "uniform":
        out = rng.random(shape)
    elif kind == "gumbel":
        out = rng.gumbel(size=shape)
    else:
        m = _BERNOULLI.match(kind)
        if m is None:
            raise ValueError(f"unknown sample kind {kind!r} (expected one of {', '.join(KINDS)})")
        out = (rng.random(shape) < float(m.group(1))).astype(np.float64)
    return np.ascontiguousarray(out, dtype=dtype)
