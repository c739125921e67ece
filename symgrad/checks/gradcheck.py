"""`symgrad check`: generated gradients against float64 central differences of the generated loss, and the generated
loss (statement by statement) against the independent reference evaluator (`symgrad.checks.reference`).

Differencing the generated loss alone cannot catch a wrong *loss*; the reference can, and since it evaluates each
statement as written, a mismatch names the first statement whose value differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LOSS_RTOL = 1e-9


def random_batch(module, rng: np.random.Generator, n: int = 3) -> dict | None:
    """Inputs in (0.1, 1): positive, so specs that take logs of data stay in their domain."""
    if not module.INPUTS:
        return None
    return {name: rng.uniform(0.1, 1.0, size=(n, *shape)) for name, shape, _ in module.INPUTS}


def check_point(module, seed: int = 0) -> tuple[dict, dict | None, np.random.Generator]:
    """The random float64 parameters and batch a check runs at (and the generator, for directions)."""
    rng = np.random.default_rng(seed)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in module.init_params(seed).items()}
    return params, random_batch(module, rng), rng


def gradient_check(spec_path: str, seed: int = 0, eps: float = 1e-4, directions: int = 3) -> list[tuple[str, float]]:
    """Worst relative error per parameter, over random directions (and every element of small params).

    The differences are fourth order, (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h with h = 1e-4, and the error
    is counted beyond their rounding, 16 ulp(L) / h: second-order differences at h = 1e-6 carried ~ulp(L)/h ~ 1e-9 of
    rounding, which failed a correct gradient of 4e-3 next to a loss of 4 (a stacked recurrence; fuzz campaign)."""
    from symgrad.runtime.loader import load

    module = load(spec_path)
    params, batch, rng = check_point(module, seed)
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
            at = {k: module.loss(dict(params, **{name: value + k * eps * d}), batch) for k in (-2, -1, 1, 2)}
            fd = (8 * (at[1] - at[-1]) - (at[2] - at[-2])) / (12 * eps)
            an = float(np.sum(grads[name] * d))
            scale = max(abs(fd), abs(an), 1e-6)
            rounding = 16 * np.finfo(np.float64).eps * max(abs(v) for v in at.values()) / eps
            err = max(abs(fd - an) - rounding, 0.0) / scale
            worst = max(worst, err if np.isfinite(err) else float("inf"))  # max(0, nan) would be 0
        rows.append((name, worst))
    return rows


@dataclass
class LossCheck:
    """The generated loss against the reference at one point; `first_bad` = (statement, spec line, rel. error)."""

    generated: float
    reference: float
    rel_error: float
    first_bad: tuple[str, int, float] | None = None
    nonfinite: list[str] = field(default_factory=list)  # "loss", "gradient of w", ...

    def ok(self, rtol: float = LOSS_RTOL) -> bool:
        return self.rel_error <= rtol and not self.nonfinite


def rel_error(generated, reference) -> float:
    """Largest elementwise difference over the larger magnitude of the two arrays; equal non-finite values agree,
    any other non-finite difference is infinite."""
    g = np.asarray(generated, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    g, r = np.broadcast_arrays(g, r)
    both = ~np.isfinite(g) | ~np.isfinite(r)
    if both.any():
        same = (np.isnan(g) & np.isnan(r)) | (g == r)
        if not same[both].all():
            return float("inf")
    g, r = g[~both], r[~both]
    if g.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(g))), float(np.max(np.abs(r))))
    return float(np.max(np.abs(g - r))) / scale if scale > 0 else 0.0


def generated_statements(module, params: dict, batch: dict | None, constants: dict | None = None) -> dict:
    """Every user-visible statement of the generated module's `_forward_pass`, shaped (B or 1, *shape). A name the
    compiler gave two statements (a clash) maps to the last one, which is the user's (it is stored after its own
    hidden statements)."""
    from symgrad.runtime import support as runtime

    dtype = np.float64
    theta = module.flatten(params, dtype)
    arrays = runtime.batch_arrays(module, batch, dtype)
    values = module._forward_pass(theta, module.consts_vector(constants), *arrays)
    n = arrays[0].shape[0] if arrays else 1
    out = {}
    for name, v in zip(module.STATEMENTS, values, strict=True):
        shape, batched = module.STATEMENT_SHAPES[name]
        v = np.asarray(v, dtype=np.float64)
        out[name] = v.reshape((n, *shape)) if batched and module.INPUTS else v.reshape((1, *shape))
    return out


def loss_check(
    spec_path: str,
    module=None,
    params: dict | None = None,
    batch: dict | None = None,
    seed: int = 0,
    rtol: float = LOSS_RTOL,
) -> LossCheck:
    """Generated loss and gradient finiteness, and loss vs the reference; on a mismatch, the first statement (in
    spec order) whose generated value differs from the reference's."""
    from symgrad.checks.reference import build_reference, reference_statements
    from symgrad.runtime.loader import load

    if module is None:
        module = load(spec_path)
    if params is None:
        params, batch, _ = check_point(module, seed)
    model = build_reference(spec_path)
    gen_loss, grads = module.loss_and_grad(params, batch)
    ref_values = reference_statements(model, params, batch)
    per_sample = ref_values[model.loss_name]
    ref_loss = (
        float(per_sample.reshape(-1)[0])
        if not model.inputs
        else float(per_sample.mean() if model.spec.reduction == "mean" else per_sample.sum())
    )
    result = LossCheck(float(gen_loss), ref_loss, rel_error(gen_loss, ref_loss))
    if not np.isfinite(gen_loss):
        result.nonfinite.append("loss")
    for name, g in grads.items():
        if not np.all(np.isfinite(g)):
            result.nonfinite.append(f"gradient of {name}")
    if result.rel_error > rtol:
        result.first_bad = ("", model.spec.loss.line, 0.0)  # no statement differs: the batch reduction does
        gen_values = generated_statements(module, params, batch)
        lines = {d.lhs.value.split("[")[0].strip(): d.line for d in model.spec.forward}
        lines[model.loss_name] = model.spec.loss.line
        for name in model.user_statements:
            if name not in gen_values:
                result.first_bad = (name, lines.get(name, 1), float("inf"))
                break
            err = rel_error(gen_values[name], ref_values[name])
            if err > rtol:
                result.first_bad = (name, lines.get(name, 1), err)
                break
    return result
