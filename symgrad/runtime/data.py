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
are named `<input>_test`. Without test arrays `test` is None. The zip directory and the `.npy` headers are checked
(names, shapes, dtypes, declared sizes against the available memory) before any array is read
(`symgrad.runtime.npzfile`); arrays nothing uses, and misnamed held-out arrays such as `X_test`, get a `DataWarning`.

`.csv` files: the first row names the columns; every row is one sample (numbers only, comma-separated). An input
`y` of shape [] reads column `y`; an input `x` of shape [D] reads columns `x.0, x.1, ..., x.{D-1}` (a
multi-axis input its flattened C-order columns). Two conveniences: an input of shape [K] (K >= 2) given as one
column of integer labels 0..K-1 is one-hot encoded, and when exactly one input is left without columns it takes
every remaining column in file order (so `f1,f2,f3,y` trains `x` of shape [3] and `y`). A CSV has no held-out
part (`test` is None).
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from symgrad.errors import DataError, UsageError
from symgrad.runtime import npzfile
from symgrad.runtime.support import check_arrays

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
        raise DataError(f"the digits data set provides inputs 'x' (and 'y'); the spec needs {', '.join(inputs)}")
    x_shape = inputs["x"]
    if int(np.prod(x_shape)) != 64 or x_shape not in ((64,), (8, 8), (1, 8, 8)):
        raise DataError(f"digits images fit x of shape [64], [8, 8] or [1, 8, 8], the spec has {list(x_shape)}")
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
        idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
        train = {"x": x[idx_train].reshape(-1, *x_shape), "y": y[idx_train]}
        test = {"x": x[idx_test].reshape(-1, *x_shape), "y": y[idx_test]}
        return train, test
    if binarize is None:
        binarize = is_likelihood_model(model)
    x = (pixels > 7).astype(np.float64) if binarize else pixels / 16.0
    x = x.reshape(-1, *x_shape)
    return {"x": x[:N_TRAIN_DENSITY]}, {"x": x[N_TRAIN_DENSITY:]}


def _expected(shape: tuple[int, ...]) -> str:
    dims = ["N", *(str(d) for d in shape)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _keys(keys) -> str:
    return ", ".join(repr(k) for k in keys) or "nothing"


def _warn(message: str) -> None:
    # stacklevel: _warn <- _warn_unused <- _npz/_csv <- _load <- load_dataset <- the caller
    warnings.warn(message, DataWarning, stacklevel=6)


class DataWarning(UserWarning):
    """Data that loads but probably is not what the user meant (an array nothing uses, a misnamed test set)."""


def _warn_unused(path: str, unused: list[str], inputs: list[str], what: str) -> None:
    """Name what nothing reads; a `X_test` / `X_val` beside input `x` gets its own hint."""
    lower = {n.lower(): n for n in inputs}
    plain = []
    for key in unused:
        stem, sep, tail = key.rpartition("_")
        if sep and tail.lower() in ("test", "val", "valid", "validation") and stem:
            if stem in inputs:
                hint = f"test arrays are named '{stem}_test'"
            elif stem.lower() in lower:
                hint = f"did you mean '{lower[stem.lower()]}_test'? names are case-sensitive"
            else:
                hint = f"the spec has no input {stem!r} (inputs: {', '.join(inputs)})"
            _warn(f"{path}: {what} {key!r} looks like held-out data but is not used: {hint}")
        else:
            plain.append(key)
    if plain:
        _warn(
            f"{path}: {what}s nothing uses: {_keys(plain)} (the spec's inputs: {', '.join(inputs) or 'none'}; "
            "held-out arrays are named <input>_test)"
        )


def _npz(path: str, model: ModuleType) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Read only the arrays the spec uses, after checking names, shapes and dtypes from the headers alone."""
    members = npzfile.inspect(path, DataError)
    inputs = dict(_data_inputs(model))
    sampled = {name: tuple(shape) for name, shape, sample in model.INPUTS if sample is not None}
    missing = [n for n in inputs if n not in members]
    if missing:
        n = missing[0]
        raise DataError(
            f"{path}: no array {n!r} for input {n!r} (expected shape {_expected(inputs[n])}); "
            f"the file holds {_keys(members)}"
        )
    wanted: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, shape in [*inputs.items(), *sorted(sampled.items())]:
        for key in (name, f"{name}_test"):
            if key in members:
                wanted[key] = (name, shape)
    for key, (_name, shape) in wanted.items():
        m = members[key]
        if m.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {key!r} holds {m.dtype}, expected numbers of shape {_expected(shape)}")
        if len(m.shape) != len(shape) + 1 or m.shape[1:] != shape:
            raise DataError(f"{path}: array {key!r} has shape {m.shape}, expected {_expected(shape)}")
    _warn_unused(path, [k for k in members if k not in wanted], [*inputs, *sampled], "array")
    arrays = npzfile.read(path, [members[k] for k in wanted], DataError)
    train = {k: v for k, v in arrays.items() if wanted[k][0] == k}
    test = {wanted[k][0]: v for k, v in arrays.items() if wanted[k][0] != k}
    return train, (test or None)


def _csv(path: str, model: ModuleType) -> tuple[dict[str, np.ndarray], None]:
    """A CSV with a header row (the convention is in the module docstring); no held-out part."""
    npzfile.check_file(path, DataError)
    size = os.path.getsize(path)
    limit = npzfile.available_bytes()
    if size * 4 > limit:  # parsing holds the text and the float64 table at once
        raise DataError(f"{path}: {npzfile.human_bytes(size)} of CSV is more than the memory available can parse")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV header ({exc})") from None
    names = [h.strip() for h in header or []]
    if not names or not all(names):
        raise DataError(f"{path}: the first row must name every column (e.g. x.0,x.1,y)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: column {dup!r} appears twice in the header")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported below
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64, encoding="utf-8-sig")
    except ValueError as exc:
        raise DataError(f"{path}: {' '.join(str(exc).split())}") from None
    if table.shape[0] == 0:
        raise DataError(f"{path}: the CSV has a header but no rows")
    if table.shape[1] != len(names):
        raise DataError(f"{path}: {table.shape[1]} values per row but {len(names)} column names")
    col = {n: i for i, n in enumerate(names)}
    inputs = _data_inputs(model)
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}
    pending = []
    for name, shape in inputs.items():
        size_in = int(np.prod(shape)) if shape else 1
        flat = [f"{name}.{i}" for i in range(size_in)]
        if not shape and name in col:
            out[name], used = table[:, col[name]], used | {name}
        elif shape and all(c in col for c in flat):
            out[name] = table[:, [col[c] for c in flat]].reshape(-1, *shape)
            used |= set(flat)
        elif len(shape) == 1 and shape[0] >= 2 and name in col:  # integer labels -> one-hot
            labels = table[:, col[name]]
            if not (np.all(labels == np.round(labels)) and labels.min() >= 0 and labels.max() < shape[0]):
                raise DataError(
                    f"{path}: column {name!r} must hold class labels 0..{shape[0] - 1} for input {name!r} of "
                    f"shape [{shape[0]}] (one-hot), or use columns {name}.0..{name}.{shape[0] - 1}"
                )
            out[name], used = np.eye(shape[0])[labels.astype(np.int64)], used | {name}
        else:
            pending.append((name, shape, size_in))
    rest = [n for n in names if n not in used]
    # e.g. a `y` column and every other column as `x`
    if len(pending) == 1 and pending[0][1] and len(rest) == pending[0][2]:
        name, shape, _ = pending[0]
        out[name] = table[:, [col[c] for c in rest]].reshape(-1, *shape)
        used |= set(rest)
        pending = []
    if pending:
        name, shape, size_in = pending[0]
        how = f"a column {name!r}" if not shape else f"columns {name}.0..{name}.{size_in - 1}"
        raise DataError(
            f"{path}: no column(s) for input {name!r} (expected shape {_expected(shape)}: {how}); "
            f"the header has {_keys(names)}"
        )
    _warn_unused(path, [n for n in names if n not in used], list(inputs), "column")
    return out, None


def load_dataset(
    source: str | os.PathLike,
    model: ModuleType,
    *,
    binarize: bool | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """`("digits" | "file.npz" | "file.csv", generated module) -> (train, test)`, dicts of arrays named like the
    inputs. Every problem with the file is one `DataError` naming it, the array and the expected shape.

    Doubtful data (arrays nothing uses, a misnamed test array) is a `DataWarning`, or, with `on_warning`, a call
    `on_warning(message)` instead (the CLI prints `warning: ...` lines that way)."""
    if on_warning is None:
        return _load(source, model, binarize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        out = _load(source, model, binarize)
    for w in caught:
        if issubclass(w.category, DataWarning):
            on_warning(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _load(source: str | os.PathLike, model: ModuleType, binarize: bool | None):
    source = os.fspath(source)
    if source == "digits":
        return _digits(model, binarize)
    if source.lower().endswith(".csv"):
        train, test = _csv(source, model)
    elif source.lower().endswith((".npz", ".npy")) or os.path.exists(source):
        train, test = _npz(source, model)
    else:
        raise UsageError(f"unknown data set {source!r}: use 'digits', a .npz or a .csv file")
    # checked here, where the file is known, so that a NaN or a length mismatch names it (train() checks again,
    # in the training dtype, naming only the array)
    check_arrays(model, train, np.dtype(np.float64), what=source)
    if test:
        every = {name for name, _, _ in model.INPUTS}  # a missing one is train()'s to report, after the warnings
        check_arrays(model, test, np.dtype(np.float64), what=f"{source} test set", optional=every)
    if binarize:
        train = {k: (v > 0.5).astype(np.float64) if k == "x" else v for k, v in train.items()}
        if test:
            test = {k: (v > 0.5).astype(np.float64) if k == "x" else v for k, v in test.items()}
    return train, test


def describe(train: dict[str, Any], test: dict[str, Any] | None) -> str:
    """One line for the CLI: sizes of the split."""

    def count(arrays: dict[str, Any] | None) -> int:
        first = next(iter(arrays.values()), None) if arrays else None
        return int(np.shape(first)[0]) if first is not None and np.ndim(first) else 0

    n_train, n_test = count(train), count(test)
    return f"{n_train} training samples, {n_test} test samples"
