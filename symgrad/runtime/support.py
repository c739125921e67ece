"""Helpers behind a generated module's public functions: parameter init, flat layout, batch checks.

Kept out of the generated file so every module shares one tested implementation and the generated text stays
about the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from symgrad.errors import DataError, UsageError
from symgrad.lang import sampling


def check_seed(value: Any) -> int:
    """A seed for NumPy's generator: a non-negative integer (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UsageError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def init_params(inits, params, seed: int = 0, dtype=np.float64) -> dict[str, np.ndarray]:
    seed = check_seed(seed)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise UsageError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise UsageError(f"dtype must be float32 or float64, got {dt}")
    rng = np.random.default_rng(seed)
    shapes = dict(params)
    out = {}
    for name, (kind, args) in inits:
        shape = shapes[name]
        fan_out = shape[0] if shape else 1
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else (shape[0] if shape else 1)
        if kind == "constant":
            value: np.ndarray | float = np.full(shape, args[0])
        elif kind == "zeros":
            value = np.zeros(shape)
        elif kind == "ones":
            value = np.ones(shape)
        elif kind == "normal":
            value = rng.normal(args[0], args[1], size=shape)
        elif kind == "uniform":
            value = rng.uniform(args[0], args[1], size=shape)
        elif kind == "glorot_uniform":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-limit, limit, size=shape)
        elif kind == "he_normal":
            value = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
        else:  # the parser rejects unknown inits; reaching here is a bug
            raise ValueError(f"unknown init {kind!r}")
        out[name] = np.asarray(value, dtype=dtype)
    return out


def flatten(params_layout, offsets, n_theta: int, params: dict, dtype=None) -> np.ndarray:
    if dtype is None:
        first = params[params_layout[0][0]] if params_layout[0][0] in params else None
        dtype = np.asarray(first).dtype if first is not None else np.float64
        if dtype not in (np.float32, np.float64):
            dtype = np.float64
    theta = np.empty(n_theta, dtype=dtype)
    for (name, shape), off in zip(params_layout, offsets, strict=True):
        if name not in params:
            raise DataError(f"params is missing {name!r} (expected shape {tuple(shape)})")
        value = unmasked(params[name], f"param {name!r}")
        if value.dtype.kind not in "iuf":
            raise DataError(f"param {name!r} holds {value.dtype} values, expected numbers of shape {tuple(shape)}")
        if value.shape != tuple(shape):
            raise DataError(f"param {name!r} has shape {value.shape}, expected {tuple(shape)}")
        size = int(np.prod(shape)) if shape else 1
        theta[off : off + size] = value.reshape(-1)
    return theta


def unflatten(params_layout, offsets, theta: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for (name, shape), off in zip(params_layout, offsets, strict=True):
        size = int(np.prod(shape)) if shape else 1
        out[name] = theta[off : off + size].reshape(shape)
    return out


def consts_vector(constants_layout, constants: Mapping | None) -> np.ndarray:
    """The constants' values in the kernels' order. A value must be a finite real number: a NaN `beta` would
    otherwise surface as "training diverged" and blame the model."""
    values = {n: v for n, v in constants_layout}
    if constants is not None and not isinstance(constants, Mapping):
        raise UsageError(f"constants must be a dict {{name: number}}, got {type(constants).__name__}")
    for k, v in (constants or {}).items():
        if k not in values:
            raise UsageError(f"unknown constant {k!r} (the spec declares {sorted(values) or 'none'})")
        values[k] = number(v, f"constant {k!r}")
    return np.array([values[n] for n, _ in constants_layout] or [0.0], dtype=np.float64)


def number(value: Any, what: str) -> float:
    """`value` as a finite float, or a UsageError naming `what` (a bool, a string or an array is not a number)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        if not (isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"):
            raise UsageError(f"{what} must be a finite number, got {type(value).__name__} {value!r}"[:200])
    out = float(value)
    if not math.isfinite(out):
        raise UsageError(f"{what} must be a finite number, got {out}")
    return out


def unmasked(value: Any, what: str) -> np.ndarray:
    """`value` as a plain array. A masked array with entries masked is refused: the kernels read every entry, so
    its masked values (whatever lies under the mask) would be trained on without a word."""
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.getmaskarray(value).any():
            raise DataError(
                f"{what} is a masked array with {int(np.ma.count_masked(value))} masked entries; symgrad reads every "
                "entry, so fill them (value.filled(...)) or drop the samples that hold them"
            )
        return np.asarray(value.data)
    return np.asarray(value)


def _shape_str(shape: tuple, lead: tuple[str, ...] = ("N",)) -> str:
    dims = [*lead, *(str(d) for d in shape)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def check_arrays(
    model: ModuleType,
    data: Mapping[str, Any] | None,
    dtype: np.dtype,
    *,
    what: str = "data",
    lead: tuple[str, ...] = ("N",),
    optional: frozenset[str] | set[str] = frozenset(),
    strict: bool = True,
) -> tuple[dict[str, np.ndarray], tuple[int, ...] | None]:
    """Validate arrays against the spec's inputs and cast them to `dtype` once: the one input check of the
    trainer, the runner and a generated module's public functions.

    Returns the cast arrays and their common leading shape (None when no array was given). Every failure is a
    `DataError` naming the array and the expected shape. Sampled inputs and those in `optional` may be missing.
    `strict` (training data) also refuses unknown names, NaN/inf and empty arrays; a module's `forward`/`loss`
    take any batch a NumPy function would.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise DataError(f"{what} must be a dict of arrays (one per input), got {type(data).__name__}")
    inputs = {name: (tuple(shape), sample) for name, shape, sample in model.INPUTS}
    for name in data if strict else ():
        if name not in inputs:
            known = ", ".join(inputs) or "none"
            raise DataError(f"{what}: unknown array {name!r}; the spec's inputs are: {known}")
    out: dict[str, np.ndarray] = {}
    first: str | None = None
    leading: tuple[int, ...] | None = None
    for name, (shape, sample) in inputs.items():
        expected = _shape_str(shape, lead)
        if name not in data:
            if sample is None and name not in optional:
                raise DataError(f"{what}: missing input {name!r}, expected an array of shape {expected}")
            continue
        arr = unmasked(data[name], f"{what}[{name!r}]")
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{what}[{name!r}] has non-numeric dtype {arr.dtype}; expected numbers of shape {expected}")
        if arr.ndim != len(lead) + len(shape) or arr.shape[len(lead) :] != shape:
            raise DataError(f"{what}[{name!r}] has shape {arr.shape}, expected {expected}")
        if leading is None:
            first, leading = name, arr.shape[: len(lead)]
        elif arr.shape[: len(lead)] != leading:
            raise DataError(
                f"{what}[{name!r}] has leading shape {arr.shape[: len(lead)]} but {what}[{first!r}] has "
                f"{leading}; every input needs the same number of samples, shape {expected}"
            )
        cast = np.ascontiguousarray(arr, dtype=dtype)
        if strict and not np.all(np.isfinite(cast)):
            raise DataError(
                f"{what}[{name!r}] contains NaN or infinite values (after casting to {np.dtype(dtype).name})"
            )
        out[name] = cast
    if strict and leading is not None and min(leading, default=1) == 0:
        raise DataError(f"{what}: the arrays are empty, expected shape {_shape_str(inputs[first][0], lead)}")
    return out, leading


PLACEHOLDER = 0.5  # fills an input no requested output reads (finite, and no common singularity sits at 0.5)


def batch_arrays(
    module, batch: dict | None, dtype, rng: np.random.Generator | None = None, required: set[str] | None = None
) -> tuple:
    """Check a batch against the spec's inputs (`check_arrays`) and return the kernel's positional arrays in
    theta's dtype. An input outside `required` (None: all) may be missing; it is filled with a placeholder the
    results never read, so `forward` needs no labels."""
    if not module.INPUTS:
        if batch:
            raise DataError(f"spec {module.SPEC['name']!r} has no inputs, but a batch was given")
        return ()
    optional = set() if required is None else {name for name, _, _ in module.INPUTS if name not in required}
    checked, leading = check_arrays(module, batch, dtype, what="batch", lead=("B",), optional=optional, strict=False)
    n = leading[0] if leading is not None else 1
    rng = rng or np.random.default_rng(0)
    arrays = []
    for name, shape, sample in module.INPUTS:
        if name in checked:
            arrays.append(checked[name])
        elif sample is None:
            arrays.append(np.full((n, *shape), PLACEHOLDER, dtype=dtype))
        else:
            arrays.append(sampling.draw(rng, sample, (n, *shape), dtype))
    return tuple(arrays)


def _theta_dtype(module, params: Mapping):
    if not isinstance(params, Mapping):
        raise DataError(f"params must be a dict of arrays (one per parameter), got {type(params).__name__}")
    for name, shape in module.PARAMS:
        if name not in params:
            raise DataError(f"params is missing {name!r} (expected shape {tuple(shape)})")
    return params_dtype([params[n] for n, _ in module.PARAMS])


def params_dtype(values) -> np.dtype:
    """The one rule for the run's float type: float32 only when every parameter is float32, float64 otherwise (a
    mix is promoted, as NumPy would), for the trainer and a module's loss/loss_and_grad alike."""
    dtypes = [np.asarray(v).dtype for v in values]
    return np.dtype(np.float32 if dtypes and all(d == np.float32 for d in dtypes) else np.float64)


def _batch_size(module, arrays: tuple) -> int:
    """The batch's size; an empty batch has no mean loss (and no meaningful sum), so it is refused here."""
    n = arrays[0].shape[0] if arrays else 1
    if n == 0:
        name, shape, _ = module.INPUTS[0]
        raise DataError(f"batch: the arrays are empty, expected {name!r} of shape {_shape_str(tuple(shape), ('B',))}")
    return n


def _reduce(module, total: float, n: int) -> float:
    return total / n if module.REDUCTION == "mean" else total


def output_inputs(module) -> set[str] | None:
    """The inputs the module's outputs depend on (None for a module built before symgrad recorded it: all)."""
    deps = getattr(module, "STATEMENT_INPUTS", None)
    if deps is None:
        return None
    return {n for o in module.OUTPUTS for n in deps.get(o, ())}


def forward(module, params: dict, batch: dict | None, constants: dict | None) -> dict[str, np.ndarray]:
    dtype = _theta_dtype(module, params)
    theta = module.flatten(params, dtype)
    arrays = batch_arrays(module, batch, dtype, required=output_inputs(module))
    n = _batch_size(module, arrays)
    values = module._forward_pass(theta, module.consts_vector(constants), *arrays)
    by_name = dict(zip(module.STATEMENTS, values, strict=True))
    out = {}
    for name in module.OUTPUTS:
        shape, batched = module.STATEMENT_SHAPES[name]
        v = by_name[name]
        if not module.INPUTS:
            out[name] = v.reshape(shape).copy()
        elif batched:
            out[name] = v.reshape((n, *shape)).copy()
        else:
            out[name] = np.broadcast_to(v.reshape(shape), (n, *shape)).copy()
    return out


def loss(module, params: dict, batch: dict | None, constants: dict | None) -> float:
    dtype = _theta_dtype(module, params)
    theta = module.flatten(params, dtype)
    arrays = batch_arrays(module, batch, dtype)
    n = _batch_size(module, arrays)
    total = module._loss(theta, module.consts_vector(constants), *arrays)
    return float(_reduce(module, float(total), n))


def loss_and_grad(module, params: dict, batch: dict | None, constants: dict | None):
    dtype = _theta_dtype(module, params)
    theta = module.flatten(params, dtype)
    arrays = batch_arrays(module, batch, dtype)
    n = _batch_size(module, arrays)
    grad = np.empty_like(theta)
    gscale = 1.0 / n if module.REDUCTION == "mean" and module.INPUTS else 1.0
    total = module._loss_grad(theta, grad, module.consts_vector(constants), gscale, *arrays)
    value = _reduce(module, float(total), n) if module.INPUTS else float(total)
    grads = {k: v.copy() for k, v in module.unflatten(grad).items()}
    return value, grads
