"""The training runtime against hand-written module doubles (tests/handmade_*.py), independent of codegen."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from symgrad.errors import DataError, TrainingDiverged, UsageError
from symgrad.runtime import schedules
from symgrad.runtime.optim import SGD, Adam
from symgrad.runtime.training import Trainer, train

sys.path.insert(0, str(Path(__file__).parent))
import handmade_concave  # noqa: E402
import handmade_linreg  # noqa: E402

RNG = np.random.default_rng(42)
X = RNG.normal(size=(50, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * RNG.normal(size=50)
DATA = {"x": X, "y": Y}


def variant(module, **overrides):
    """The same kernels with other metadata (e.g. REDUCTION='sum', SIGN=-1)."""
    ns = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
    for key, value in overrides.items():
        setattr(ns, key, value)
    return ns


def fit(**kw):
    args = {"optimizer": Adam(0.05), "batch_size": 16, "epochs": 4, "progress": False}
    args.update(kw)
    data = args.pop("data", DATA)
    return train(handmade_linreg, data, **args)


def test_same_seed_is_bit_identical_and_seed_matters():
    a = fit(seed=3, constants={"sigma": 0.5})
    b = fit(seed=3, constants={"sigma": 0.5})
    c = fit(seed=4, constants={"sigma": 0.5})
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])
    assert np.array_equal(a.history, b.history)
    assert not np.array_equal(a.params["w"], c.params["w"])


def test_learns_and_partial_batch_is_dropped():
    res = fit(epochs=40, history_per_step=True)
    assert res.history.shape == (40,)
    assert res.step_history.shape == (40 * 3,)  # 50 // 16 = 3 steps per epoch
    assert res.steps == 120
    assert res.history[-1] < 0.05 < res.history[0]
    np.testing.assert_allclose(res.params["w"], [1.0, -2.0, 0.5], atol=0.1)


def test_steps_caps_the_run():
    res = fit(epochs=None, steps=5, history_per_step=True)
    assert res.steps == 5 and res.step_history.shape == (5,) and res.history.shape == (2,)
    res = fit(epochs=10, steps=4)
    assert res.steps == 4
    with pytest.raises(UsageError):
        fit(epochs=None)
    with pytest.raises(UsageError):
        fit(batch_size=51)


def test_result_params_are_copies_and_input_params_untouched():
    start = handmade_linreg.init_params(0)
    keep = {k: v.copy() for k, v in start.items()}
    res = fit(params=start)
    for k in start:
        assert np.array_equal(start[k], keep[k])
        assert res.params[k].base is None or not np.shares_memory(res.params[k], start[k])


def test_resume_is_identical_to_uninterrupted(tmp_path):
    opts = {"seed": 7, "constants": {"sigma": 0.3}, "history_per_step": True, "optimizer": Adam(0.02)}
    full = fit(epochs=6, **opts)
    ckpt = tmp_path / "run.ckpt.npz"
    fit(epochs=3, checkpoint=ckpt, **opts)
    assert ckpt.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt.npz"]  # no temp file left behind
    resumed = fit(epochs=6, checkpoint=ckpt, resume=True, **opts)
    for k in full.params:
        assert np.array_equal(full.params[k], resumed.params[k])
    assert np.array_equal(full.history, resumed.history)
    assert np.array_equal(full.step_history, resumed.step_history)
    # a finished run resumes to the same result without stepping
    again = fit(epochs=6, checkpoint=ckpt, resume=True, **opts)
    assert np.array_equal(again.params["w"], full.params["w"])
    with pytest.raises(UsageError, match="batch_size"):
        fit(epochs=6, checkpoint=ckpt, resume=True, **{**opts, "batch_size": 8})


def test_resume_with_missing_checkpoint_starts_fresh(tmp_path):
    a = fit(epochs=2, checkpoint=tmp_path / "new.npz", resume=True)
    b = fit(epochs=2)
    assert np.array_equal(a.params["w"], b.params["w"])
    with pytest.raises(UsageError):
        fit(resume=True)


def test_state_dict_round_trip_continues_identically():
    batches = {"x": X[:48].reshape(3, 16, 3), "y": Y[:48].reshape(3, 16)}
    tr = Trainer(handmade_linreg, SGD(0.05, momentum=0.9), constants={"sigma": 1.0}, seed=1)
    tr.run_epoch(batches)
    saved = tr.state_dict()
    after = tr.run_epoch(batches)
    other = Trainer(handmade_linreg, SGD(0.05, momentum=0.9), constants={"sigma": 1.0}, seed=99)
    other.load_state_dict(saved)
    assert np.array_equal(other.run_epoch(batches), after)
    assert np.array_equal(other.theta, tr.theta)
    assert saved["step"] == 3 and set(saved["params"]) == {"w", "b"}


def test_step_returns_objective_before_update_and_matches_run_epoch():
    batches = {"x": X[:48].reshape(3, 16, 3), "y": Y[:48].reshape(3, 16)}
    a = Trainer(handmade_linreg, Adam(0.1), constants={"sigma": 0.2})
    b = Trainer(handmade_linreg, Adam(0.1), constants={"sigma": 0.2})
    got = a.run_epoch(batches)
    for i in range(3):
        before = {k: v.copy() for k, v in b.params.items()}
        obj = b.step({"x": batches["x"][i], "y": batches["y"][i]})
        assert obj == got[i]
        if i == 0:
            expected = handmade_linreg.loss(before, {"x": batches["x"][0], "y": batches["y"][0]})
            assert obj == pytest.approx(expected, abs=0.5)  # noise draws make it approximate
    assert np.array_equal(a.theta, b.theta)


@pytest.mark.parametrize("bad_t", [0, 1, 2, 3, 5])
def test_divergence_names_step_and_keeps_the_last_params_with_a_finite_loss(bad_t):
    """Step bad_t + 1 (1-based) has an infinite loss (a constant of 1e308 overflows it; a non-finite constant is
    refused): the parameters kept are those of the step before it.

    3 steps per epoch, so bad_t = 3 is the first step of a compiled call (the previous call is replayed) and
    bad_t = 0 the very first step (the starting parameters are all there is)."""
    bad = {"lr": schedules.constant(), "scale": lambda t: 1e308 if t == bad_t else 1.0}
    if bad_t >= 2:
        good = fit(optimizer=SGD(0.01), steps=bad_t - 1, epochs=None).params
    else:
        good = handmade_linreg.init_params(0)
    with pytest.raises(TrainingDiverged) as info:
        fit(optimizer=SGD(0.01), schedule=bad, epochs=3, history_per_step=True)
    exc = info.value
    step = bad_t + 1
    assert exc.step == step and exc.epoch == bad_t // 3 + 1
    assert f"step {step} (epoch {exc.epoch})" in str(exc)
    if bad_t >= 1:
        assert f"kept the parameters of step {bad_t}, the last whose loss was finite" in str(exc)
    else:
        assert "kept the starting parameters" in str(exc)
    for k in good:
        assert np.array_equal(exc.params[k], good[k])
    assert exc.result.history.shape == (bad_t // 3,) and exc.result.step_history.shape == (bad_t,)
    assert exc.exit_code == 1


def test_trainer_step_divergence_rolls_back_one_step():
    """`Trainer.step` calls: a failing step restores the parameters (and optimizer state) of the step before."""
    tr = Trainer(handmade_linreg, Adam(0.1))
    batch = {"x": X[:16], "y": Y[:16]}
    tr.step(batch)
    before = tr.state_dict()
    tr.step(batch)
    with pytest.raises(TrainingDiverged) as info:
        tr.step({"x": X[:16], "y": np.full(16, 1e300)})
    assert info.value.step == 3 and tr.step_count == 1
    assert np.array_equal(tr.theta, before["theta"]) and np.array_equal(tr.opt_state, before["opt_state"])


def test_exploding_learning_rate_diverges_with_finite_params():
    with pytest.raises(TrainingDiverged) as info:
        fit(optimizer=SGD(5.0), epochs=200)
    assert all(np.all(np.isfinite(v)) for v in info.value.params.values())
    assert info.value.step >= 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"x": X}, "missing input 'y', expected an array of shape (N,)"),
        ({"x": X[:, :2], "y": Y}, "data['x'] has shape (50, 2), expected (N, 3)"),
        ({"x": X.astype(str), "y": Y}, "data['x'] has non-numeric dtype"),
        ({"x": X, "y": Y[:40]}, "data['y'] has leading shape (40,) but data['x'] has (50,)"),
        ({"x": X, "y": Y, "z": Y}, "unknown array 'z'"),
        ({"x": X, "y": np.full(50, np.nan)}, "data['y'] contains NaN"),
        ([X, Y], "must be a dict"),
    ],
)
def test_data_errors_name_the_array_and_shape(data, message):
    with pytest.raises(DataError) as info:
        fit(data=data)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_validation_data_is_checked_too():
    with pytest.raises(DataError, match=r"validation\['x'\] has shape"):
        fit(validation={"x": X[:, :1], "y": Y})
    res = fit(validation=DATA, epochs=3)
    assert res.val_history.shape == (3,)
    assert res.val_accuracy is None  # not a classifier


def test_maximisation_of_concave_objective_reaches_its_max():
    res = train(handmade_concave, optimizer=SGD(0.1), batch_size=1, epochs=200, progress=False)
    np.testing.assert_allclose(res.params["w"], [1.0, 2.0, 3.0], atol=1e-10)
    assert res.history[-1] == pytest.approx(0.0, abs=1e-15)
    assert np.all(np.diff(res.history) >= 0)  # ascent never goes down
    # same kernels, linreg as a maximisation of -(squared error): ascends to the least-squares fit
    neg = variant(handmade_linreg, SIGN=-1.0)
    res = train(neg, DATA, optimizer=Adam(0.05), batch_size=50, epochs=400, constants={"scale": -1.0}, progress=False)
    w_ls = np.linalg.lstsq(np.c_[X, np.ones(50)], Y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[res.params["w"], res.params["b"]], w_ls, atol=1e-4)


def test_reduction_sum_scales_gradient_by_n_over_b():
    summed = variant(handmade_linreg, REDUCTION="sum")
    start = {"w": np.zeros(3), "b": np.zeros(())}
    res = train(
        summed,
        DATA,
        optimizer=SGD(1e-3),
        batch_size=10,
        steps=1,
        params=start,
        shuffle=False,
        progress=False,
        history_per_step=True,
    )
    xb, yb = X[:10], Y[:10]
    grad_sum_w = (2 * (0.0 - yb))[:, None] * xb  # d/dw of sum of squared errors at w=0, b=0
    np.testing.assert_allclose(res.params["w"], -1e-3 * (50 / 10) * grad_sum_w.sum(0), rtol=1e-12)
    np.testing.assert_allclose(res.params["b"], -1e-3 * 5 * (2 * -yb).sum(), rtol=1e-12)
    assert res.step_history[0] == pytest.approx(np.sum(yb**2), rel=1e-12)  # the batch sum, not the mean
    mean = train(
        handmade_linreg,
        DATA,
        optimizer=SGD(1e-3),
        batch_size=10,
        steps=1,
        params=start,
        shuffle=False,
        progress=False,
        history_per_step=True,
    )
    np.testing.assert_allclose(mean.params["w"], res.params["w"] / 50, rtol=1e-12)
    assert mean.step_history[0] == pytest.approx(np.mean(yb**2), rel=1e-12)


def test_sampled_inputs_are_drawn_unless_supplied():
    noisy = fit(constants={"sigma": 1.0})
    quiet = fit(constants={"sigma": 0.0})
    assert not np.array_equal(noisy.params["w"], quiet.params["w"])
    # without shuffling the draws are the only use of the RNG, so supplying zeros = sigma 0
    quiet = fit(constants={"sigma": 0.0}, shuffle=False)
    supplied = fit(constants={"sigma": 1.0}, data={**DATA, "noise": np.zeros(50)}, shuffle=False)
    assert np.array_equal(supplied.params["w"], quiet.params["w"])


def test_float32_params_train_in_float32():
    start = handmade_linreg.init_params(0, np.float32)
    res = fit(params=start, epochs=30)
    assert res.params["w"].dtype == np.float32
    np.testing.assert_allclose(res.params["w"], [1.0, -2.0, 0.5], atol=0.1)


def test_callback_and_constant_schedule_and_bad_schedule():
    seen = []
    fit(epochs=3, callback=seen.append)
    assert [i.epoch for i in seen] == [1, 2, 3] and seen[-1].steps == 9
    with pytest.raises(UsageError, match="neither 'lr' nor a constant"):
        fit(schedule={"beta": schedules.constant(1.0)})
    with pytest.raises(UsageError):
        fit(constants={"nope": 1.0})


def test_progress_bar_does_not_change_the_result():
    assert np.array_equal(fit(progress=True).params["w"], fit(progress=False).params["w"])


def test_classifier_accuracy_is_reported():
    import handmade_softmax as sm

    rng = np.random.default_rng(0)
    centers = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    labels = rng.integers(0, 3, 300)
    x = centers[labels] + rng.normal(size=(300, 4))
    y = np.eye(3)[labels]
    res = train(
        sm,
        {"x": x[:240], "y": y[:240]},
        optimizer=Adam(0.05),
        batch_size=32,
        epochs=10,
        validation={"x": x[240:], "y": y[240:]},
        progress=False,
    )
    assert res.val_accuracy.shape == (10,) and res.accuracy.shape == (10,)
    logits = x[240:] @ res.params["W"].T + res.params["b"]
    assert res.val_accuracy[-1] == np.mean(logits.argmax(1) == labels[240:])
    assert res.val_accuracy[-1] > 0.9 and res.val_history[-1] < res.val_history[0]


def test_public_train_stays_callable_after_submodule_import():
    """`import symgrad.runtime.training` must not shadow the public `symgrad.train` function
    (it once was `symgrad.train`)."""
    import importlib

    import symgrad

    importlib.import_module("symgrad.runtime.training")
    importlib.import_module("symgrad.cli.main")
    assert callable(symgrad.train) and callable(symgrad.Trainer)
    assert symgrad.train.__module__ == "symgrad.runtime.training"
