"""`symgrad train` through click's CliRunner, on the hand-written linreg double."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from symgrad.cli import train as cli_train

sys.path.insert(0, str(Path(__file__).parent))
import handmade_linreg  # noqa: E402


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_train, "_load_model", lambda path: handmade_linreg)
    monkeypatch.chdir(tmp_path)  # train saves to runs/<name>/params.npz by default: not into the checkout
    spec = tmp_path / "handmade.yaml"
    spec.write_text("name: handmade_linreg\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = x @ [1.0, 2.0, 3.0]
    np.savez(tmp_path / "data.npz", x=x[:64], y=y[:64], x_test=x[64:], y_test=y[64:])
    return tmp_path, spec


def invoke(*args):
    return CliRunner().invoke(cli_train.train_command, [str(a) for a in args])


def test_train_prints_epochs_and_saves(setup):
    tmp, spec = setup
    out, plot = tmp / "p.npz", tmp / "loss.png"
    res = invoke(
        spec,
        "--data",
        tmp / "data.npz",
        "--epochs",
        3,
        "--batch-size",
        16,
        "--lr",
        0.05,
        "--out",
        out,
        "--plot",
        plot,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3  loss ") and "test_loss" in lines[0]
    assert set(np.load(out).files) == {"w", "b"}
    assert plot.stat().st_size > 1000


def test_resume_continues_to_same_params(setup):
    tmp, spec = setup
    common = ["--data", tmp / "data.npz", "--batch-size", 16, "--no-progress", "--optimizer", "momentum"]
    assert invoke(spec, *common, "--epochs", 4, "--out", tmp / "full.npz").exit_code == 0
    ck = tmp / "ck.npz"
    assert invoke(spec, *common, "--epochs", 2, "--checkpoint", ck).exit_code == 0
    res = invoke(spec, *common, "--epochs", 4, "--resume", ck, "--out", tmp / "resumed.npz")
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp / "full.npz")["w"], np.load(tmp / "resumed.npz")["w"])
    assert invoke(spec, *common, "--resume", tmp / "missing.npz").exit_code == 2


def test_divergence_exits_1_naming_the_step(setup):
    tmp, spec = setup
    res = invoke(
        spec,
        "--data",
        tmp / "data.npz",
        "--optimizer",
        "sgd",
        "--lr",
        50,
        "--epochs",
        100,
        "--batch-size",
        16,
        "--no-progress",
    )
    assert res.exit_code == 1
    assert "diverged at step" in res.output


def test_data_error_exits_2(setup):
    tmp, spec = setup
    np.savez(tmp / "bad.npz", x=np.zeros((10, 2)), y=np.zeros(10))
    res = invoke(spec, "--data", tmp / "bad.npz", "--no-progress")
    assert res.exit_code == 2
    assert "bad.npz: array 'x' has shape (10, 2), expected (N, 3)" in res.output
    assert "Traceback" not in res.output
    assert invoke(spec, "--data", "imagenet", "--no-progress").exit_code == 2


def test_device_cuda_without_gpu_is_one_clear_line():
    """No GPU in CI: asking for CUDA names what is missing and exits 2 before reading any data."""
    import os

    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda.is_available():
        pytest.skip("a (simulated) GPU is present")
    from symgrad.cli.main import main

    r = CliRunner().invoke(main, ["train", "specs/linreg.yaml", "--data", "digits", "--device", "cuda"])
    assert r.exit_code == 2
    assert "CUDA requested but no GPU/driver found" in r.output and "Traceback" not in r.output


def test_plot_path_is_checked_before_training_and_its_folder_made(setup):
    tmp, spec = setup
    common = [spec, "--data", tmp / "data.npz", "--epochs", 2, "--no-progress"]
    res = invoke(*common, "--plot", tmp / "curve.txt")
    assert res.exit_code == 2 and "--plot must end in" in res.output
    assert not any(ln.startswith("epoch ") for ln in res.output.splitlines())  # refused before any step
    res = invoke(*common, "--plot", tmp / "new" / "dir" / "curve.svg")
    assert res.exit_code == 0, res.output
    assert (tmp / "new" / "dir" / "curve.svg").read_text().lstrip().startswith("<?xml")


def test_a_classifier_without_held_out_data_still_reports_its_accuracy(tmp_path, monkeypatch):
    """API.md: train prints the loss and, for classifiers, the accuracy. Epoch lines carry accuracy only next to a
    held-out set, so a data file without `x_test` (and no --val-split) printed none at all."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 2))
    y = np.eye(2)[(x[:, 0] > 0).astype(int)]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = tmp_path / "clf.yaml"
    spec.write_text(
        "name: clf\ninputs: {x: [2], y: [2]}\nparams: {W: {shape: [2, 2], init: zeros}}\n"
        "forward:\n  z: W @ x\nloss: softmax_cross_entropy(z, y)\n"
    )
    res = invoke(spec, "--data", tmp_path / "d.npz", "--epochs", 20, "--batch-size", 16, "--lr", 0.1, "--no-progress")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("train: "))
    assert float(line.split("accuracy ")[1]) > 0.9  # a separable problem, learnt
