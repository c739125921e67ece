"""Table-driven gradient tests against independent references (STYLE.md item 8).

Every spec under tests/refspecs/ has a hand-written NumPy forward below: it is written from the spec's maths,
not generated from the spec, so a wrong derivation, a wrong index range or a wrong library loss in
symgrad shows up as a mismatch. For each spec:

(a) `module.loss` equals the NumPy loss (float64, rtol 1e-9);
(b) `loss_and_grad`'s gradient equals float64 central differences *of the NumPy forward*
    (inner product with a random direction for every param, and elementwise for small params);
(c) float32 params and batch give float32 results close to the float64 ones (rtol 1e-3);
(d) `forward` returns the declared outputs with a leading batch axis, equal to the NumPy intermediates.

Semantic readings assumed where SPEC.md/API.md leave room (the compiler must agree, or these tests change):
- `loss(...)` returns the objective *as written* in the spec, reduced over the batch (mean or sum); for
  `objective: maximize` it is NOT negated. `loss_and_grad` returns that value and d(value)/d(params), also not
  negated: the sign for gradient ascent is the runner's business (internals.md: SIGN / gscale).
- `*` and `**` between whole arrays are elementwise (NumPy-like), `@` is the matrix product.
- `sum(expr, i, j, ...)` takes any number of indices (ref_conv2d uses three and four).
- `mse(yhat, y)` of n-d arrays is the mean over all elements; `bce`/`bce_with_logits` of arrays are
  elementwise (arrays); `softmax_cross_entropy(z, y) = logsumexp(z) - sum_k y_k z_k`;
  `gaussian_kl` a scalar.
- A `Sum(..., (j, 0, i - 1))` whose upper bound is below its lower bound (i = 0) is empty, i.e. 0.
- A spec with no inputs takes `batch=None`; its loss is the single value (B = 1, so `mean` changes nothing);
  its `forward` outputs may come with or without a leading axis of length 1.
- A spec with no `forward:` section has no required outputs; `forward` must still return a dict.
- A sampled input (`sample: normal`) supplied in the batch is used as given, deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REFSPECS = Path(__file__).parent / "refspecs"
B = 3
FD_STEP = 1e-6
FD_RTOL = 1e-5
LOSS_RTOL = 1e-9
F32_RTOL = 1e-3
ELEMENTWISE_MAX = 64  # params with at most this many elements get a full elementwise FD check


# --------------------------------------------------------------------------- independent NumPy primitives


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def softplus(z):
    return np.logaddexp(0.0, z)


def log_sigmoid(z):
    return -np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))


def relu(z):
    return np.maximum(z, 0.0)


def logsumexp(z):
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z)
    return float(m + np.log(np.sum(np.exp(z - m))))


def softmax(z):
    e = np.exp(z - np.max(z))
    return e / np.sum(e)


# --------------------------------------------------------------------------- per-sample references
# Each takes (params, sample, constants) as float64 arrays and returns (per-sample loss, {output: array}).


def ref_mlp(p, s, c):
    h = relu(p["W1"] @ s["x"] + p["b1"])
    W2 = p["W2"]
    z = np.array([sum(W2[k, j] * h[j] for j in range(len(h))) for k in range(W2.shape[0])]) + p["b2"]
    return logsumexp(z) - np.dot(s["y"], z), {"z": z, "h": h}


def ref_conv1d(p, s, c):
    x, w, b = s["x"], p["w"], p["b"]
    n_out, n_k = w.shape
    m = len(x) - n_k + 1
    conv = np.array([[b[o] + sum(w[o, k] * x[i + k] for k in range(n_k)) for i in range(m)] for o in range(n_out)])
    a = np.tanh(conv)
    return np.mean((a - s["t"]) ** 2), {"a": a}


def ref_conv2d(p, s, c):
    img, kern, bias = s["img"], p["kern"], p["bias"]
    n_f, n_c, kh, kw = kern.shape
    ho, wo = img.shape[1] - kh + 1, img.shape[2] - kw + 1
    o = np.empty((n_f, ho, wo))
    for f in range(n_f):
        for i in range(ho):
            for j in range(wo):
                o[f, i, j] = bias[f] + np.sum(kern[f] * img[:, i : i + kh, j : j + kw])
    loss = np.sum(softplus(o) * s["t"]) + np.sum(np.sin(kern)) / 10
    return loss, {"o": o}


def ref_nade(p, s, c):
    x, W, b, V, cc = s["x"], p["W"], p["b"], p["V"], p["c"]
    n_h, n_d = W.shape
    a = np.empty((n_h, n_d))
    for i in range(n_d):
        a[:, i] = b + W[:, :i] @ x[:i]  # Sum over j = 0..i-1; empty (0) for i = 0
    logit = cc + np.array([np.dot(V[i], sigmoid(a[:, i])) for i in range(n_d)])
    loglik = -np.sum(softplus(logit) - x * logit)
    return loglik, {"logit": logit}


def ref_bilinear(p, s, c):
    sv = s["u"] @ p["A"] @ s["v"] + p["c"]
    loss = c["beta"] * (sv - s["t"]) ** 2 + c["gamma"] * np.sum(p["A"] ** 2)
    return loss, {"s": np.asarray(sv)}


def ref_matmul(p, s, c):
    hm = np.tanh(s["X"] @ p["W"])
    u = hm @ p["v"] + p["d"]
    return np.mean((u - s["y"]) ** 2) + 0.1 * np.sum(log_sigmoid(hm)), {"Hm": hm, "u": u}


def ref_tied_ae(p, s, c):
    W = p["W"]
    h = sigmoid(W @ s["x"] + p["b"])
    r = p["c"] + W.T @ h
    return np.sum(softplus(r) - s["x"] * r), {"r": r}


def ref_swish(p, s, c):
    pre = p["W"] @ s["x"] + p["b"]
    h = pre * sigmoid(pre)
    g = np.maximum(h, 0.1 * h) + np.minimum(h, 0.5) + np.where(h < 0.2, h**2, 0.4 * h - 0.04)
    return np.sum(np.abs(g - s["y"])), {"g": g}


def ref_elementwise(p, s, c):
    a, b, x = p["a"], p["b"], s["x"]
    u = a * x + b
    v = np.exp(-(u**2)) + np.log(x + a**2) + np.sqrt(x + b**2) + np.sin(u) * np.cos(a)
    w = relu(u) + softplus(u) + log_sigmoid(v) + np.tanh(v) * sigmoid(u)
    return np.sum(w**2) / len(x), {"v": v, "w": w}


def ref_poisson(p, s, c):
    eta = np.dot(p["w"], s["x"]) + p["b"]
    rate = np.exp(eta)
    return s["y"] * eta - rate, {"rate": np.asarray(rate)}


def ref_gauss(p, s, c):
    mu = np.dot(p["w"], s["x"]) + p["b"]
    logsig = np.dot(p["v"], s["x"]) + p["c"]
    loglik = -0.5 * np.log(2 * np.pi) - logsig - 0.5 * ((s["y"] - mu) / np.exp(logsig)) ** 2
    return loglik, {"mu": np.asarray(mu), "logsig": np.asarray(logsig)}


def ref_vae(p, s, c):
    x = s["x"]
    mu = p["We"] @ x + p["be"]
    logvar = p["Wv"] @ x + p["bv"]
    z = mu + np.exp(0.5 * logvar) * s["eps"]
    pr = sigmoid(p["Wd"] @ z + p["bd"])
    bce = -(x * np.log(pr) + (1 - x) * np.log(1 - pr))
    kl = -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar))
    return np.sum(bce) + c["beta"] * kl, {"p": pr, "z": z}


def ref_noinputs(p, s, c):
    w, q = p["w"], p["q"]
    sm = softmax(w)
    return np.sum(w**2) / len(w) + logsumexp(w) + np.sum(sm * q), {"sm": sm}


def ref_linreg(p, s, c):
    yhat = p["w"] * s["x"] + p["b"]
    return (yhat - s["y"]) ** 2, {"yhat": np.asarray(yhat)}


def ref_stab_sce(p, s, c):
    return logsumexp(p["z"]) - np.dot(s["y"], p["z"]), {}


def ref_stab_lse(p, s, c):
    return logsumexp(p["z"]), {}


def ref_stab_bcel(p, s, c):
    return np.sum(softplus(p["z"]) - s["y"] * p["z"]), {}


def ref_stab_logsig(p, s, c):
    return np.sum(log_sigmoid(p["z"])), {}


def ref_stab_softplus(p, s, c):
    return np.sum(softplus(p["z"])), {}


# --------------------------------------------------------------------------- batches (domains per spec)


def _dirichlet(rng, n, k):
    return rng.dirichlet(np.ones(k), size=n)


BATCHES: dict[str, Callable[[np.random.Generator, int], dict | None]] = {
    "ref_mlp": lambda r, n: {"x": r.normal(size=(n, 4)), "y": _dirichlet(r, n, 3)},
    "ref_conv1d": lambda r, n: {"x": r.normal(size=(n, 7)), "t": r.uniform(-0.8, 0.8, (n, 2, 5))},
    "ref_conv2d": lambda r, n: {"img": r.normal(size=(n, 2, 5, 4)), "t": r.uniform(0.0, 1.0, (n, 2, 3, 3))},
    "ref_nade": lambda r, n: {"x": r.integers(0, 2, (n, 5)).astype(np.float64)},
    "ref_bilinear": lambda r, n: {"u": r.normal(size=(n, 3)), "v": r.normal(size=(n, 4)), "t": r.normal(size=n)},
    "ref_matmul": lambda r, n: {"X": r.normal(size=(n, 3, 4)), "y": r.normal(size=(n, 3))},
    "ref_tied_ae": lambda r, n: {"x": r.uniform(0.05, 0.95, (n, 4))},
    "ref_swish": lambda r, n: {"x": r.normal(size=(n, 3)), "y": r.normal(size=(n, 4))},
    "ref_elementwise": lambda r, n: {"x": r.uniform(0.5, 2.0, (n, 4))},  # positive: log, sqrt
    "ref_poisson": lambda r, n: {"x": 0.5 * r.normal(size=(n, 3)), "y": r.poisson(2.0, n).astype(np.float64)},
    "ref_gauss": lambda r, n: {"x": r.normal(size=(n, 3)), "y": r.normal(size=n)},
    "ref_vae": lambda r, n: {"x": r.uniform(0.05, 0.95, (n, 4)), "eps": r.normal(size=(n, 2))},
    "ref_noinputs": lambda r, n: None,
    "ref_linreg": lambda r, n: {"x": r.normal(size=n), "y": r.normal(size=n)},
    "ref_stab_sce": lambda r, n: {"y": _dirichlet(r, n, 3)},
    "ref_stab_lse": lambda r, n: None,
    "ref_stab_bcel": lambda r, n: {"y": r.uniform(0.0, 1.0, (n, 3))},
    "ref_stab_logsig": lambda r, n: None,
    "ref_stab_softplus": lambda r, n: None,
}


@dataclass(frozen=True)
class Case:
    name: str
    ref: Callable
    outputs: tuple[str, ...]
    reduction: str = "mean"
    constants: dict = field(default_factory=dict)  # the spec's defaults
    alt_constants: dict | None = None  # run-time override, tested separately
    noise: float = 0.5  # scale of the random perturbation added to init_params (moves off relu/max kinks)

    @property
    def path(self) -> Path:
        return REFSPECS / f"{self.name}.yaml"


CASES = [
    Case("ref_mlp", ref_mlp, ("z", "h")),
    Case("ref_conv1d", ref_conv1d, ("a",)),
    Case("ref_conv2d", ref_conv2d, ("o",)),
    Case("ref_nade", ref_nade, ("logit",)),
    Case(
        "ref_bilinear",
        ref_bilinear,
        ("s",),
        constants={"beta": 1.0, "gamma": 0.01},
        alt_constants={"beta": 2.5, "gamma": 0.3},
    ),
    Case("ref_matmul", ref_matmul, ("Hm", "u")),
    Case("ref_tied_ae", ref_tied_ae, ("r",)),
    Case("ref_swish", ref_swish, ("g",)),
    Case("ref_elementwise", ref_elementwise, ("v", "w")),
    Case("ref_poisson", ref_poisson, ("rate",), reduction="sum", noise=0.3),
    Case("ref_gauss", ref_gauss, ("mu", "logsig"), noise=0.3),
    Case("ref_vae", ref_vae, ("p", "z"), constants={"beta": 1.0}, alt_constants={"beta": 0.25}),
    Case("ref_noinputs", ref_noinputs, ("sm",)),
    Case("ref_linreg", ref_linreg, ("yhat",)),
    Case("ref_stab_sce", ref_stab_sce, (), noise=2.0),
    Case("ref_stab_lse", ref_stab_lse, (), noise=2.0),
    Case("ref_stab_bcel", ref_stab_bcel, (), noise=2.0),
    Case("ref_stab_logsig", ref_stab_logsig, (), noise=2.0),
    Case("ref_stab_softplus", ref_stab_softplus, (), noise=2.0),
]
CASE_BY_NAME = {case.name: case for case in CASES}


# --------------------------------------------------------------------------- helpers


def ref_loss(case: Case, params: dict, batch: dict | None, constants: dict | None = None) -> float:
    """The reduced objective over the batch, from the hand-written per-sample reference."""
    consts = {**case.constants, **(constants or {})}
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if batch is None:
        return float(case.ref(p, {}, consts)[0])
    n = len(next(iter(batch.values())))
    per = [
        float(case.ref(p, {k: np.asarray(v[b], dtype=np.float64) for k, v in batch.items()}, consts)[0])
        for b in range(n)
    ]
    return float(np.sum(per) if case.reduction == "sum" else np.mean(per))


def ref_outputs(case: Case, params: dict, batch: dict | None, constants: dict | None = None) -> dict:
    consts = {**case.constants, **(constants or {})}
    if batch is None:
        return {k: np.asarray(v)[None] for k, v in case.ref(params, {}, consts)[1].items()}
    n = len(next(iter(batch.values())))
    per = [case.ref(params, {k: v[b] for k, v in batch.items()}, consts)[1] for b in range(n)]
    return {k: np.stack([np.asarray(o[k]) for o in per]) for k in per[0]}


def perturbed_params(module, case: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng(1000 + seed)
    base = module.init_params(seed)
    return {k: np.asarray(v, dtype=np.float64) + case.noise * rng.normal(size=np.shape(v)) for k, v in base.items()}


def make_batch(case: Case, seed: int = 0) -> dict | None:
    return BATCHES[case.name](np.random.default_rng(2000 + seed), B)


def assert_close_rel(actual: float, expected: float, rtol: float, what: str) -> None:
    assert np.isfinite(actual), f"{what}: not finite ({actual})"
    assert abs(actual - expected) <= rtol * max(abs(expected), 1e-12), (
        f"{what}: got {actual!r}, expected {expected!r} "
        f"(rel err {abs(actual - expected) / max(abs(expected), 1e-300):.2e})"
    )


def shift(params: dict, name: str, delta) -> dict:
    out = dict(params)
    out[name] = params[name] + delta
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def built(request):
    """(case, module): each reference spec built and imported once per test module."""
    import symgrad

    case = request.param
    return case, symgrad.load(str(case.path))


def test_table_covers_every_refspec():
    on_disk = {p.stem for p in REFSPECS.glob("*.yaml")}
    assert on_disk == set(CASE_BY_NAME), "each spec in tests/refspecs needs a NumPy reference (and back)"
    assert set(BATCHES) == set(CASE_BY_NAME)
    assert len(CASES) >= 14


# --------------------------------------------------------------------------- (a) loss value


def test_loss_matches_numpy_reference(built):
    case, module = built
    params = perturbed_params(module, case)
    batch = make_batch(case)
    expected = ref_loss(case, params, batch)
    got = module.loss(params, batch)
    assert_close_rel(float(got), expected, LOSS_RTOL, f"{case.name} loss")
    value, grads = module.loss_and_grad(params, batch)
    assert_close_rel(float(value), expected, LOSS_RTOL, f"{case.name} loss_and_grad value")


def test_loss_on_a_second_draw(built):
    """Another seed, so a test that passes by luck at one point (e.g. a zero index range) is unlikely."""
    case, module = built
    params = perturbed_params(module, case, seed=7)
    batch = make_batch(case, seed=7)
    assert_close_rel(float(module.loss(params, batch)), ref_loss(case, params, batch), LOSS_RTOL, case.name)


# ------------------------------------------------------------------------ (b) gradient vs FD of the reference


def test_gradient_directional_fd_of_reference(built):
    case, module = built
    params = perturbed_params(module, case)
    batch = make_batch(case)
    _, grads = module.loss_and_grad(params, batch)
    assert set(grads) == set(params), f"{case.name}: gradient keys {sorted(grads)} != params {sorted(params)}"
    rng = np.random.default_rng(3)
    for name, value in params.items():
        g = np.asarray(grads[name])
        assert g.shape == np.shape(value), f"{case.name}: grad[{name}] shape {g.shape} != {np.shape(value)}"
        assert g.dtype == np.float64, f"{case.name}: grad[{name}] dtype {g.dtype}"
        d = rng.normal(size=np.shape(value))
        fd = (
            ref_loss(case, shift(params, name, FD_STEP * d), batch)
            - ref_loss(case, shift(params, name, -FD_STEP * d), batch)
        ) / (2 * FD_STEP)
        gd = float(np.sum(g * d))
        scale = max(abs(fd), float(np.sum(np.abs(g * d))), 1e-12)
        assert abs(gd - fd) <= FD_RTOL * scale, (
            f"{case.name}: <grad[{name}], d> = {gd!r} but central differences of the NumPy reference give {fd!r}"
        )


def test_gradient_elementwise_fd_of_reference(built):
    case, module = built
    params = perturbed_params(module, case)
    batch = make_batch(case)
    _, grads = module.loss_and_grad(params, batch)
    checked = 0
    for name, value in params.items():
        value = np.asarray(value)
        if value.size > ELEMENTWISE_MAX:
            continue
        fd = np.zeros(value.shape)
        for idx in np.ndindex(value.shape):
            e = np.zeros(value.shape)
            e[idx] = FD_STEP
            fd[idx] = (
                ref_loss(case, shift(params, name, e), batch) - ref_loss(case, shift(params, name, -e), batch)
            ) / (2 * FD_STEP)
        g = np.asarray(grads[name])
        tol = FD_RTOL * max(float(np.max(np.abs(fd))), 1e-6)
        bad = np.abs(g - fd) > tol
        assert not bad.any(), (
            f"{case.name}: grad[{name}] differs from FD of the reference at {np.argwhere(bad).tolist()}:\n"
            f"got {g[bad]}\nexpected {fd[bad]}"
        )
        checked += 1
    assert checked > 0


def test_gradient_sign_is_of_the_objective_as_written(built):
    """For maximize specs the gradient is d(objective)/d(params), not negated (see module docstring)."""
    case, module = built
    params = perturbed_params(module, case)
    batch = make_batch(case)
    value, grads = module.loss_and_grad(params, batch)
    name = max(params, key=lambda k: float(np.sum(np.abs(grads[k]))))
    g = np.asarray(grads[name])
    step = 1e-4 / max(float(np.linalg.norm(g)), 1e-12)
    # a small step along +grad increases the value as written, whatever the objective
    assert ref_loss(case, shift(params, name, step * g), batch) > ref_loss(case, params, batch)


# --------------------------------------------------------------------------- (c) float32


def test_float32_follows_params_dtype(built):
    case, module = built
    p64 = perturbed_params(module, case)
    batch64 = make_batch(case)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    batch32 = None if batch64 is None else {k: v.astype(np.float32) for k, v in batch64.items()}
    v64, g64 = module.loss_and_grad(p64, batch64)
    v32, g32 = module.loss_and_grad(p32, batch32)
    l32 = module.loss(p32, batch32)
    for what, v in (("loss_and_grad value", v32), ("loss", l32)):
        assert np.isfinite(v), f"{case.name} float32 {what} not finite"
        assert abs(float(v) - float(v64)) <= F32_RTOL * max(abs(float(v64)), 1e-3), (
            f"{case.name} float32 {what} {v} vs float64 {v64}"
        )
    for name in p64:
        g = np.asarray(g32[name])
        assert g.dtype == np.float32, f"{case.name}: float32 params gave grad[{name}] of dtype {g.dtype}"
        ref = np.asarray(g64[name])
        tol = F32_RTOL * (np.abs(ref) + np.max(np.abs(ref)) + 1e-6)
        assert np.all(np.abs(g - ref) <= tol), f"{case.name}: float32 grad[{name}] {g} vs float64 {ref}"
    out = module.forward(p32, batch32)
    for name in case.outputs:
        assert np.asarray(out[name]).dtype == np.float32, f"{case.name}: float32 forward[{name}] dtype"


def test_init_params_dtype_and_shapes(built):
    case, module = built
    p64 = module.init_params(0)
    p32 = module.init_params(0, dtype=np.float32)
    again = module.init_params(0)
    assert set(p64) == set(p32)
    for name, v in p64.items():
        assert isinstance(v, np.ndarray), f"{case.name}: init_params()[{name}] is {type(v)}, not ndarray"
        assert v.dtype == np.float64 and p32[name].dtype == np.float32
        assert p32[name].shape == v.shape
        np.testing.assert_array_equal(v, again[name], err_msg=f"{case.name}: init_params(0) varies")
        assert np.all(np.isfinite(v))


# --------------------------------------------------------------------------- (d) forward


def test_forward_returns_declared_outputs_batched(built):
    case, module = built
    params = perturbed_params(module, case)
    batch = make_batch(case)
    out = module.forward(params, batch)
    assert isinstance(out, dict), f"{case.name}: forward returned {type(out)}"
    expected = ref_outputs(case, params, batch)
    for name in case.outputs:
        assert name in out, f"{case.name}: forward() lacks declared output {name!r} (has {sorted(out)})"
        got = np.asarray(out[name])
        want = expected[name]
        if batch is None and got.shape == want.shape[1:]:
            got = got[None]  # no inputs: the length-1 batch axis is optional (see module docstring)
        assert got.shape == want.shape, f"{case.name}: forward[{name}] shape {got.shape}, want {want.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=f"{case.name}: forward[{name}]")


# --------------------------------------------------------------------------- constants, sampled inputs


@pytest.mark.parametrize("name", [c.name for c in CASES if c.alt_constants])
def test_constants_changed_at_run_time(name):
    import symgrad

    case = CASE_BY_NAME[name]
    module = symgrad.load(str(case.path))
    params = perturbed_params(module, case)
    batch = make_batch(case)
    default = ref_loss(case, params, batch)
    changed = ref_loss(case, params, batch, case.alt_constants)
    assert abs(changed - default) > 1e-6 * abs(default)  # the test itself is meaningful
    assert_close_rel(float(module.loss(params, batch)), default, LOSS_RTOL, f"{name} default constants")
    assert_close_rel(float(module.loss(params, batch, constants=None)), default, LOSS_RTOL, f"{name} None")
    assert_close_rel(
        float(module.loss(params, batch, constants=case.alt_constants)), changed, LOSS_RTOL, f"{name} changed constants"
    )
    value, grads = module.loss_and_grad(params, batch, constants=case.alt_constants)
    assert_close_rel(float(value), changed, LOSS_RTOL, f"{name} loss_and_grad with changed constants")
    # gradient with the changed constants, against FD of the reference with the same constants
    rng = np.random.default_rng(5)
    for pname, v in params.items():
        d = rng.normal(size=np.shape(v))
        fd = (
            ref_loss(case, shift(params, pname, FD_STEP * d), batch, case.alt_constants)
            - ref_loss(case, shift(params, pname, -FD_STEP * d), batch, case.alt_constants)
        ) / (2 * FD_STEP)
        g = np.asarray(grads[pname])
        gd = float(np.sum(g * d))
        scale = max(abs(fd), float(np.sum(np.abs(g * d))), 1e-12)
        assert abs(gd - fd) <= FD_RTOL * scale, f"{name}: grad[{pname}] {gd} vs FD {fd}"
    # one constant overridden, the other keeps its default
    first = next(iter(case.alt_constants))
    partial = {first: case.alt_constants[first]}
    assert_close_rel(
        float(module.loss(params, batch, constants=partial)),
        ref_loss(case, params, batch, partial),
        LOSS_RTOL,
        f"{name} partial override",
    )


def test_sampled_input_supplied_by_batch_is_used():
    import symgrad

    case = CASE_BY_NAME["ref_vae"]
    module = symgrad.load(str(case.path))
    params = perturbed_params(module, case)
    batch = make_batch(case)
    first = float(module.loss(params, batch))
    assert float(module.loss(params, batch)) == first  # deterministic when eps is given
    other = dict(batch, eps=batch["eps"] + 1.0)
    assert_close_rel(float(module.loss(params, other)), ref_loss(case, params, other), LOSS_RTOL, "vae eps")
    assert abs(float(module.loss(params, other)) - first) > 1e-6


# --------------------------------------------------------------------------- worked numbers (MATH.md)


def test_worked_numbers_linreg():
    import symgrad

    module = symgrad.load(str(CASE_BY_NAME["ref_linreg"].path))
    params = module.init_params(0)
    assert float(params["w"]) == 1.0 and float(params["b"]) == 0.0
    value, g = module.loss_and_grad(params, {"x": np.array([2.1]), "y": np.array([4.0])})
    assert value == pytest.approx(1.9**2, rel=1e-12)
    assert float(g["w"]) == pytest.approx(-7.98, rel=1e-12)
    assert float(g["b"]) == pytest.approx(-3.8, rel=1e-12)
    params = {"w": np.array(1.0), "b": np.array(0.5)}
    _, g = module.loss_and_grad(params, {"x": np.array([1.4]), "y": np.array([2.1])})
    assert float(g["w"]) == pytest.approx(-0.56, rel=1e-12)
    assert float(g["b"]) == pytest.approx(-0.4, rel=1e-12)


def test_init_kinds():
    """Constant, zeros, ones, short-form (0) and uniform inits, read from the refspecs."""
    import symgrad

    mlp = symgrad.load(str(CASE_BY_NAME["ref_mlp"].path)).init_params(0)
    np.testing.assert_array_equal(mlp["b1"], np.zeros(5))
    np.testing.assert_array_equal(mlp["b2"], np.full(3, 0.1))
    limit = np.sqrt(6.0 / (4 + 5))  # glorot_uniform for shape [H, D] = [5, 4]: fan_in 4, fan_out 5
    assert np.all(np.abs(mlp["W1"]) <= limit) and np.std(mlp["W1"]) > 0
    matmul = symgrad.load(str(CASE_BY_NAME["ref_matmul"].path)).init_params(0)
    np.testing.assert_array_equal(matmul["v"], np.ones(2))
    gauss = symgrad.load(str(CASE_BY_NAME["ref_gauss"].path)).init_params(0)
    assert gauss["b"].shape == () and float(gauss["b"]) == 0.0
    # ref_nade writes W's init unquoted in a flow mapping, exactly as SPEC.md's example does (YAML alone would
    # split `normal(0, 0.01)` at the comma), and V's quoted: both must mean normal(0, 0.01)
    nade = symgrad.load(str(CASE_BY_NAME["ref_nade"].path)).init_params(0)
    for name in ("W", "V"):
        assert 0.002 < np.std(nade[name]) < 0.05 and np.max(np.abs(nade[name])) < 0.1, name
    bil = symgrad.load(str(CASE_BY_NAME["ref_bilinear"].path))
    a0, a1 = bil.init_params(0)["A"], bil.init_params(1)["A"]
    assert np.all((a0 >= -0.5) & (a0 <= 0.5)) and not np.array_equal(a0, a1)


# --------------------------------------------------------------------------- numerical stability at |z| = 1e4

Z_BIG = np.array([1e4, -1e4, 0.5])

STABILITY = [
    # (spec, z, batch or None, expected loss, expected gradient wrt z)
    (
        "ref_stab_sce",
        Z_BIG,
        {"y": np.array([[0.2, 0.3, 0.5]])},
        1e4 - (0.2e4 - 0.3e4 + 0.25),
        np.array([1.0, 0.0, 0.0]) - np.array([0.2, 0.3, 0.5]),
    ),
    (
        "ref_stab_lse",
        np.array([1e4, -1e4, 1e4 - 1.0]),
        None,
        1e4 + np.log1p(np.exp(-1.0)),
        np.array([1.0, 0.0, np.exp(-1.0)]) / (1.0 + np.exp(-1.0)),
    ),
    (
        "ref_stab_bcel",
        np.array([1e4, -1e4, 0.0]),
        {"y": np.array([[0.3, 0.7, 1.0]])},
        (1e4 - 3e3) + 7e3 + np.log(2.0),
        np.array([0.7, -0.7, -0.5]),
    ),
    ("ref_stab_logsig", Z_BIG, None, -1e4 - np.log1p(np.exp(-0.5)), np.array([0.0, 1.0, 1.0 - sigmoid(0.5)])),
    ("ref_stab_softplus", Z_BIG, None, 1e4 + np.log1p(np.exp(0.5)), np.array([1.0, 0.0, sigmoid(0.5)])),
]


@pytest.mark.parametrize("name,z,batch,want_loss,want_grad", STABILITY, ids=[s[0] for s in STABILITY])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_stable_at_large_logits(name, z, batch, want_loss, want_grad, dtype):
    import symgrad

    module = symgrad.load(str(CASE_BY_NAME[name].path))
    # the hand-computed expectation agrees with the (max-shifted, logaddexp) NumPy reference
    assert want_loss == pytest.approx(ref_loss(CASE_BY_NAME[name], {"z": z}, batch), rel=1e-12)
    params = {"z": z.astype(dtype)}
    if batch is not None:
        batch = {k: v.astype(dtype) for k, v in batch.items()}
    value, grads = module.loss_and_grad(params, batch)
    loss = module.loss(params, batch)
    g = np.asarray(grads["z"])
    assert np.isfinite(value) and np.isfinite(loss), f"{name}: non-finite loss {value}, {loss}"
    assert np.all(np.isfinite(g)), f"{name}: non-finite gradient {g}"
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    assert float(value) == pytest.approx(want_loss, rel=rtol)
    assert float(loss) == pytest.approx(want_loss, rel=rtol)
    np.testing.assert_allclose(g, want_grad, rtol=rtol, atol=rtol)


def test_softplus_of_1e4_is_1e4():
    import symgrad

    module = symgrad.load(str(CASE_BY_NAME["ref_stab_softplus"].path))
    value = module.loss({"z": np.array([1e4, -1e4, -1e4])}, None)
    assert float(value) == pytest.approx(1e4, rel=1e-12)
