"""Shipped specs through the whole pipeline: MATH.md worked numbers, and each model's bar on the digits.

Skipped until the code generator (`symgrad.runtime.loader`) exists; after that every failure is real. Each training
prints its held-out figure and train time (`pytest -s` shows them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from symgrad.runtime.data import load_dataset
from symgrad.runtime.optim import SGD, Adam
from symgrad.runtime.training import Trainer, train

SPECS = Path(__file__).resolve().parent.parent / "specs"


def load(name: str):
    loader = pytest.importorskip("symgrad.runtime.loader")
    return loader.load(str(SPECS / f"{name}.yaml"))


def report(name: str, figure: str, result) -> None:
    print(f"\n{name}: {figure}, train time {result.train_time:.2f} s ({result.steps} steps)")


def test_worked_number_1_one_sgd_step():
    m = load("linreg")
    tr = Trainer(m, SGD(0.01), params={"w": np.array(1.0), "b": np.array(0.0)})
    before = tr.step({"x": np.array([2.1]), "y": np.array([4.0])})
    assert before == pytest.approx(1.9**2, abs=1e-12)  # (2.1 - 4)**2
    assert float(tr.params["w"]) == pytest.approx(1.0798, abs=1e-12)
    assert float(tr.params["b"]) == pytest.approx(0.038, abs=1e-12)
    after = m.loss(tr.params_copy(), {"x": np.array([2.1]), "y": np.array([4.0])})
    assert after == pytest.approx(2.8710591364, abs=1e-9)
    res = train(
        m,
        {"x": np.array([2.1]), "y": np.array([4.0])},
        optimizer=SGD(0.01),
        batch_size=1,
        steps=1,
        params={"w": np.array(1.0), "b": np.array(0.0)},
        progress=False,
    )
    assert float(res.params["w"]) == pytest.approx(1.0798, abs=1e-12)


def test_worked_number_3_quadratic_full_batch():
    m = load("quadratic")
    res = train(m, optimizer=SGD(0.01), batch_size=1, steps=10, history_per_step=True, progress=False)
    np.testing.assert_allclose(res.step_history[:3], [200.0, 192.08, 184.473632], rtol=1e-12)
    np.testing.assert_allclose(res.params["w"], [10 * 0.98**10] * 2, rtol=1e-12)
    assert float(res.params["w"][0]) == pytest.approx(8.17073, abs=1e-5)
    assert m.loss(res.params, None) == pytest.approx(133.5215943510189, rel=1e-12)


def _fit(name, **kw):
    m = load(name)
    train_data, test_data = load_dataset("digits", m)
    args = {"batch_size": 64, "epochs": 30, "seed": 0, "progress": False, "validation": test_data}
    args.update(kw)
    return m, train_data, test_data, train(m, train_data, **args)


@pytest.mark.slow
def test_mlp_digits_accuracy():
    _, _, _, res = _fit("mlp_digits", optimizer=Adam(1e-2))
    report("mlp_digits", f"test accuracy {res.val_accuracy[-1]:.4f}", res)
    assert res.val_accuracy[-1] >= 0.95


@pytest.mark.slow
def test_cnn_digits_accuracy():
    _, _, _, res = _fit("cnn_digits", optimizer=Adam(1e-2))
    report("cnn_digits", f"test accuracy {res.val_accuracy[-1]:.4f}", res)
    assert res.val_accuracy[-1] >= 0.97


@pytest.mark.slow
def test_transformer_digits_accuracy():
    """One encoder block over the 8 rows as tokens: row softmax attention and LayerNorm via axis=-1."""
    _, _, _, res = _fit("transformer_digits", optimizer=Adam(1e-2))
    report("transformer_digits", f"test accuracy {res.val_accuracy[-1]:.4f}", res)
    assert res.val_accuracy[-1] >= 0.95


@pytest.mark.slow
def test_rnn_digits_accuracy():
    """A GRU over the 8 rows, kept as a loop over t forward and backward through time."""
    _, _, _, res = _fit("rnn_digits", optimizer=Adam(1e-2))
    report("rnn_digits", f"test accuracy {res.val_accuracy[-1]:.4f}", res)
    assert res.val_accuracy[-1] >= 0.95


@pytest.mark.slow
def test_mlp_bn_digits_accuracy():
    """BatchNorm's training-mode statistics through batch_mean: the gradient couples the samples of a batch."""
    _, _, _, res = _fit("mlp_bn_digits", optimizer=Adam(1e-2))
    report("mlp_bn_digits", f"test accuracy {res.val_accuracy[-1]:.4f}", res)
    assert res.val_accuracy[-1] >= 0.95


def independent_bernoulli_ll(train_x: np.ndarray, test_x: np.ndarray) -> float:
    """Test log-likelihood per image of independent Bernoulli pixels fitted on the training set."""
    p = np.clip(train_x.mean(0), 1e-3, 1 - 1e-3)
    return float(np.mean(np.sum(test_x * np.log(p) + (1 - test_x) * np.log(1 - p), axis=1)))


@pytest.mark.slow
def test_nade_log_likelihood():
    m, tr, te, res = _fit("nade", optimizer=Adam(5e-3))
    ll = m.loss(res.params, te)
    report(
        "nade",
        f"test log-likelihood {ll:.3f} nats/image (independent pixels "
        f"{independent_bernoulli_ll(tr['x'], te['x']):.2f})",
        res,
    )
    assert ll == pytest.approx(res.val_history[-1], rel=1e-9)
    assert ll >= -21.8


@pytest.mark.slow
def test_pixelcnn_log_likelihood():
    """Masked convolutions (zero padding through Max/Min Sum bounds) with parameters shared by all 64 conditionals."""
    m, tr, te, res = _fit("pixelcnn", optimizer=Adam(1e-2))
    ll = m.loss(res.params, te)
    indep = independent_bernoulli_ll(tr["x"].reshape(len(tr["x"]), -1), te["x"].reshape(len(te["x"]), -1))
    report("pixelcnn", f"test log-likelihood {ll:.3f} nats/image (independent pixels {indep:.2f})", res)
    assert ll >= indep + 2.0


@pytest.mark.slow
def test_fvsbn_beats_independent_pixels():
    m, tr, te, res = _fit("fvsbn", optimizer=Adam(5e-3))
    ll = m.loss(res.params, te)
    base = independent_bernoulli_ll(tr["x"], te["x"])
    report("fvsbn", f"test log-likelihood {ll:.3f} nats/image (independent pixels {base:.2f})", res)
    assert ll > base + 1.0


@pytest.mark.slow
def test_vae_negative_elbo():
    m, _, te, res = _fit("vae", optimizer=Adam(1e-3))
    rng = np.random.default_rng(123)
    n = len(te["x"])
    elbos = [m.loss(res.params, {"x": te["x"], "eps": rng.standard_normal((n, 8))}) for _ in range(10)]
    neg_elbo = -float(np.mean(elbos))
    report("vae", f"test -ELBO {neg_elbo:.3f} nats/image (10 draws of eps)", res)
    assert neg_elbo <= 22.0


@pytest.mark.slow
def test_autoencoder_beats_mean_image():
    m, tr, te, res = _fit("autoencoder", optimizer=Adam(1e-2))
    recon = m.loss(res.params, te)
    baseline = float(np.mean((te["x"] - tr["x"].mean(0)) ** 2))
    report("autoencoder", f"test reconstruction MSE {recon:.5f} (mean image {baseline:.5f})", res)
    assert recon < 0.5 * baseline


def test_divergence_on_a_real_spec_keeps_last_good_params():
    from symgrad.errors import TrainingDiverged

    m = load("quadratic")
    with pytest.raises(TrainingDiverged) as info:
        train(m, optimizer=SGD(2.0), batch_size=1, steps=5000, progress=False)  # w <- -3 w: overflows
    exc = info.value
    assert f"step {exc.step}" in str(exc) and exc.epoch == exc.step  # one full-batch step per epoch
    assert np.all(np.isfinite(exc.params["w"]))
    # the parameters of the step before the failing one: the last whose loss was finite
    np.testing.assert_allclose(exc.params["w"], 10.0 * (-3.0) ** (exc.step - 2), rtol=1e-9)
    assert np.isfinite(m.loss(exc.params))


def test_reduction_sum_on_a_generated_module(tmp_path):
    spec = tmp_path / "linsum.yaml"
    spec.write_text((SPECS / "linreg.yaml").read_text().replace("name: linreg", "name: linsum") + "reduction: sum\n")
    m = pytest.importorskip("symgrad.runtime.loader").load(str(spec))
    x = np.linspace(0.0, 1.0, 20)
    data = {"x": x, "y": 2 * x}
    start = {"w": np.array(0.0), "b": np.array(0.0)}
    res = train(
        m,
        data,
        optimizer=SGD(1e-3),
        batch_size=5,
        steps=1,
        params=start,
        shuffle=False,
        progress=False,
        history_per_step=True,
    )
    xb, yb = x[:5], 2 * x[:5]
    np.testing.assert_allclose(float(res.params["w"]), 1e-3 * (20 / 5) * np.sum(2 * yb * xb), rtol=1e-12)
    assert res.step_history[0] == pytest.approx(np.sum(yb**2), rel=1e-12)


def test_vae_resume_and_kl_annealing_are_bit_identical(tmp_path):
    from symgrad.runtime.schedules import linear_ramp

    m = load("vae")
    tr, _ = load_dataset("digits", m)
    tr = {"x": tr["x"][:256]}
    opts = {
        "optimizer": Adam(1e-3),
        "batch_size": 32,
        "progress": False,
        "seed": 5,
        "schedule": {"beta": linear_ramp(0.0, 1.0, 20)},
    }
    full = train(m, tr, epochs=4, **opts)
    ck = tmp_path / "vae.npz"
    train(m, tr, epochs=2, checkpoint=ck, **opts)
    resumed = train(m, tr, epochs=4, checkpoint=ck, resume=True, **opts)
    for k in full.params:
        assert np.array_equal(full.params[k], resumed.params[k])
    assert np.array_equal(full.history, resumed.history)
