"""Bad arguments and files at the API and the CLI: one clear error naming what is wrong, nothing silently accepted.

Every case here was found by a bad-input fuzz campaign (2026-12-04) with the behaviour it had then: a NaN tolerance
that turned `symgrad check` into a pass, schedules that made the learning rate negative, `--resume A --checkpoint
B` that threw A away, a resume that changed the learning rate, raw TypeErrors and tracebacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import symgrad
from symgrad.cli.main import main
from symgrad.errors import DataError, SymgradError, TrainingDiverged, UsageError
from symgrad.runtime import schedules as S

REPO = Path(__file__).resolve().parent.parent
LINREG = str(REPO / "specs" / "linreg.yaml")
VAE = str(REPO / "specs" / "vae.yaml")
RNG = np.random.default_rng(0)
X = RNG.random(20)
DATA = {"x": X, "y": 2 * X + 1}


@pytest.fixture(scope="module")
def linreg():
    return symgrad.load(LINREG)


def _cli(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, list(args))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, list(args))
    finally:
        os.chdir(old)


def _one_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("error:", "/", "<"))]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return lines[-1] if lines else ""


# -- symgrad check ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rtol", ["nan", "-1", "0", "inf"])
def test_check_refuses_a_tolerance_that_is_not_positive_and_finite(rtol):
    """`--rtol nan` printed MISMATCH on every line and exited 0: a check that cannot fail."""
    r = _cli("check", LINREG, "--rtol", rtol)
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"error: --rtol must be a positive finite number, got {float(rtol):g}"]


def test_check_refuses_a_negative_seed_as_usage_not_as_a_failed_check():
    r = _cli("check", LINREG, "--seed", "-1")
    assert r.exit_code == 2 and r.output.strip().startswith("error: ") and "--seed" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_click_usage_errors_are_one_line():
    r = _cli("train", LINREG, "--data", "digits", "--epochs", "-1")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: Invalid value for '--epochs': -1 is not in the range x>=1."]
    r = _cli("nosuchcommand")
    assert r.exit_code == 2 and r.output.strip().splitlines() == ["error: No such command 'nosuchcommand'."]


def test_a_subprocess_usage_error_is_one_line_and_exit_2():
    p = subprocess.run(
        [sys.executable, "-m", "symgrad", "check", LINREG, "--rtol", "nan"], capture_output=True, text=True, cwd=REPO
    )
    assert p.returncode == 2 and (p.stdout + p.stderr).strip().splitlines() == [
        "error: --rtol must be a positive finite number, got nan"
    ]


# -- schedules and constants ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: S.step_decay(10, -1),
        lambda: S.step_decay(10, float("nan")),
        lambda: S.step_decay(0, 0.5),
        lambda: S.step_decay(2.5, 0.5),
        lambda: S.step_decay("a", 0.5),
        lambda: S.inverse_time(-5),
        lambda: S.inverse_time("x"),
        lambda: S.cosine(10, -1),
        lambda: S.cosine(10, float("nan")),
        lambda: S.cosine(0),
        lambda: S.linear_warmup(0),
        lambda: S.linear_warmup(3, "x"),
        lambda: S.linear_ramp(float("nan"), 1, 5),
        lambda: S.linear_ramp(0, 1, 0),
        lambda: S.constant(float("inf")),
    ],
)
def test_schedule_arguments_are_checked_when_made(make):
    with pytest.raises(UsageError):
        make()


@pytest.mark.parametrize("value", [-1.0, float("nan"), "x", None])
def test_an_lr_schedule_value_must_be_a_non_negative_number(linreg, value):
    """A lambda returning -1 trained silently with lr -0.01 (ascending a minimised loss)."""
    with pytest.raises(UsageError, match="step 0"):
        symgrad.train(linreg, DATA, optimizer=symgrad.SGD(0.01), batch_size=5, epochs=1, schedule=lambda s: value)


@pytest.mark.parametrize("spec", ["inverse_time:-5", "step_decay:10:-1", "cosine:-1", "cosine:nan", "warmup:inf"])
def test_cli_schedule_values_are_refused_before_training(tmp_path, spec):
    np.savez(tmp_path / "d.npz", **DATA)
    r = _cli("train", LINREG, "--data", "d.npz", "--epochs", "1", "--batch-size", "5", "--schedule", spec, cwd=tmp_path)
    assert r.exit_code == 2 and f"--schedule '{spec}'" in _one_line(r)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "spec, said",
    [("bogus", "not understood"), ("cosine:x", "'x' is not a number"), ("warmup:inf", "'inf' is not a finite number")],
)
def test_cli_schedule_errors_name_the_option_once_in_its_own_words(tmp_path, spec, said):
    """The option was named twice ("--schedule 'bogus': --schedule 'bogus': ..."), and a word where a number
    belongs was float()'s "could not convert string to float"."""
    np.savez(tmp_path / "d.npz", **DATA)
    r = _cli("train", LINREG, "--data", "d.npz", "--epochs", "1", "--batch-size", "5", "--schedule", spec, cwd=tmp_path)
    line = _one_line(r)
    assert r.exit_code == 2 and line.count("--schedule") == 1 and said in line and "float" not in line


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), None, np.array([1.0, 2.0]), "x"])
def test_a_constant_must_be_a_finite_number(beta):
    """`beta=nan` was reported as "training diverged" (exit 1), blaming the model; None was a raw TypeError."""
    vae = symgrad.load(VAE)
    x = RNG.random((16, 64))
    with pytest.raises(UsageError, match="constant 'beta' must be a finite number"):
        symgrad.train(vae, {"x": x}, optimizer=symgrad.Adam(0.01), batch_size=8, epochs=1, constants={"beta": beta})
    with pytest.raises(UsageError, match="constant 'beta'"):
        vae.loss(vae.init_params(0), {"x": x}, constants={"beta": beta})


def test_constants_must_be_a_dict(linreg):
    with pytest.raises(UsageError, match="constants must be a dict"):
        symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, constants=[1])


# -- train / Trainer arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["shuffle", "progress", "history_per_step", "resume"])
@pytest.mark.parametrize("value", ["no", None, 1])
def test_yes_no_arguments_must_be_bools(linreg, flag, value):
    """`shuffle="no"` shuffled."""
    with pytest.raises(UsageError, match=f"{flag} must be True or False"):
        symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, **{flag: value})


@pytest.mark.parametrize("model", ["specs/linreg.yaml", None, 3])
def test_the_model_must_be_a_loaded_module(model):
    with pytest.raises(UsageError, match="model must be a module returned by symgrad.load"):
        symgrad.train(model, DATA, optimizer="sgd", epochs=1)
    with pytest.raises(UsageError, match="model must be a module returned by symgrad.load"):
        symgrad.Trainer(model, symgrad.SGD(0.1))


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ([1.0, 0.0], UsageError, "params must be a dict"),
        ({"w": np.array(0.0), "b": np.array(0.0), "q": np.array(0.0)}, UsageError, "unknown parameter 'q'"),
        ({"w": np.array(1 + 1j), "b": np.array(0.0)}, DataError, "complex128"),
        ({"w": np.array(True), "b": np.array(False)}, DataError, "bool"),
        ({"w": np.array(np.inf), "b": np.array(0.0)}, DataError, "param 'w' contains NaN or infinite"),
        ({"w": np.array("a"), "b": np.array(0.0)}, DataError, "param 'w' holds"),
    ],
)
def test_starting_parameters_are_checked_like_data(linreg, params, error, match):
    """A complex start was truncated to its real part; an infinite one was reported as a divergence at step 1."""
    with pytest.raises(error, match=match):
        symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, params=params)


def test_a_mix_of_float32_and_float64_parameters_trains_in_float64(linreg):
    """The trainer took the first array's dtype, so {w: float32, b: float64} trained (and came back) in float32,
    while the module's loss/loss_and_grad promote the same dict to float64. Now both promote: float32 only when
    every parameter is float32."""
    for w_dtype, b_dtype, expected in [
        (np.float32, np.float64, np.float64),
        (np.float64, np.float32, np.float64),
        (np.float32, np.float32, np.float32),
    ]:
        params = {"w": np.array(0.5, w_dtype), "b": np.array(0.1, b_dtype)}
        res = symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, params=params, progress=False)
        assert {v.dtype for v in res.params.values()} == {np.dtype(expected)}, (w_dtype, b_dtype)


def test_masked_arrays_with_masked_entries_are_refused(linreg):
    """A masked array's mask was ignored: the values under the mask were trained on without a word."""
    x = np.ma.masked_array(X, mask=X > 0.9)
    with pytest.raises(DataError, match=r"data\['x'\] is a masked array with \d+ masked entries"):
        symgrad.train(linreg, {"x": x, "y": DATA["y"]}, optimizer="sgd", batch_size=5, epochs=1, progress=False)
    with pytest.raises(DataError, match="param 'w' is a masked array"):
        linreg.loss({"w": np.ma.masked_array([0.5], mask=[True]).reshape(()), "b": 0.0}, DATA)
    # nothing masked: read as the plain array it holds
    plain = symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, progress=False, shuffle=False)
    masked = symgrad.train(
        linreg,
        {"x": np.ma.masked_array(X), "y": DATA["y"]},
        optimizer="sgd",
        batch_size=5,
        epochs=1,
        progress=False,
        shuffle=False,
    )
    assert plain.params["w"] == masked.params["w"]


def test_trainer_seed_and_init_params_arguments(linreg):
    with pytest.raises(UsageError, match="seed"):
        symgrad.Trainer(linreg, symgrad.SGD(0.1), seed=-1)
    with pytest.raises(UsageError, match="seed"):
        linreg.init_params(-1)
    for dtype in (np.int32, "float16"):
        with pytest.raises(UsageError, match="float32 or float64"):
            linreg.init_params(0, dtype=dtype)


@pytest.mark.parametrize(("path", "match"), [(3, "must be a file path"), ("", "empty"), (".", "is a folder")])
def test_a_checkpoint_path_is_checked_before_the_first_step(linreg, path, match):
    """These failed with a raw OSError after the first epoch's work."""
    with pytest.raises(UsageError, match=match):
        symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, checkpoint=path)


def test_a_checkpoint_under_a_file_is_refused_up_front(linreg, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, checkpoint=str(tmp_path / "f" / "c.npz"))


def test_load_state_dict_checks_every_entry_and_changes_nothing_on_error(linreg):
    t = symgrad.Trainer(linreg, symgrad.SGD(0.1))
    t.step({"x": X[:5], "y": DATA["y"][:5]})
    sd = t.state_dict()
    theta = t.theta.copy()
    bad = [
        ({}, "missing"),
        (None, "must be a dict"),
        ({**sd, "theta": None}, "theta"),
        ({**sd, "theta": np.full(2, np.nan)}, "NaN"),
        ({**sd, "step": "x"}, "step"),
        ({**sd, "step": -1}, "step"),
        ({**sd, "rng": "x"}, "rng"),
        ({**sd, "rng": None}, "rng"),
    ]
    for d, match in bad:
        with pytest.raises(UsageError, match=match):
            t.load_state_dict(d)
        assert np.array_equal(t.theta, theta) and t.step_count == 1
    t.load_state_dict(sd)


def test_module_functions_refuse_empty_batches_and_missing_params(linreg):
    p = linreg.init_params(0)
    empty = {"x": np.zeros(0), "y": np.zeros(0)}
    for fn in (linreg.loss, linreg.loss_and_grad, linreg.forward):
        with pytest.raises(DataError, match="empty"):
            fn(p, empty)
    with pytest.raises(DataError, match="params is missing 'w'"):
        linreg.forward({}, {"x": X})
    with pytest.raises(DataError, match="params must be a dict"):
        linreg.loss(None, DATA)
    with pytest.raises(UsageError, match="unknown constant 'zz'"):
        linreg.forward(p, {"x": X}, constants={"zz": 1})


def test_load_and_derive_take_a_path():
    with pytest.raises(UsageError):
        symgrad.load(None)
    with pytest.raises(UsageError):
        symgrad.derive(None)
    with pytest.raises(UsageError, match="wrt"):
        symgrad.derive(LINREG, wrt=3)
    with pytest.raises(UsageError, match="^wrt 'nope'"):
        symgrad.derive(LINREG, wrt="nope")


# -- resume -----------------------------------------------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    np.savez(tmp_path / "d.npz", **DATA)
    return tmp_path


def _train(run_dir, *extra: str):
    base = ("train", LINREG, "--data", "d.npz", "--batch-size", "5", "--no-progress", "--out", "o.npz")
    return _cli(*base, *extra, cwd=run_dir)


def test_resume_and_checkpoint_naming_different_files_is_refused(run_dir):
    """--resume A --checkpoint B restarted from scratch: A was never read."""
    assert _train(run_dir, "--epochs", "1", "--checkpoint", "ck.npz").exit_code == 0
    r = _train(run_dir, "--epochs", "2", "--resume", "ck.npz", "--checkpoint", "ck2.npz")
    assert r.exit_code == 2 and "name different files" in _one_line(r)
    assert not (run_dir / "ck2.npz").exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("--lr", "0.5"), "optimizer="),
        (("--optimizer", "sgd"), "optimizer="),
        (("--clip-norm", "0.001"), "clip_norm="),
        (("--schedule", "inverse_time:3"), "schedule"),
    ],
)
def test_resume_refuses_changed_settings(run_dir, extra, match):
    """A resume with another lr, optimizer, clip norm or schedule ran on and matched neither uninterrupted run."""
    assert _train(run_dir, "--epochs", "1", "--checkpoint", "ck.npz").exit_code == 0
    r = _train(run_dir, "--epochs", "2", "--resume", "ck.npz", *extra)
    assert r.exit_code == 2 and match in _one_line(r) and "cannot resume identically" in r.output


def test_resume_for_more_epochs_under_the_same_schedule_is_allowed(run_dir):
    assert _train(run_dir, "--epochs", "1", "--checkpoint", "ck.npz", "--schedule", "step_decay:3:0.5").exit_code == 0
    r = _train(run_dir, "--epochs", "3", "--resume", "ck.npz", "--schedule", "step_decay:3:0.5")
    assert r.exit_code == 0, r.output


def test_a_divergence_right_after_resume_keeps_what_the_uninterrupted_run_keeps(linreg, tmp_path):
    """The checkpoint holds the parameters after step 2, whose step-3 loss is inf; the resumed run used to keep (and
    save) exactly those, saying "no step had a finite loss". It now keeps step 2's, as the uninterrupted run does."""
    kw = dict(optimizer=symgrad.SGD(1e100), batch_size=10, epochs=3, progress=False)
    with pytest.raises(TrainingDiverged) as whole:
        symgrad.train(linreg, DATA, **kw)
    ck = str(tmp_path / "ck.npz")
    with pytest.raises(TrainingDiverged):
        symgrad.train(linreg, DATA, checkpoint=ck, **kw)
    with pytest.raises(TrainingDiverged) as resumed:
        symgrad.train(linreg, DATA, checkpoint=ck, resume=True, **kw)
    assert str(resumed.value) == str(whole.value) and "kept the parameters of step 2" in str(whole.value)
    for k, v in whole.value.params.items():
        assert np.array_equal(resumed.value.params[k], v)


# -- CLI files --------------------------------------------------------------------------------------------------
def test_params_files_are_checked_and_named(run_dir, linreg):
    np.savez(run_dir / "dx.npz", x=X[:5])
    np.savez(run_dir / "p_str.npz", w=np.array("a"), b=np.array(0.0))
    np.savez(run_dir / "p_nan.npz", w=np.array(np.nan), b=np.array(0.0))
    for path, match in [
        ("d.npz", "--params d.npz: array 'x' is not a parameter"),
        ("p_str.npz", "--params p_str.npz: parameter 'w' holds"),
        ("p_nan.npz", "--params p_nan.npz: parameter 'w' contains NaN"),
        ("nope.npz", "--params: no such file"),
    ]:
        r = _cli("predict", LINREG, "--params", path, "--data", "dx.npz", cwd=run_dir)
        assert r.exit_code == 2 and match in _one_line(r), r.output
    r = _train(run_dir, "--epochs", "1", "--init", "nope.npz")
    assert r.exit_code == 2 and "--init: no such file" in _one_line(r)


def test_predict_and_evaluate_refuse_non_finite_data(run_dir):
    np.savez(run_dir / "p.npz", w=np.array(1.0), b=np.array(0.0))
    np.savez(run_dir / "dx_nan.npz", x=np.array([1.0, np.nan]), y=np.array([1.0, 2.0]))
    for cmd in ("predict", "evaluate"):
        r = _cli(cmd, LINREG, "--params", "p.npz", "--data", "dx_nan.npz", cwd=run_dir)
        assert r.exit_code == 2 and "dx_nan.npz: array 'x' contains NaN" in _one_line(r), r.output


def test_a_spec_error_under_train_starts_with_file_and_line(run_dir):
    (run_dir / "bad.yaml").write_text("name: t\nparams: {w: []}\nloss: q*w\n")
    r = _cli("train", "bad.yaml", "--data", "d.npz", cwd=run_dir)
    assert r.exit_code == 2 and r.output.strip().splitlines() == ["bad.yaml:3: undeclared name 'q'"]


@pytest.mark.parametrize("flag", ["--log", "--plot", "--checkpoint", "--out"])
def test_output_paths_under_a_file_are_refused_before_training(run_dir, flag):
    name = "m.png" if flag == "--plot" else "m.npz"
    r = _train(run_dir, "--epochs", "1", flag, f"d.npz/{name}")
    assert r.exit_code == 2 and "is not a folder" in _one_line(r), r.output
    assert "trained" not in r.output


def test_the_csv_log_is_written_atomically_not_through_a_planted_link(run_dir):
    victim = run_dir / "victim.txt"
    victim.write_text("orig")
    (run_dir / ".m.csv.tmp").symlink_to(victim)
    assert _train(run_dir, "--epochs", "1", "--log", "m.csv").exit_code == 0
    assert victim.read_text() == "orig" and (run_dir / "m.csv").read_text().startswith("epoch,")


def test_every_error_here_is_a_symgrad_error():
    """The API's bad-input errors share one base class, so a caller can catch them all."""
    assert issubclass(UsageError, SymgradError) and issubclass(DataError, SymgradError)


# -- data files and the environment -----------------------------------------------------------------------------
def _npz_of_members(path: Path, members: list[tuple[str, np.ndarray]], version=None) -> None:
    import io
    import warnings
    import zipfile

    from numpy.lib import format as npy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name: that is the point of one case
        with zipfile.ZipFile(path, "w") as z:
            for name, arr in members:
                buf = io.BytesIO()
                npy.write_array(buf, arr, version=version)
                z.writestr(f"{name}.npy", buf.getvalue())


def test_a_version_3_npy_member_is_read(run_dir):
    """numpy writes .npy 3.0 for utf-8 headers; it was reported as a "damaged .npz file" (a private numpy reader
    symgrad called is gone in numpy 2.4)."""
    _npz_of_members(run_dir / "v3.npz", [("x", X), ("y", DATA["y"])], version=(3, 0))
    r = _train(run_dir, "--epochs", "1", "--data", "v3.npz")
    assert r.exit_code == 0, r.output


def test_an_archive_with_a_member_twice_is_refused(run_dir):
    """np.load silently takes the last of two `x.npy` members."""
    _npz_of_members(run_dir / "dup.npz", [("x", X), ("x", X[::-1]), ("y", DATA["y"])])
    r = _train(run_dir, "--epochs", "1", "--data", "dup.npz")
    assert r.exit_code == 2 and "array 'x' appears twice" in _one_line(r)


def test_a_mistyped_data_size_limit_is_refused(run_dir, monkeypatch):
    monkeypatch.setenv("SYMGRAD_MAX_DATA_BYTES", "abc")
    r = _train(run_dir, "--epochs", "1")
    assert r.exit_code == 2 and "$SYMGRAD_MAX_DATA_BYTES must be a whole number" in _one_line(r)


def test_a_cache_that_is_a_file_is_one_line(run_dir, monkeypatch):
    spec = run_dir / "linreg_copy.yaml"  # not in generated/: it must be built into the cache
    spec.write_text(Path(LINREG).read_text().replace("name: linreg", "name: linreg_copy"))
    monkeypatch.setenv("SYMGRAD_CACHE", str(run_dir / "d.npz"))
    r = _cli("train", str(spec), "--data", "d.npz", "--epochs", "1", "--batch-size", "5", cwd=run_dir)
    assert r.exit_code == 2 and "($SYMGRAD_CACHE)" in _one_line(r), r.output


def test_a_checkpoint_step_must_be_its_epochs_last(linreg, tmp_path):
    """A checkpoint is written at an epoch's end; step 3 at the end of epoch 1 (4 steps per epoch) was accepted
    and shifted every later step's schedule and Adam correction by one."""
    ck = tmp_path / "ck.npz"
    kw = dict(optimizer="adam", batch_size=5, progress=False, checkpoint=str(ck))
    symgrad.train(linreg, DATA, epochs=1, **kw)
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(ck, **{**arrays, "step": np.int64(3)})
    with pytest.raises(UsageError, match="step 3 of epoch 1"):
        symgrad.train(linreg, DATA, epochs=3, resume=True, **kw)
    np.savez(ck, **{**arrays, "log_history": np.array([np.nan])})
    with pytest.raises(UsageError, match="'log_history' holds NaN"):
        symgrad.train(linreg, DATA, epochs=3, resume=True, **kw)
    np.savez(ck, **{**arrays, "theta": arrays["theta"].astype(np.float32)})
    with pytest.raises(UsageError, match="'theta' is float32 but 'opt_state' is float64"):
        symgrad.train(linreg, DATA, epochs=3, resume=True, **kw)
    np.savez(ck, **arrays)
    assert symgrad.train(linreg, DATA, epochs=3, resume=True, **kw).steps == 12


def test_data_file_problems_name_the_file(run_dir):
    np.savez(run_dir / "d_nan.npz", x=X * np.nan, y=X)
    np.savez(run_dir / "d_len.npz", x=X, y=X[:5])
    np.savez(run_dir / "d_test.npz", x=X, y=X, x_test=X[:4], y_test=X[:3])
    for path, match in [
        ("d_nan.npz", "d_nan.npz['x'] contains NaN"),
        ("d_len.npz", "d_len.npz['y'] has leading shape (5,)"),
        ("d_test.npz", "d_test.npz test set['y'] has leading shape (3,)"),
    ]:
        r = _train(run_dir, "--epochs", "1", "--data", path)
        assert r.exit_code == 2 and match in _one_line(r), r.output


def test_train_needs_no_data_for_a_spec_without_inputs(tmp_path):
    r = _cli("train", str(REPO / "specs" / "quadratic.yaml"), "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    r = _cli("train", LINREG, "--epochs", "1", cwd=tmp_path)
    assert r.exit_code == 2 and _one_line(r) == "error: --data is needed: linreg reads the inputs x, y"


@pytest.mark.slow
def test_an_unwritable_cache_never_puts_kernels_into_the_package(run_dir):
    """With $SYMGRAD_CACHE a file, Numba's next cache locator wrote symgrad's kernels into the installed package's
    __pycache__ (found when a test of this file left them there); they now go to a scratch folder."""
    env = {**os.environ, "SYMGRAD_CACHE": str(run_dir / "d.npz"), "SYMGRAD_WARMUP": "0"}
    env.pop("NUMBA_CACHE_DIR", None)
    before = set((REPO / "symgrad").rglob("*.nb[ic]")) | set((REPO / "generated").rglob("*.nb[ic]"))
    p = subprocess.run(
        [sys.executable, "-m", "symgrad", "train", LINREG, "--data", "d.npz", "--epochs", "1", "--batch-size", "5"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    after = set((REPO / "symgrad").rglob("*.nb[ic]")) | set((REPO / "generated").rglob("*.nb[ic]"))
    assert after == before, sorted(after - before)[:5]


# -- round 2: build, derive, reading specs, interrupts ----------------------------------------------------------
def test_a_spec_path_that_is_a_device_is_refused_not_read(tmp_path):
    """A link to /dev/zero hung `derive` and `symgrad.load` while filling memory (4.8 GB in 8 s)."""
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    r = _cli("derive", "zero.yaml", cwd=tmp_path)
    assert r.exit_code == 2 and r.output.strip() == "zero.yaml:1: spec is not a regular file"
    with pytest.raises(symgrad.SpecError, match="not a regular file"):
        symgrad.load(str(tmp_path / "zero.yaml"))


def _spec(tmp_path: Path, name: str, loss: str = "w**2 + 1") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nparams: {{w: []}}\nloss: {loss}\n")
    return path


def test_build_refuses_two_specs_writing_one_file_across_backends(tmp_path):
    """Spec A's CUDA twin and spec A_cuda's CPU module are both A_cuda.py: one overwrote the other."""
    _spec(tmp_path, "A"), _spec(tmp_path, "A_cuda", "w**4")
    r = _cli("build", "A.yaml", "A_cuda.yaml", "--out", "o", cwd=tmp_path)
    assert r.exit_code == 2 and "would both write" in r.output and "A_cuda.py" in r.output
    assert not (tmp_path / "o").exists()


def test_build_takes_a_spec_listed_twice_once(tmp_path):
    _spec(tmp_path, "A")
    r = _cli("build", "A.yaml", "./A.yaml", "A.yaml", "--out", "o", cwd=tmp_path)
    assert r.exit_code == 0 and r.output.count("wrote") == 1, r.output


def test_build_refuses_an_empty_out(tmp_path):
    _spec(tmp_path, "A")
    r = _cli("build", "A.yaml", "--out", "", cwd=tmp_path)
    assert r.exit_code == 2 and "--out must name a folder" in _one_line(r)
    assert not (tmp_path / "A.py").exists()


def test_build_replaces_and_check_reports_a_damaged_or_odd_output(tmp_path):
    """A non-UTF-8 generated file was a UnicodeDecodeError traceback in build and build --check; a folder in its
    place a traceback in --check."""
    _spec(tmp_path, "A")
    assert _cli("build", "A.yaml", "--out", "o", cwd=tmp_path).exit_code == 0
    (tmp_path / "o" / "A.py").write_bytes(b"\xff\xfe garbage")
    r = _cli("build", "A.yaml", "--out", "o", "--check", cwd=tmp_path)
    assert r.exit_code == 1 and "differ" in r.output and "Traceback" not in r.output
    r = _cli("build", "A.yaml", "--out", "o", cwd=tmp_path)
    assert r.exit_code == 0 and (tmp_path / "o" / "A.py").read_text().startswith("# Generated by symgrad")
    (tmp_path / "o2" / "A.py").mkdir(parents=True)
    r = _cli("build", "A.yaml", "--out", "o2", "--check", cwd=tmp_path)
    assert r.exit_code == 1 and "differ" in r.output


def test_build_check_of_the_repo_from_another_folder(tmp_path):
    """Headers name the spec relative to the project (the folder above --out), so --check agrees from anywhere."""
    specs = sorted(str(p) for p in (REPO / "specs").glob("*.yaml"))
    r = _cli("build", "--check", "--out", str(REPO / "generated"), *specs, cwd=tmp_path)
    assert r.exit_code == 0, r.output[-2000:]


@pytest.mark.parametrize("render", ["d.npz/x.html", "/proc/x.html", ""])
def test_derive_render_paths_are_checked_first(run_dir, render):
    r = _cli("derive", LINREG, "--render", render, cwd=run_dir)
    assert r.exit_code == 2 and _one_line(r).startswith("error: ") and "Traceback" not in r.output
    assert "\\frac" not in r.output  # refused before the derivation was printed


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc, where files cannot be made")
@pytest.mark.parametrize("flag", ["--log", "--plot"])
def test_a_log_or_plot_folder_that_refuses_files_is_found_before_training(run_dir, flag):
    """/proc passes os.access for root; a bad --log stopped the run after epoch 1 with nothing saved."""
    r = _train(run_dir, "--epochs", "1", flag, "/proc/x.png" if flag == "--plot" else "/proc/x.csv")
    assert r.exit_code == 2 and "cannot write" in _one_line(r) and "epoch 1" not in r.output


def test_comm_must_be_a_communicator(linreg):
    for comm in ("world", 3):
        with pytest.raises(UsageError, match="mpi4py communicator"):
            symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, comm=comm)


def test_a_checkpoint_has_the_permissions_of_every_other_output(linreg, tmp_path):
    """Checkpoints kept mkstemp's 0600; on a shared file system another user's ranks could not read them."""
    ck = tmp_path / "ck.npz"
    symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=1, progress=False, checkpoint=str(ck))
    mask = os.umask(0)
    os.umask(mask)
    assert ck.stat().st_mode & 0o777 == 0o666 & ~mask


def test_resume_with_a_log_keeps_the_earlier_epochs(run_dir):
    """The metrics CSV of a resumed run held only the resumed epochs."""
    assert _train(run_dir, "--epochs", "2", "--checkpoint", "ck.npz", "--log", "a.csv").exit_code == 0
    assert _train(run_dir, "--epochs", "4", "--resume", "ck.npz", "--log", "b.csv").exit_code == 0
    assert _train(run_dir, "--epochs", "4", "--log", "c.csv").exit_code == 0
    assert (run_dir / "b.csv").read_text() == (run_dir / "c.csv").read_text()
    assert len((run_dir / "b.csv").read_text().splitlines()) == 5


@pytest.mark.slow
def test_ctrl_c_saves_the_parameters_and_exits_130(run_dir):
    """Ctrl-C exited 1 (the divergence status) with a blank line and `error: aborted`, and saved nothing."""
    import signal
    import time

    env = {**os.environ, "SYMGRAD_WARMUP": "0"}
    cmd = [sys.executable, "-m", "symgrad", "train", str(REPO / "specs" / "mlp_digits.yaml"), "--data", "digits"]
    cmd += ["--epochs", "100000", "--batch-size", "32", "--no-progress", "--out", "ci.npz"]
    p = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until the first epoch line: the kernels are compiled, training runs
        line = p.stdout.readline()
        if line.startswith("epoch ") or not line:
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted at step ") and "saved to ci.npz" in lines[0]
    with np.load(run_dir / "ci.npz") as z:
        assert set(z.files) == {n for n, _ in symgrad.load(str(REPO / "specs" / "mlp_digits.yaml")).PARAMS}


def test_an_interrupt_anywhere_in_an_epoch_becomes_training_interrupted(linreg):
    """Ctrl-C inside a compiled call on the main thread (an evaluation's forward pass) surfaces as a SystemError
    caused by the KeyboardInterrupt (seen once in CI as a traceback, exit 1); both forms stop training the same way,
    and any other SystemError still propagates."""
    from symgrad.errors import TrainingInterrupted

    def interrupt(info):
        raise KeyboardInterrupt

    def interrupt_in_kernel(info):
        raise SystemError("CPUDispatcher returned a result with an exception set") from KeyboardInterrupt()

    def interrupt_in_nested_kernels(info):  # one SystemError per nested compiled call, the interrupt at the root
        try:
            interrupt_in_kernel(info)
        except SystemError as exc:
            raise SystemError("_numba_unpickle returned a result with an exception set") from exc

    def broken(info):
        raise SystemError("something else")

    for callback in (interrupt, interrupt_in_kernel, interrupt_in_nested_kernels):
        with pytest.raises(TrainingInterrupted) as info:
            symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=3, progress=False, callback=callback)
        assert info.value.step == 4 and set(info.value.params) == {"w", "b"}
        assert str(info.value) == "interrupted at step 4 (epoch 1)"
    with pytest.raises(SystemError, match="something else"):
        symgrad.train(linreg, DATA, optimizer="sgd", batch_size=5, epochs=3, progress=False, callback=broken)


def test_schedules_import_as_a_module():
    """`from symgrad.schedules import cosine` failed (ModuleNotFoundError) though `symgrad.schedules.cosine` worked."""
    from symgrad.schedules import cosine

    assert symgrad.schedules is S and cosine is S.cosine
