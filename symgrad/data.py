"""Data sets mapped onto a spec's inputs: the sklearn 8x8 digits, or any `.npz` named like the inputs.

The digits rule, by the spec's data inputs (sampled inputs are never loaded):

- **Classifier** (an input `y`): `y` of shape [K] gets one-hot labels (K must be 10), `y` of shape [] the
  integer label; `x` = pixels / 16; stratified 80/20 split (`random_state=0`).
- **Density model or autoencoder** (only `x`): first 1437 images train, last 360 test (the split the NADE and
  VAE figures use). Pixels are binarised (`pixel > 7` -> 1) when the spec is a likelihood model, i.e. its
  objective is `maximize` (NADE, FVSBN, a VAE written as ELBO maximisation) or its SPEC loss text uses `bce`;
  otherwise (e.g. an MSE autoencoder) real-valued pixels / 16. `binarize=True/False` overrides the rule.
- `x` may have shape [64], [8, 8] or [1, 8, 8]: the images are reshaped to fit.

`.npz` files: the training arrays are named exactly like the inputs (`x`, `y`, ...); test arrays, if any,
are named `<input>_test`. Without test arrays `test` is None.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from symgrad.errors import DataError, UsageError

N_TRAIN_DENSITY = 1437  # first 1437 digits train, last 360 test, for models of x alone


def _data_inputs(model: ModuleType) -> dict[str, tuple[int, ...]]:
    return {name: tuple(shape) for name, shape, sample in model.INPUTS if sample is None}


def is_likelihood_model(model: ModuleType) -> bool:
    """The default binarisation rule: a maximised objective (a log-likelihood / ELBO) or a bce loss."""
    spec = getattr(model, "SPEC", {}) or {}
    loss_text = str(spec.get("loss", "")) if isinstance(spec, dict) else ""
    return float(model.SIGN) < 0 or "bce" in loss_text


def _digits(model: ModuleType, binarize: bool | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits

    inputs = _data_inputs(model)
    unknown = [n for n in inputs if n not in ("x", "y")]
    if "x" not in inputs or unknown:
        raise DataError(
            f"the digits data set provides inputs 'x' (and 'y'); the spec needs {', '.join(inputs)}"
        )
    x_shape = inputs["x"]
    if int(np.prod(x_shape)) != 64 or x_shape not in ((64,), (8, 8), (1, 8, 8)):
        raise DataError(
            f"digits images fit x of shape [64], [8, 8] or [1, 8, 8], the spec has {list(x_shape)}"
        )
    digits = load_digits()
    pixels = digits.data.astype(np.float64)
    labels = digits.target
    if "y" in inputs:
        from sklearn.model_selection import train_test_split

        y_shape = inputs["y"]
        if y_shape == (10,):
            y = np.eye(10)[labels]
        elif y_shape == ():
            y = labels.astype(np.float64)
        else:
            raise DataError(
                f"digits labels fit y of shape [10] (one-hot) or [] (the class), the spec has {list(y_shape)}"
            )
        x = (pixels > 7).astype(np.float64) if binarize else pixels / 16.0
        idx_train, idx_test = train_test_split(
            np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
        )
        train = {"x": x[idx_train].reshape(-1, *x_shape), "y": y[idx_train]}
        test = {"x": x[idx_test].reshape(-1, *x_shape), "y": y[idx_test]}
        return train, test
    if binarize is None:
        binarize = is_likelihood_model(model)
    x = (pixels > 7).astype(np.float64) if binarize else pixels / 16.0
    x = x.reshape(-1, *x_shape)
    return {"x": x[:N_TRAIN_DENSITY]}, {"x": x[N_TRAIN_DENSITY:]}


def _npz(path: str, model: ModuleType) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path!r}: {exc}") from None
    inputs = _data_inputs(model)
    sampled = {name for name, _, sample in model.INPUTS if sample is not None}
    train = {n: arrays[n] for n in list(inputs) + sorted(sampled) if n in arrays}
    test = {n: arrays[f"{n}_test"] for n in list(inputs) + sorted(sampled) if f"{n}_test" in arrays}
    return train, (test or None)


def load_dataset(
    source: str | os.PathLike, model: ModuleType, *, binarize: bool | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """`("digits" | "file.npz", generated module) -> (train, test)`, dicts of arrays named like the inputs."""
    source = os.fspath(source)
    if source == "digits":
        return _digits(model, binarize)
    if source.endswith(".npz") or os.path.exists(source):
        if not os.path.exists(source):
            raise DataError(f"no such data file: {source!r}")
        train, test = _npz(source, model)
        if binarize:
            train = {k: (v > 0.5).astype(np.float64) if k == "x" else v for k, v in train.items()}
            if test:
                test = {k: (v > 0.5).astype(np.float64) if k == "x" else v for k, v in test.items()}
        return train, test
    raise UsageError(f"unknown data set {source!r}: use 'digits' or a .npz file")


def describe(train: dict[str, Any], test: dict[str, Any] | None) -> str:
    """One line for the CLI: sizes of the split."""
    n_train = len(next(iter(train.values()))) if train else 0
    n_test = len(next(iter(test.values()))) if test else 0
    return f"{n_train} training samples, {n_test} test samples"
