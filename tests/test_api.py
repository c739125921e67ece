"""The Python API a user meets first: arguments validated in one line, optimizers by name, defaults, `dir()`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symgrad
from symgrad.errors import UsageError

sys.path.insert(0, str(Path(__file__).parent))
import handmade_concave  # noqa: E402
import handmade_linreg  # noqa: E402

X = np.random.default_rng(0).normal(size=(80, 3))
DATA = {"x": X, "y": X @ np.array([1.0, 2.0, 3.0])}


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: symgrad.Adam("1e-3"), "Adam: lr must be a number, got str '1e-3'"),
        (lambda: symgrad.SGD("0.1"), "SGD: lr must be a number, got str '0.1'"),
        (lambda: symgrad.SGD(0.1, momentum="0.9"), "SGD: momentum must be a number"),
        (lambda: symgrad.SGD(0.1, nesterov="yes"), "SGD: nesterov must be True or False"),
        (lambda: symgrad.Adam(float("nan")), "Adam: lr must be finite"),
        (lambda: symgrad.Adam(1e-3, beta1=1.5), "beta1 and beta2 must be in [0, 1)"),
        (lambda: symgrad.Adam(1e-3, eps=0), "eps must be positive"),
        (lambda: symgrad.SGD(-1), "SGD: lr must be positive"),
    ],
)
def test_optimizer_arguments_are_one_clear_line(make, needle):
    with pytest.raises(UsageError) as info:
        make()
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # still catchable as before


def test_an_optimizer_by_name_like_the_cli():
    by_name = symgrad.train(handmade_linreg, DATA, optimizer="adam", batch_size=16, epochs=2, progress=False)
    by_obj = symgrad.train(handmade_linreg, DATA, optimizer=symgrad.Adam(1e-3), batch_size=16, epochs=2, progress=False)
    for k in by_obj.params:
        assert np.array_equal(by_name.params[k], by_obj.params[k])
    for name in ("sgd", "Momentum", "nesterov"):
        symgrad.train(handmade_linreg, DATA, optimizer=name, batch_size=16, epochs=1, progress=False)
    with pytest.raises(UsageError, match="unknown optimizer 'adagrad'"):
        symgrad.train(handmade_linreg, DATA, optimizer="adagrad", epochs=1, progress=False)
    with pytest.raises(UsageError, match="optimizer must be symgrad.SGD"):
        symgrad.train(handmade_linreg, DATA, optimizer=0.1, epochs=1, progress=False)


def test_batch_size_defaults_to_64_and_is_ignored_without_inputs():
    res = symgrad.train(handmade_concave, optimizer=symgrad.SGD(0.01), steps=10, progress=False)
    assert res.steps == 10
    res = symgrad.train(handmade_linreg, DATA, optimizer=symgrad.SGD(0.01), epochs=1, progress=False)
    assert res.steps == 1  # 80 // 64


def test_dir_lists_the_public_api():
    names = dir(symgrad)
    for name in (
        "load",
        "train",
        "Trainer",
        "TrainResult",
        "SGD",
        "Adam",
        "schedules",
        "SymgradError",
        "DataError",
        "load_dataset",
    ):
        assert name in names
    out = subprocess.run(
        [sys.executable, "-c", "import symgrad; print(dir(symgrad))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert "'train'" in out.stdout and "'Adam'" in out.stdout


def test_the_documented_parameters_only_call_on_a_real_spec():
    model = symgrad.load(str(Path(__file__).parent.parent / "specs" / "quadratic.yaml"))
    res = symgrad.train(model, optimizer=symgrad.SGD(0.01), steps=10, progress=False)
    assert res.steps == 10 and np.all(np.isfinite(res.history))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"clip_norm": "1"}, "clip_norm must be a positive number, got str '1'"),
        ({"clip_norm": -1.0}, "clip_norm must be positive"),
        ({"callback": 3}, "callback must be callable"),
        ({"epochs": 1.5}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"schedule": 3}, "schedule must be a callable"),
        ({"constants": {"nope": 1.0}}, "unknown constant 'nope'"),
        ({"device": "tpu"}, "device must be one of 'cpu', 'cuda'"),
    ],
)
def test_train_arguments_are_one_clear_line(kwargs, needle):
    args = {"optimizer": "sgd", "batch_size": 16, "epochs": 1, "progress": False, **kwargs}
    with pytest.raises(UsageError) as info:
        symgrad.train(handmade_linreg, DATA, **args)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_trainer_takes_an_optimizer_by_name():
    tr = symgrad.Trainer(handmade_linreg, "adam")
    assert isinstance(tr.optimizer, symgrad.Adam)
