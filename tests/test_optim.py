"""Optimizer kernels and schedules against textbook loops written independently in NumPy."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from symgrad.runtime import schedules
from symgrad.runtime.optim import SGD, Adam, make_optimizer, update

sys.path.insert(0, str(Path(__file__).parent))
import handmade_linreg  # noqa: E402

RNG = np.random.default_rng(0)
GRADS = [RNG.normal(size=7) for _ in range(6)]
THETA0 = RNG.normal(size=7)


def run_kernel(opt, dtype=np.float64, lrs=None):
    theta = THETA0.astype(dtype)
    state = np.zeros((2, theta.size), dtype)
    for t, g in enumerate(GRADS, start=1):
        lr = opt.lr if lrs is None else lrs[t - 1]
        update(theta, g.astype(dtype), state, opt.kind, lr, opt.hyper, t)
    return theta


def textbook(kind, lr, mu=0.9, b1=0.9, b2=0.999, eps=1e-8):
    theta = THETA0.copy()
    v = np.zeros_like(theta)
    m = np.zeros_like(theta)
    for t, g in enumerate(GRADS, start=1):
        if kind == "sgd":
            theta = theta - lr * g
        elif kind == "momentum":
            v = mu * v + g
            theta = theta - lr * v
        elif kind == "nesterov":
            v = mu * v + g
            theta = theta - lr * (g + mu * v)
        else:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            mhat = m / (1 - b1**t)
            vhat = v / (1 - b2**t)
            theta = theta - lr * mhat / (np.sqrt(vhat) + eps)
    return theta


@pytest.mark.parametrize(
    ("opt", "kind"),
    [
        (SGD(0.1), "sgd"),
        (SGD(0.1, momentum=0.9), "momentum"),
        (SGD(0.1, momentum=0.9, nesterov=True), "nesterov"),
        (Adam(0.01), "adam"),
    ],
)
def test_update_matches_textbook(opt, kind):
    np.testing.assert_allclose(run_kernel(opt), textbook(kind, opt.lr), rtol=0, atol=1e-10)


def test_adam_hyperparameters_are_used():
    opt = Adam(0.02, beta1=0.5, beta2=0.9, eps=1e-3)
    np.testing.assert_allclose(run_kernel(opt), textbook("adam", 0.02, b1=0.5, b2=0.9, eps=1e-3), rtol=0, atol=1e-10)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, nesterov=True), Adam(0.01)])
def test_float32_follows_float64(opt):
    got = run_kernel(opt, np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, run_kernel(opt), rtol=1e-5, atol=1e-6)


def test_optimizer_objects():
    assert SGD(0.1).kind == 0 and SGD(0.1, momentum=0.5).kind == 1
    assert SGD(0.1, momentum=0.5, nesterov=True).kind == 2 and Adam().kind == 3
    assert Adam().hyper.tolist() == [0.0, 0.9, 0.999, 1e-8]
    assert SGD(0.1, momentum=0.5).hyper[0] == 0.5
    with pytest.raises(ValueError):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError):
        SGD(-1.0)
    assert make_optimizer("adam", 0.01) == Adam(0.01)
    with pytest.raises(ValueError):
        make_optimizer("rmsprop")


def test_schedules_equal_their_formulas():
    steps = range(0, 50)
    assert [schedules.constant()(t) for t in steps] == [1.0] * 50
    assert [schedules.step_decay(10, 0.5)(t) for t in steps] == [0.5 ** (t // 10) for t in steps]
    assert [schedules.inverse_time(0.1)(t) for t in steps] == [1 / (1 + 0.1 * t) for t in steps]
    cos = schedules.cosine(20, final=0.1)
    for t in steps:
        frac = min(t, 20) / 20
        assert cos(t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)), abs=1e-15)
    assert cos(0) == 1.0 and cos(20) == pytest.approx(0.1) and cos(49) == pytest.approx(0.1)
    warm = schedules.linear_warmup(5, then=schedules.inverse_time(1.0))
    assert [warm(t) for t in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert warm(5) == 1.0 and warm(7) == pytest.approx(1 / 3)
    assert schedules.linear_warmup(4)(100) == 1.0
    ramp = schedules.linear_ramp(0.0, 1.0, 10)
    assert [ramp(t) for t in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]


def test_schedule_multiplies_base_lr_in_kernel_inputs():
    from symgrad.runtime.training import Trainer

    tr = Trainer(handmade_linreg, SGD(0.5), schedule=schedules.step_decay(2, 0.1))
    np.testing.assert_allclose(tr.lrs(0, 5), [0.5, 0.5, 0.05, 0.05, 0.005])
    tr = Trainer(
        handmade_linreg,
        Adam(0.01),
        schedule={"lr": schedules.inverse_time(1.0), "sigma": schedules.linear_ramp(0, 2, 4)},
    )
    np.testing.assert_allclose(tr.lrs(1, 2), [0.005, 0.01 / 3])
    consts = tr.consts_steps(0, 6)
    np.testing.assert_allclose(consts[:, 0], 1.0)  # scale keeps its default
    np.testing.assert_allclose(consts[:, 1], [0, 0.5, 1, 1.5, 2, 2])  # sigma is absolute


def test_clipping_bounds_the_step_norm():
    from symgrad.runtime.training import Trainer

    rng = np.random.default_rng(3)
    batch = {"x": rng.normal(size=(8, 3)) * 100, "y": rng.normal(size=8) * 100}
    free = Trainer(handmade_linreg, SGD(1.0))
    before = free.theta.copy()
    free.step(batch)
    assert np.linalg.norm(free.theta - before) > 10  # the unclipped step is long
    clipped = Trainer(handmade_linreg, SGD(1.0), clip_norm=0.5)
    clipped.step(batch)
    step = clipped.theta - before
    assert np.linalg.norm(step) == pytest.approx(0.5, rel=1e-12)
    # same direction as the unclipped step
    np.testing.assert_allclose(step / 0.5, (free.theta - before) / np.linalg.norm(free.theta - before))


def test_update_kernels_state_numpys_error_model():
    """Unset, Numba's error model is inherited from whichever caller compiles a kernel first and that variant is
    cached: Adam then ran scalar (Python's model checks every division) when called from Python, 3.5x slower."""
    from numba.core.registry import CPUDispatcher

    from symgrad.runtime import optim

    kernels = [v for v in vars(optim).values() if isinstance(v, CPUDispatcher)]
    assert len(kernels) >= 10
    for k in kernels:
        assert k.targetoptions.get("error_model") == "numpy", k.__name__


def test_adam_runs_with_the_jit_disabled(tmp_path):
    """Under NUMBA_DISABLE_JIT=1 (a debugging mode) Adam's Python stub raised NotImplementedError (fuzz campaign);
    it now runs the same arithmetic as the compiled overload (the histories agree to rounding: the kernels'
    reductions associate differently without the JIT)."""
    import json
    import subprocess

    code = (
        "import numpy as np, symgrad\n"
        "m = symgrad.load('specs/linreg.yaml'); x = np.linspace(0, 1, 20)\n"
        "r = symgrad.train(m, {'x': x, 'y': 2 * x + 1}, optimizer=symgrad.Adam(0.1), batch_size=5, epochs=2,"
        " progress=False)\n"
        "import json; print(json.dumps(r.history.tolist()))\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SYMGRAD_WARMUP": "0"}
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, env=e, timeout=300)
        for e in (env, {**env, "NUMBA_DISABLE_JIT": "1"})
    ]
    for p in runs:
        assert p.returncode == 0, p.stderr[-2000:]
    jit, nojit = (np.array(json.loads(p.stdout)) for p in runs)
    np.testing.assert_allclose(nojit, jit, rtol=1e-12)


@pytest.mark.parametrize(("dtype", "big"), [(np.float64, 1e200), (np.float32, 1e25)])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_a_finite_gradient_too_long_to_square_is_a_step(dtype, big, clip):
    """Helper H's fuzz finding F1: the gate squared the gradient, and a finite one past |g| ~ 1e154 (float64) or
    ~ 1e19 (float32) overflowed to inf and read as a diverged step ("no step had a finite loss"). The norm is now
    scaled by max |g| when the plain sum of squares is not finite; the reference norm is math.hypot's."""
    from symgrad.runtime.optim import gated_step, grad_norm_ok

    g0 = [big, -0.5 * big, 3.0]
    norm = math.hypot(*g0)
    lr = 1e-300 if dtype == np.float64 else 1e-26
    theta = np.array([1.0, 2.0, 3.0], dtype)
    grad = np.array(g0, dtype)
    state = np.zeros((2, 3), dtype)
    assert gated_step(theta, grad, state, 0, lr, np.zeros(4), 1, clip, 1.0)
    step = (clip / norm if clip else 1.0) * lr * np.array(g0)
    np.testing.assert_allclose(theta, np.array([1.0, 2.0, 3.0]) - step, rtol=1e-6 if dtype == np.float32 else 1e-14)
    n, ok = grad_norm_ok(np.array(g0, dtype))
    assert ok and n == pytest.approx(norm, rel=1e-6)
    for poison in (np.nan, np.inf):  # a non-finite element still stops the step, theta untouched
        theta = np.ones(3, dtype)
        grad = np.array([big, poison, 1.0], dtype)
        assert not gated_step(theta, grad, state, 0, lr, np.zeros(4), 1, clip, 1.0)
        assert (theta == 1.0).all()
        assert not grad_norm_ok(grad)[1]


def test_training_on_a_gradient_too_long_to_square_is_not_divergence():
    """End to end on the shipped linreg (x ~ 1e100: loss ~ 1e200 is finite, its gradient ~ 1e200 too): before the
    fix `symgrad.train` stopped at step 0 with "training diverged"; now it takes every step."""
    import symgrad

    m = symgrad.load(Path(__file__).resolve().parent.parent / "specs/linreg.yaml")
    x = np.full(8, 1e100)
    r = symgrad.train(m, {"x": x, "y": 2 * x}, optimizer=SGD(1e-201), batch_size=4, epochs=1, progress=False)
    assert r.steps == 2 and np.isfinite(r.history).all()
    assert r.params["w"] == pytest.approx(1.36, rel=1e-12)  # w <- w + 0.2 (2 - w): 1.2, then 1.36
