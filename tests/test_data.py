"""A user's own data files (`--data FILE.npz | FILE.csv`): every problem is one line naming the file and what is wrong.

The model is tests/handmade_linreg.py: inputs x [3], y [], and a sampled `noise` (never required).
"""

from __future__ import annotations

import io
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from symgrad.errors import DataError, SymgradError, UsageError
from symgrad.runtime.data import DataWarning, describe, load_dataset
from symgrad.runtime.optim import SGD
from symgrad.runtime.training import train

sys.path.insert(0, str(Path(__file__).parent))
import handmade_linreg as M  # noqa: E402

RNG = np.random.default_rng(3)
X = RNG.normal(size=(40, 3))
Y = X @ np.array([1.0, -2.0, 0.5])


def refused(path, needle: str) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, M)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and needle in text, text
    return text


def npy_bytes(shape, dtype="<f8", data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def write_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)


def test_a_good_npz_with_test_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y, x_test=X[:5], y_test=Y[:5])
    tr, te = load_dataset(path, M)
    assert set(tr) == {"x", "y"} and set(te) == {"x", "y"} and te["x"].shape == (5, 3)
    assert describe(tr, te) == "40 training samples, 5 test samples"


def test_truncated_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y)
    path.write_bytes(path.read_bytes()[:300])
    refused(path, "damaged .npz file")


def test_crc_corrupt_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y)
    raw = bytearray(path.read_bytes())
    raw[30 + len("x.npy") + 128 + 16] ^= 0x55  # inside x's data
    path.write_bytes(bytes(raw))
    refused(path, "Bad CRC-32")


def test_npy_renamed_npz(tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as fh:
        np.save(fh, X)
    refused(path, "is a single .npy array, not an .npz archive")


def test_empty_file_and_missing_file(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"")
    refused(path, "the file is empty")
    refused(tmp_path / "nope.npz", "no such file")
    refused(tmp_path, "is a directory")


def test_zero_d_arrays_name_the_array_and_shape(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.float64(1.0), y=np.float64(2.0))
    refused(path, "array 'x' has shape (), expected (N, 3)")


def test_wrong_shape_and_dtype(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X[:, :2], y=Y)
    refused(path, "array 'x' has shape (40, 2), expected (N, 3)")
    np.savez(path, x=X, y=np.array(["a"] * 40))
    refused(path, "array 'y' holds <U1, expected numbers of shape (N,)")
    np.savez(path, x=X, y=np.array([1, None] * 20, dtype=object))
    refused(path, "array 'y' holds Python objects")


def test_a_header_claiming_7_tib_is_refused_before_allocating(tmp_path):
    path = tmp_path / "d.npz"
    rows = 7 * 2**40 // 24
    write_zip(path, {"x.npy": npy_bytes((rows, 3), data=b"\0" * 64), "y.npy": npy_bytes((rows,), data=b"\0" * 64)})
    refused(path, "array 'x' claims shape (320690891434, 3) (7.0 TiB) but the file holds 64 B for it")


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    """16 MiB of zeros deflate to ~16 KiB; the declared size is checked against the memory limit first."""
    path = tmp_path / "bomb.npz"
    rows = 2**21 // 3
    zeros = b"\0" * (rows * 3 * 8)
    write_zip(
        path,
        {"x.npy": npy_bytes((rows, 3), data=zeros), "y.npy": npy_bytes((rows,), data=zeros[: rows * 8])},
        zipfile.ZIP_DEFLATED,
    )
    assert path.stat().st_size < 100_000
    monkeypatch.setenv("SYMGRAD_MAX_DATA_BYTES", str(2**20))
    refused(path, "need 21.3 MiB, more than the 1.0 MiB of memory available")
    y_ok = npy_bytes((rows,), data=zeros[: rows * 8])
    wide = {"x.npy": npy_bytes((rows, 8), data=b"\0" * (rows * 64)), "y.npy": y_ok}
    write_zip(path, wide, zipfile.ZIP_DEFLATED)
    refused(path, "array 'x' has shape (699050, 8), expected (N, 3)")  # refused from the header, nothing inflated


def test_a_missing_key_lists_the_file_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=X, labels=Y)
    refused(path, "no array 'x' for input 'x' (expected shape (N, 3)); the file holds 'X', 'labels'")


def test_unused_and_misnamed_test_arrays_warn(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y, X_test=X[:5], y_test=Y[:5], extra=Y, z_val=Y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr, te = load_dataset(path, M)
    texts = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("'X_test' looks like held-out data but is not used: did you mean 'x_test'?" in t for t in texts)
    assert any("'z_val' looks like held-out data" in t and "no input 'z'" in t for t in texts)
    assert any("arrays nothing uses: 'extra'" in t for t in texts)
    assert set(te) == {"y"}  # then train() says validation is missing 'x'


def test_an_unknown_source_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        load_dataset("mnist", M)


# ---------------------------------------------------------------------------------------------- csv


def write_csv(path, header: str, rows) -> None:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_csv_flat_columns(tmp_path):
    path = tmp_path / "d.csv"
    write_csv(path, "x.0,x.1,x.2,y", np.column_stack([X, Y]))
    tr, te = load_dataset(path, M)
    assert te is None
    np.testing.assert_array_equal(tr["x"], X)
    np.testing.assert_array_equal(tr["y"], Y)
    res = train(M, tr, optimizer=SGD(0.05), batch_size=8, epochs=2, progress=False)
    assert res.steps == 10


def test_csv_remaining_columns_become_the_one_vector_input(tmp_path):
    path = tmp_path / "d.csv"
    write_csv(path, "f1,f2,f3,y", np.column_stack([X, Y]))
    tr, _ = load_dataset(path, M)
    np.testing.assert_array_equal(tr["x"], X)


def test_csv_labels_become_one_hot():
    from symgrad.runtime.data import _csv

    class Clf:
        INPUTS = (("x", (2,), None), ("y", (3,), None))

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.csv"
        write_csv(path, "a,b,y", [[0.1, 0.2, 0], [0.3, 0.4, 2]])
        tr, _ = _csv(str(path), Clf)
        np.testing.assert_array_equal(tr["y"], [[1, 0, 0], [0, 0, 1]])
        write_csv(path, "a,b,y", [[0.1, 0.2, 0], [0.3, 0.4, 7]])
        with pytest.raises(DataError, match="must hold class labels 0..2"):
            _csv(str(path), Clf)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the file is empty"),
        ("x.0,x.1,x.2,y\n", "has a header but no rows"),
        ("x.0,x.1,,y\n1,2,3,4\n", "the first row must name every column"),
        ("x.0,x.0,x.2,y\n1,2,3,4\n", "column 'x.0' appears twice"),
        ("x.0,x.1,x.2,y\n1,2,oops,4\n", "could not convert string 'oops'"),
        ("x.0,x.1,x.2,y\n1,2,3,4\n1,2,3\n", "the number of columns changed"),
        ("x.0,x.1,x.2,label\n1,2,3,4\n", "no column(s) for input 'y' (expected shape (N,): a column 'y')"),
        ("a,b,y\n1,2,3\n", "no column(s) for input 'x' (expected shape (N, 3): columns x.0..x.2)"),
    ],
)
def test_bad_csv_is_one_line(tmp_path, text, needle):
    path = tmp_path / "d.csv"
    path.write_text(text)
    refused(path, needle)


def test_csv_unused_columns_warn(tmp_path):
    path = tmp_path / "d.csv"
    write_csv(path, "x.0,x.1,x.2,y,id", np.column_stack([X, Y, np.arange(40)]))
    with pytest.warns(DataWarning, match="columns nothing uses: 'id'"):
        load_dataset(path, M)


# ---------------------------------------------------------------------------------------------- seed, fuzz


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_a_bad_seed_is_one_clean_error(seed):
    with pytest.raises(UsageError, match="seed must be a non-negative integer"):
        train(M, {"x": X, "y": Y}, optimizer=SGD(0.1), epochs=1, batch_size=8, seed=seed, progress=False)


def test_fuzzed_data_files_never_raise_a_traceback(tmp_path):
    """Truncations and byte flips of an npz and a CSV: each loads and trains, or is refused in one line."""
    npz, csvf = tmp_path / "d.npz", tmp_path / "d.csv"
    np.savez(npz, x=X, y=Y, x_test=X[:8], y_test=Y[:8])
    write_csv(csvf, "x.0,x.1,x.2,y", np.column_stack([X, Y]))
    rng = np.random.default_rng(0)
    counts = {"ok": 0, "refused": 0}
    for path in (npz, csvf):
        good = path.read_bytes()
        cases = [good[:n] for n in sorted(set(rng.integers(0, len(good), 50).tolist()))]
        for _ in range(150):
            raw = bytearray(good)
            for at in rng.integers(0, len(raw), rng.integers(1, 4)):
                raw[at] = int(rng.integers(0, 256))
            cases.append(bytes(raw))
        for raw in cases:
            path.write_bytes(raw)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DataWarning)
                    tr, te = load_dataset(path, M)
                    train(M, tr, optimizer=SGD(0.01), batch_size=8, epochs=1, validation=te, progress=False)
                counts["ok"] += 1
            except SymgradError as exc:
                assert "\n" not in str(exc)
                counts["refused"] += 1
    assert counts["refused"] > 100
    print(f"\ndata fuzz: {sum(counts.values())} files, {counts}")


# ---------------------------------------------------------------------------------------------- through the CLI


@pytest.fixture
def cli(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from symgrad.cli import train as cli_train

    monkeypatch.setattr(cli_train, "_load_model", lambda path: M)
    spec = tmp_path / "handmade.yaml"
    spec.write_text("name: handmade_linreg\n")

    def invoke(*args):
        return CliRunner().invoke(cli_train.train_command, [str(spec), *map(str, args), "--no-progress"])

    return tmp_path, invoke


def one_error_line(res, code: int = 2) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def test_cli_trains_on_a_csv(cli):
    tmp, invoke = cli
    write_csv(tmp / "d.csv", "x.0,x.1,x.2,y", np.column_stack([X, Y]))
    res = invoke("--data", tmp / "d.csv", "--epochs", "2", "--batch-size", "8")
    assert res.exit_code == 0, res.output
    assert "40 train, 0 test" in res.output


def test_cli_bad_seed_bad_file_bad_checkpoint_are_one_line(cli):
    tmp, invoke = cli
    np.savez(tmp / "d.npz", x=X, y=Y)
    assert "seed must be a non-negative integer, got -1" in one_error_line(
        invoke("--data", tmp / "d.npz", "--seed", "-1")
    )
    with open(tmp / "n.npz", "wb") as fh:
        np.save(fh, X)
    assert "is a single .npy array" in one_error_line(invoke("--data", tmp / "n.npz"))
    (tmp / "ck.npz").write_bytes(b"PK\x03\x04 not really")
    res = invoke("--data", tmp / "d.npz", "--batch-size", "8", "--resume", tmp / "ck.npz")
    assert "damaged .npz file" in one_error_line(res)


def test_cli_prints_data_warnings_as_one_line_each(cli):
    tmp, invoke = cli
    np.savez(tmp / "d.npz", x=X, y=Y, X_test=X[:4], extra=Y)
    res = invoke("--data", tmp / "d.npz", "--epochs", "1", "--batch-size", "8")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 2 and "did you mean 'x_test'?" in warned[0] and "'extra'" in warned[1], res.output
