"""A new user's first hour (issue 14): predict without labels, find what was saved, bring an npz, read the derivation.

CLI paths go through click's CliRunner. The specs are written to a temporary folder so they build into a
temporary cache (not the committed generated/), with the current templates.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sympy
from click.testing import CliRunner

from symgrad.cli.main import main

ROOT = Path(__file__).resolve().parent.parent

LOGREG = """name: logreg
description: Logistic regression with binary labels.
dims: {D: 3}
inputs: {x: [D], y: []}
params: {w: {shape: [D], init: zeros}, b: {shape: [], init: 0.0}}
forward:
  z: w @ x + b
loss: bce_with_logits(z, y)
outputs: [z]
"""

# a maximised objective with a constant: the Gaussian log-likelihood of y around a linear mean
GAUSS = """name: gauss
dims: {D: 3}
inputs: {x: [D], y: []}
constants: {beta: 1.0}
params: {w: {shape: [D], init: zeros}, b: {shape: [], init: 0.0}}
forward:
  m: w @ x + b
loss: -beta * (y - m)**2
objective: maximize
outputs: [m]
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("firsthour")
    (tmp / "logreg.yaml").write_text(LOGREG)
    (tmp / "gauss.yaml").write_text(GAUSS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = (x @ [1.0, -2.0, 0.5] + 0.3 * rng.normal(size=300) > 0).astype(float)
    np.savez(tmp / "d.npz", x=x[:240], y=y[:240], x_test=x[240:], y_test=y[240:])
    np.savez(tmp / "new.npz", x=x[:7])
    np.savez(tmp / "reg.npz", x=x[:240], y=x[:240] @ [1.0, 2.0, 3.0], x_test=x[240:], y_test=x[240:] @ [1.0, 2.0, 3.0])
    return tmp


@pytest.fixture
def cli(work, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", str(work / "cache"))
    monkeypatch.chdir(work)

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    return invoke


def test_forward_needs_only_the_inputs_its_outputs_read(work, monkeypatch, caplog):
    import logging

    import symgrad
    from symgrad.errors import DataError

    cache = work / "cache_forward"  # its own, so this test sees the build whatever ran before
    monkeypatch.setenv("SYMGRAD_CACHE", str(cache))
    with caplog.at_level(logging.INFO, logger="symgrad"):
        m = symgrad.load(work / "logreg.yaml")
    assert any("built" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)
    assert m.__spec_path__.startswith(str(cache))
    assert m.STATEMENT_INPUTS["z"] == ("x",)
    p = {"w": np.array([1.0, 2.0, 3.0]), "b": np.array(0.5)}
    x = np.arange(6.0).reshape(2, 3)
    out = m.forward(p, {"x": x})  # no labels
    assert np.allclose(out["z"], x @ [1.0, 2.0, 3.0] + 0.5)
    with pytest.raises(DataError, match="missing input 'x'"):
        m.forward(p, {"y": np.zeros(2)})
    with pytest.raises(DataError, match="missing input 'y'"):
        m.loss(p, {"x": x})  # the loss still needs them


def test_train_saves_by_default_then_predict_and_evaluate(cli, work):
    r = cli("train", "logreg.yaml", "--data", "d.npz", "--epochs", 3, "--lr", 0.05, "--no-progress")
    assert r.exit_code == 0, r.output
    saved = Path("runs/logreg/params.npz")
    assert "parameters saved to runs/logreg/params.npz" in r.output and saved.exists()
    assert set(np.load(saved).files) == {"w", "b"}
    assert "240 train, 60 test samples" in r.output
    assert re.search(r"^generated module: .*cache.*logreg\.py$", r.output, re.M)  # where symgrad.load imported from
    epoch = [ln for ln in r.output.splitlines() if ln.startswith("epoch ")]
    assert epoch[0].startswith("epoch 1/3  loss ") and "test_loss" in epoch[0] and "val_" not in epoch[0]
    # a binary classifier (y: [], bce) gets its accuracy on every epoch line, train and held out
    assert re.search(r"^epoch 3/3  loss [\d.]+  acc 0\.\d+  test_loss [\d.]+  test_acc 0\.\d+$", r.output, re.M)

    r = cli("predict", "logreg.yaml", "--params", saved, "--data", "new.npz", "--out", "pred.npz")
    assert r.exit_code == 0, r.output
    assert "predictions saved to pred.npz" in r.output
    pred = np.load("pred.npz")
    p = np.load(saved)
    assert np.allclose(pred["z"], np.load("new.npz")["x"] @ p["w"] + p["b"])

    r = cli("evaluate", "logreg.yaml", "--params", saved, "--data", "d.npz", "--split", "test")
    assert r.exit_code == 0, r.output
    acc = float(re.search(r"accuracy ([\d.]+)", r.output).group(1))
    assert "test (60 samples): loss" in r.output and acc > 0.7
    r = cli("predict", "logreg.yaml", "--params", "nope.npz", "--data", "new.npz")
    assert r.exit_code == 2 and "nope.npz" in r.output and "Traceback" not in r.output


def test_train_options_log_val_split_dtype_constant_schedule_init(cli, work):
    r = cli("train", "gauss.yaml", "--data", "reg.npz", "--epochs", 2, "--lr", 0.05, "--no-progress", "--out", "g.npz")
    assert r.exit_code == 0, r.output
    epoch = [ln for ln in r.output.splitlines() if ln.startswith("epoch ")]
    assert epoch[0].startswith("epoch 1/2  objective ") and "test_objective" in epoch[0] and " loss " not in epoch[0]

    r = cli(
        "train",
        "gauss.yaml",
        "--data",
        "reg.npz",
        "--epochs",
        3,
        "--no-progress",
        "--val-split",
        0.25,
        "--log",
        "m.csv",
        "--dtype",
        "float32",
        "--constant",
        "beta=0.5",
        "--schedule",
        "cosine",
        "--init",
        "g.npz",
        "--out",
        "g32.npz",
    )
    assert r.exit_code == 0, r.output
    assert "180 train, 60 val, 60 test samples" in r.output
    epoch = [ln for ln in r.output.splitlines() if ln.startswith("epoch ")]
    assert "val_objective" in epoch[0] and "test_" not in epoch[0]
    assert re.search(r"^test: objective ", r.output, re.M)  # the test set is reported once, at the end
    rows = list(csv.reader(open("m.csv")))
    assert rows[0] == ["epoch", "steps", "objective", "acc", "val_objective", "val_acc"] and len(rows) == 4
    assert np.load("g32.npz")["w"].dtype == np.float32

    assert cli("train", "gauss.yaml", "--data", "reg.npz", "--constant", "gamma=1").exit_code == 2
    assert cli("train", "gauss.yaml", "--data", "reg.npz", "--schedule", "wobble").exit_code == 2
    assert cli("train", "gauss.yaml", "--data", "reg.npz", "--val-split", 1.5).exit_code == 2


def test_train_help_documents_the_data_format():
    r = CliRunner().invoke(main, ["train", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for needle in (
        "named exactly like the input",
        "<input>_test",
        "--val-split",
        "runs/<spec name>/params.npz",
        "--log",
        "--constant",
        "--schedule",
        "--init",
        "--dtype",
        "docs/data.md",
    ):
        assert needle in text, needle


def test_build_says_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "gen"
    r = CliRunner().invoke(main, ["build", "specs/linreg.yaml", "--out", str(out)])
    assert r.exit_code == 0 and r.output.startswith("wrote ")
    r = CliRunner().invoke(main, ["build", "specs/linreg.yaml", "--out", str(out)])
    assert r.exit_code == 0 and r.output.startswith("unchanged ")


# ---------------------------------------------------------------------------------------------- derivation


def _backward_lines(text: str) -> list[str]:
    block = text.split("# Backward", 1)[1].split("# Gradients", 1)[0]
    return [ln for ln in block.splitlines()[1:] if ln.strip()]


@pytest.mark.parametrize("spec", ["vae", "nade", "mlp_digits", "cnn_digits", "autoencoder"])
def test_backward_is_in_dependency_order(spec):
    from symgrad.display.derivation import render_text
    from symgrad.ir.derive import derive
    from symgrad.ir.graph import build_program

    text = render_text(derive(build_program(str(ROOT / "specs" / f"{spec}.yaml"))), "text", None)
    defined: set[str] = set()
    lines = _backward_lines(text)
    written = {re.match(r"(\w+_bar)\b", ln).group(1) for ln in lines}
    for ln in lines:
        lhs = re.match(r"(\w+_bar)\b", ln).group(1)
        reads = set(re.findall(r"\b(\w+_bar)\b", ln.split("=", 1)[1])) & written
        assert reads <= defined | {lhs}, f"{ln!r} reads {reads - defined} before it is defined"
        defined.add(lhs)


def test_wrt_shows_only_the_path_and_text_has_no_reserved_names(cli):
    r = cli("derive", ROOT / "specs/mlp_digits.yaml", "--format", "text", "--wrt", "W2")
    assert r.exit_code == 0, r.output
    assert "W2_bar" in r.output and "W1_bar" not in r.output and "b1_bar" not in r.output
    assert "s_h" not in r.output and "h_bar" not in r.output  # h's adjoint is not on the path to W2
    r = cli("derive", ROOT / "specs/nade.yaml", "--format", "text")
    assert r.exit_code == 0 and not re.search(r"(?<![\w])_[a-z]\b", r.output), r.output
    r = cli("derive", ROOT / "specs/linreg.yaml")
    assert r"\sum_{\mathsf{b} \in \mathcal{B}}" in r.output and r"\sum_{b=1}" not in r.output


def test_public_derive_gives_sympy_equations():
    import symgrad

    d = symgrad.derive(ROOT / "specs/mlp_digits.yaml")
    eq = d.adjoint("z")
    assert isinstance(eq, sympy.Eq) and "softmax" in str(eq.rhs)
    g = d.gradient("W2")
    assert isinstance(g, sympy.Eq) and str(g.rhs) == "h[j]*z_bar[i]"
    assert d._repr_latex_().startswith("$$\\begin{aligned}")
    assert "<math" in d._repr_html_()
    assert [e.target for e in symgrad.derive(ROOT / "specs/mlp_digits.yaml", wrt="W1").gradients] == ["W1"]
    assert "derive" in symgrad.__all__ and callable(symgrad.derive)


def test_render_png_is_a_sane_size(tmp_path):
    from PIL import Image

    out = tmp_path / "vae.png"
    r = CliRunner().invoke(main, ["derive", str(ROOT / "specs/vae.yaml"), "--render", str(out)])
    assert r.exit_code == 0, r.output
    w, h = Image.open(out).size
    assert 400 < w <= 1200 and h < 4000


def test_render_html_splits_long_lines_and_nests_subscripts():
    from symgrad.display.page import _mathml, _mathtext, split_terms

    assert split_terms(r"{y}_{i} = a + \frac{b + c}{2} - \left(d + e\right)") == [
        "{y}_{i} =",
        "a",
        r"+ \frac{b + c}{2}",
        r"- \left(d + e\right)",
    ]
    assert _mathtext(r"{s_{h}}_{i}") == r"(s_{h})_{i}"  # mathtext would draw s_{hi}
    ml = _mathml(r"{s_{h}}_{i} + {\overline{\mathit{logvar}}}_{i}")
    assert ml.count("<msub>") == 3 and '<mi class="name">logvar</mi>' in ml and 'class="overline"' in ml
    assert _mathml(r"\overline{\hat{y}}").count('class="overline"') == 1  # an accented name under the bar


@pytest.mark.parametrize("spec", sorted(p.stem for p in (ROOT / "specs").glob("*.yaml")))
def test_every_shipped_spec_renders_to_html(spec, tmp_path):
    out = tmp_path / f"{spec}.html"
    r = CliRunner().invoke(main, ["derive", str(ROOT / "specs" / f"{spec}.yaml"), "--render", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert page.count("<math") >= 3 and "&#x02015;" not in page  # every overline drawn by CSS


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_html_page_renders_in_a_browser(tmp_path):
    """The page a person opens: typeset by the browser, offline. Same check as docs/render_check.sh."""
    from PIL import Image

    page, shot = tmp_path / "vae.html", tmp_path / "vae_shot.png"
    r = CliRunner().invoke(main, ["derive", str(ROOT / "specs/vae.yaml"), "--render", str(page)])
    assert r.exit_code == 0, r.output
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=600,1400",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = np.asarray(Image.open(shot).convert("L"))
    ink = img < 128
    assert ink.mean() > 0.01  # text was drawn
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows.size > 400  # many lines of maths, not one line of raw source
    cols = np.flatnonzero(ink.any(axis=0))
    assert cols.max() < 600 - 20  # the ELBO line is wider than 600 px: it wraps instead of running off the edge


def test_readme_links_docs_in_the_repo():
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    for doc in ("docs/spec.md", "docs/api.md", "docs/data.md"):
        assert doc in readme and (ROOT / doc).exists(), doc
