"""The four benchmark workloads: shapes, data and initial weights, generated once and shared by every peer.

Why one module: every peer must see bit-identical data, batches, initial weights and (for the VAE) noise,
so the orchestrator builds them here once and hands them to each worker process as an .npz file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INIT_SEED = 0  # initial weights: U(+-1/sqrt(fan_in)) for weights and biases, numpy default_rng(0)
DATA_SEED = 1  # synthetic inputs, random labels and the VAE's pre-drawn eps
LR, BETA1, BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class Workload:
    wid: str
    title: str
    kind: str  # "mlp" or "vae"
    layers: tuple[int, ...]  # MLP sizes, input first; for the VAE (D, H, Z)
    act: str  # hidden activation
    loss: str  # "mse", "ce" or "elbo"
    batch: int
    dtype: str

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


WORKLOADS: dict[str, Workload] = {
    "W1": Workload(
        "W1",
        "MLP 2-16-1 tanh, MSE, 1024 synthetic sin*cos samples",
        "mlp",
        (2, 16, 1),
        "tanh",
        "mse",
        32,
        "float64",
    ),
    "W2": Workload(
        "W2",
        "MLP 64-128-10 relu, softmax CE, digits/16 (first 1437)",
        "mlp",
        (64, 128, 10),
        "relu",
        "ce",
        64,
        "float32",
    ),
    "W3": Workload(
        "W3",
        "MLP 784-512-512-10 relu, softmax CE, 8192 random normal inputs",
        "mlp",
        (784, 512, 512, 10),
        "relu",
        "ce",
        256,
        "float32",
    ),
    "W4": Workload(
        "W4",
        "VAE 64-128-(8+8)-128-64 tanh, BCE-with-logits + Gaussian KL, binarised digits",
        "vae",
        (64, 128, 8),
        "tanh",
        "elbo",
        64,
        "float32",
    ),
    # W4 written the way a user writes it, the decoder in one statement: `logits: Wo @ tanh(Wd @ z + bd) + bo`.
    # A spec's speed must not depend on how its statements are split (issue 16); peers run the same maths.
    "W4S": Workload(
        "W4S",
        "W4 with the decoder in one statement (logits: Wo @ tanh(Wd @ z + bd) + bo)",
        "vae",
        (64, 128, 8),
        "tanh",
        "elbo",
        64,
        "float32",
    ),
}


def param_shapes(w: Workload) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape, fan_in) in the order the weights are drawn; names match the symgrad specs."""
    if w.kind == "mlp":
        out = []
        for i, (fin, fout) in enumerate(zip(w.layers[:-1], w.layers[1:], strict=False), start=1):
            out += [(f"W{i}", (fout, fin), fin), (f"b{i}", (fout,), fin)]
        return out
    d, h, z = w.layers
    return [
        ("We", (h, d), d),
        ("be", (h,), d),
        ("Wm", (z, h), h),
        ("bm", (z,), h),
        ("Wv", (z, h), h),
        ("bv", (z,), h),
        ("Wd", (h, z), z),
        ("bd", (h,), z),
        ("Wo", (d, h), h),
        ("bo", (d,), h),
    ]


def init_params(w: Workload) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(INIT_SEED)
    params = {}
    for name, shape, fan_in in param_shapes(w):
        bound = 1.0 / math.sqrt(fan_in)
        params[name] = rng.uniform(-bound, bound, size=shape).astype(w.np_dtype)
    return params


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data[:1437], d.target[:1437]


def make_data(w: Workload) -> dict[str, np.ndarray]:
    """Pre-batched arrays of shape (n_steps, B, ...); the trailing partial batch is dropped."""
    rng = np.random.default_rng(DATA_SEED)
    if w.wid == "W1":
        x = rng.uniform(-math.pi, math.pi, size=(1024, 2))
        data = {"x": x, "y": (np.sin(x[:, 0]) * np.cos(x[:, 1]))[:, None]}
    elif w.wid == "W2":
        pixels, labels = _digits()
        data = {"x": pixels / 16.0, "labels": labels}
    elif w.wid == "W3":
        data = {"x": rng.standard_normal((8192, 784)), "labels": rng.integers(0, 10, size=8192)}
    else:
        pixels, _ = _digits()
        data = {"x": (pixels > 7).astype(np.float64)}
    n_steps = len(data["x"]) // w.batch
    keep = n_steps * w.batch
    out = {}
    for key, arr in data.items():
        arr = arr[:keep].reshape(n_steps, w.batch, *arr.shape[1:])
        out[key] = arr.astype(np.int64) if key == "labels" else np.ascontiguousarray(arr, dtype=w.np_dtype)
    if "labels" in out:
        out["y"] = np.eye(w.layers[-1], dtype=w.np_dtype)[out["labels"]]
    if w.kind == "vae":
        out["eps"] = rng.standard_normal((n_steps, w.batch, w.layers[2])).astype(w.np_dtype)
    return out


def train_flops_per_step(w: Workload) -> float:
    """Matrix-product FLOPs of one training step: forward 2*B*sum(in*out), backward dW for every layer and
    dX for every layer but the first (elementwise work and the optimizer are not counted)."""
    if w.kind != "mlp":
        d, h, z = w.layers
        macs = [d * h, 2 * h * z, z * h, h * d]
    else:
        macs = [a * b for a, b in zip(w.layers[:-1], w.layers[1:], strict=False)]
    fwd = 2 * w.batch * sum(macs)
    return 3 * fwd - 2 * w.batch * macs[0]


def write_npz(w: Workload, path: str) -> None:
    arrays = make_data(w)
    arrays.update({f"p_{k}": v for k, v in init_params(w).items()})
    np.savez(path, **arrays)


def read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path) as f:
        data = {k: f[k] for k in f.files if not k.startswith("p_")}
        params = {k[2:]: f[k] for k in f.files if k.startswith("p_")}
    return data, params
