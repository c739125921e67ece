"""Checkpoints carry the spec's digest and are validated on resume; a damaged file is one line, never a traceback."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from symgrad.errors import SymgradError, UsageError
from symgrad.runtime.optim import SGD
from symgrad.runtime.training import train

sys.path.insert(0, str(Path(__file__).parent))
import handmade_linreg  # noqa: E402

RNG = np.random.default_rng(1)
X = RNG.normal(size=(48, 3))
DATA = {"x": X, "y": X @ np.array([1.0, -2.0, 0.5])}
OPTS = {"optimizer": SGD(0.05), "batch_size": 16, "progress": False}


def variant(module, **overrides):
    ns = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
    for key, value in overrides.items():
        setattr(ns, key, value)
    return ns


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ck.npz"
    train(handmade_linreg, DATA, epochs=2, checkpoint=path, **OPTS)
    return path


def resume(path, model=handmade_linreg, epochs=4):
    return train(model, DATA, epochs=epochs, checkpoint=path, resume=True, **OPTS)


def rewrite(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def one_line_error(fn) -> str:
    with pytest.raises(UsageError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text and info.value.exit_code == 2
    return text


def test_resume_is_identical_and_the_checkpoint_names_the_spec(ckpt):
    full = train(handmade_linreg, DATA, epochs=4, **OPTS)
    res = resume(ckpt)
    for k in full.params:
        assert np.array_equal(full.params[k], res.params[k])
    with np.load(ckpt) as z:
        meta = json.loads(str(z["meta"]))
    assert len(meta["spec"]) == 16 and meta["model"] == "handmade_linreg"


def test_a_different_spec_with_the_same_name_and_size_is_refused(ckpt):
    other = variant(handmade_linreg, SPEC={**handmade_linreg.SPEC, "outputs": ["yhat", "other"]})
    text = one_line_error(lambda: resume(ckpt, other))
    assert "was written with spec=" in text and "a different spec" in text


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"epoch": np.int64(-3)}, "epoch -3 is negative"),
        ({"epoch": np.int64(10**6)}, "at epoch 1000000, past this run's 4 epochs"),
        ({"step": np.int64(-10)}, "step -10 is negative"),
        ({"step": np.int64(2)}, "at step 2 of epoch 2, impossible with 3 steps per epoch"),
        ({"step": np.float64(6.0)}, "'step' must be one integer"),
        ({"meta": None}, "not a symgrad checkpoint, missing 'meta'"),
        ({"meta": np.array("{not json")}, "'meta' is not valid JSON"),
        ({"meta": np.array("[1, 2]")}, "'meta' must be a JSON object"),
        ({"rng": np.array('{"a": 1}')}, "'rng' is not a NumPy generator state"),
        ({"theta": np.zeros((2, 2))}, "'theta' must be a 1-d float array"),
        ({"theta": np.full(4, np.nan)}, "NaN or infinite"),
        ({"opt_state": np.zeros((3, 4))}, "'opt_state' must be float64 of shape (2, 4)"),
        ({"log_history": np.array([1.0])}, "1 epochs logged but it claims epoch 2"),
    ],
)
def test_tampered_checkpoints_are_refused_in_one_line(ckpt, changes, needle):
    rewrite(ckpt, **changes)
    assert needle in one_line_error(lambda: resume(ckpt))


def test_an_old_format_checkpoint_is_refused(ckpt):
    with np.load(ckpt) as z:
        meta = json.loads(str(z["meta"]))
    meta.pop("format")
    rewrite(ckpt, meta=np.array(json.dumps(meta)))
    assert "written by another symgrad version" in one_line_error(lambda: resume(ckpt))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "the file is empty"),
        (b"PK\x03\x04garbage", "damaged .npz file"),
        (b"hello world", "is not an .npz file"),
        (b"\x93NUMPY\x01\x00", "is a single .npy array"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, needle):
    path = tmp_path / "ck.npz"
    path.write_bytes(content)
    assert needle in one_line_error(lambda: resume(path))


def test_a_crc_error_is_one_line(ckpt):
    raw = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as zf:
        info = zf.getinfo("theta.npy")
    at = info.header_offset + 30 + len(info.filename) + 128 + 8  # inside theta's data
    raw[at] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    assert "Bad CRC-32" in one_line_error(lambda: resume(ckpt))


def test_fuzzed_checkpoints_never_raise_a_traceback(ckpt):
    """Truncations and byte flips: each either resumes or is refused with one SymgradError line."""
    good = ckpt.read_bytes()
    rng = np.random.default_rng(0)
    cases = [good[:n] for n in sorted(set(rng.integers(0, len(good), 60).tolist()))]
    for _ in range(240):
        raw = bytearray(good)
        for at in rng.integers(0, len(raw), rng.integers(1, 4)):
            raw[at] = int(rng.integers(0, 256))
        cases.append(bytes(raw))
    outcomes = {"resumed": 0, "refused": 0}
    for raw in cases:
        ckpt.write_bytes(raw)
        try:
            resume(ckpt)
            outcomes["resumed"] += 1
        except SymgradError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100
    print(f"\ncheckpoint fuzz: {len(cases)} files, {outcomes}")
