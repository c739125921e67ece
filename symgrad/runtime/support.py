"""Helpers behind a generated module's public functions: parameter init, flat layout, batch checks.

Kept out of the generated file so every module shares one tested implementation and the generated text stays
about the model.
"""

from __future__ import annotations

import math

import numpy as np

from symgrad.errors import DataError
from symgrad.lang import sampling


def init_params(inits, params, seed: int = 0, dtype=np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = dict(params)
    out = {}
    for name, (kind, args) in inits:
        shape = shapes[name]
        fan_out = shape[0] if shape else 1
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else (shape[0] if shape else 1)
        if kind == "constant":
            value = np.full(shape, args[0])
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
        value = np.asarray(params[name])
        if value.shape != tuple(shape):
            raise DataError(f"param {name!r} has shape {value.shape}, expected {tuple(shape)}")
        size = int(np.prod(shape)) if shape else 1
        theta[off:off + size] = value.reshape(-1)
    return theta


def unflatten(params_layout, offsets, theta: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for (name, shape), off in zip(params_layout, offsets, strict=True):
        size = int(np.prod(shape)) if shape else 1
        out[name] = theta[off:off + size].reshape(shape)
    return out


def consts_vector(constants_layout, constants: dict | None) -> np.ndarray:
    values = {n: v for n, v in constants_layout}
    for k, v in (constants or {}).items():
        if k not in values:
            raise ValueError(f"unknown constant {k!r} (the spec declares {sorted(values) or 'none'})")
        values[k] = float(v)
    return np.array([values[n] for n, _ in constants_layout] or [0.0], dtype=np.float64)


PLACEHOLDER = 0.5  # fills an input no requested output reads (finite, and no common singularity sits at 0.5)


def batch_arrays(module, batch: dict | None, dtype, rng: np.random.Generator | None = None,
                 required: set[str] | None = None) -> tuple:
    """Check a batch against the spec's inputs and return the kernel's positional arrays in theta's dtype.
    An input outside `required` (None: all) may be missing; it is filled with a placeholder the results never
    read, so `forward` needs no labels."""
    if not module.INPUTS:
        if batch:
            raise DataError(f"spec {module.SPEC['name']!r} has no inputs, but a batch was given")
        return ()
    batch = batch or {}
    sizes = {}
    arrays = []
    for name, shape, sample in module.INPUTS:
        if name not in batch:
            if sample is not None or (required is not None and name not in required):
                continue
            raise DataError(f"batch is missing input {name!r} (expected shape (B, {', '.join(map(str, shape))}))"
                            if shape else f"batch is missing input {name!r} (expected shape (B,))")
        value = np.asarray(batch[name])
        if value.dtype.kind not in "fiub":
            raise DataError(f"input {name!r} must be numeric, got dtype {value.dtype}")
        if value.shape[1:] != tuple(shape) or value.ndim != len(shape) + 1:
            expected = "(B" + "".join(f", {n}" for n in shape) + ")"
            raise DataError(f"input {name!r} has shape {value.shape}, expected {expected}")
        sizes[name] = value.shape[0]
    if len(set(sizes.values())) > 1:
        raise DataError(f"inputs disagree on the batch size: {sizes}")
    n = next(iter(sizes.values())) if sizes else 1
    rng = rng or np.random.default_rng(0)
    for name, shape, sample in module.INPUTS:
        if name in batch:
            arrays.append(np.ascontiguousarray(batch[name], dtype=dtype))
        elif sample is None:
            arrays.append(np.full((n, *shape), PLACEHOLDER, dtype=dtype))
        else:
            arrays.append(sampling.draw(rng, sample, (n, *shape), dtype))
    return tuple(arrays)


def _theta_dtype(module, params: dict):
    dt = np.result_type(*[np.asarray(params[n]).dtype for n, _ in module.PARAMS if n in params])
    return np.float32 if dt == np.float32 else np.float64


def _batch_size(module, arrays: tuple) -> int:
    return arrays[0].shape[0] if arrays else 1


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
    values = module._forward_pass(theta, module.consts_vector(constants), *arrays)
    by_name = dict(zip(module.STATEMENTS, values, strict=True))
    n = _batch_size(module, arrays)
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
    total = module._loss(theta, module.consts_vector(constants), *arrays)
    return float(_reduce(module, float(total), _batch_size(module, arrays)))


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
