"""Generated code is a product: golden files equal to the build of specs/, deterministic, marked, readable."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import symgrad
from symgrad.cli.main import main
from symgrad.runtime.loader import build_module_source

SPECS = sorted(Path("specs").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_golden_file_matches_build(spec):
    text = build_module_source(spec, display_path=str(spec))
    golden = Path("generated") / f"{spec.stem}.py"
    if not golden.exists() or golden.read_text() != text:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                golden.read_text().splitlines(True) if golden.exists() else [],
                text.splitlines(True),
                str(golden),
                "regenerated",
                n=1,
            )
        )
        pytest.fail(f"{golden} is stale; run `symgrad build` to update it.\n{diff[:3000]}")


def test_header_names_spec_hash_and_version():
    first = Path("generated/mlp_digits.py").read_text().splitlines()[0]
    sha = hashlib.sha256(Path("specs/mlp_digits.yaml").read_bytes()).hexdigest()
    assert "DO NOT EDIT" in first and "specs/mlp_digits.yaml" in first and sha in first
    assert symgrad.__version__ in first


def test_deterministic_and_compiles():
    a = build_module_source("specs/nade.yaml", "specs/nade.yaml")
    b = build_module_source("specs/nade.yaml", "specs/nade.yaml")
    assert a == b
    compile(a, "nade.py", "exec")
    assert "eval(" not in a and "exec(" not in a


def test_generated_modules_are_ruff_clean():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--isolated",
            "--line-length",
            "150",
            "--select",
            "E,F,W",
            "--extend-ignore",
            "E501",
            "generated",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for f in Path("generated").glob("*.py"):  # only the header line (it names the spec's path) may run long
        long = [n for n, line in enumerate(f.read_text().splitlines(), 1) if len(line) > 150 and n > 1]
        assert not long, f"{f}: lines {long} are longer than 150 characters"


def test_build_check_cli(tmp_path):
    r = CliRunner().invoke(main, ["build", "--check"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "gen"
    r = CliRunner().invoke(main, ["build", "specs/linreg.yaml", "--out", str(out)])
    assert r.exit_code == 0 and (out / "linreg.py").exists()
    (out / "linreg.py").write_text((out / "linreg.py").read_text() + "# edited\n")
    r = CliRunner().invoke(main, ["build", "specs/linreg.yaml", "--out", str(out), "--check"])
    assert r.exit_code == 1 and "symgrad build" in r.output and "+++" in r.output


def test_build_check_sees_a_stale_cuda_module_and_an_orphan(tmp_path, monkeypatch):
    """`build --check` compared only the --target files: a `_cuda.py` left by `--target all` could go stale, and a
    module of a removed spec could stay in generated/, while the check said "up to date"."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "linreg.yaml").write_text(Path("specs/linreg.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["build", "--target", "all"]).exit_code == 0
    assert CliRunner().invoke(main, ["build", "--check"]).exit_code == 0
    cuda = Path("generated/linreg_cuda.py")
    good = cuda.read_text()
    cuda.write_text(good + "# edited\n")
    r = CliRunner().invoke(main, ["build", "--check"])
    assert r.exit_code == 1 and "linreg_cuda.py (on disk)" in r.output
    cuda.write_text(good)
    Path("generated/old.py").write_text(Path("generated/linreg.py").read_text())  # a renamed spec's leftover
    Path("generated/helpers.py").write_text("x = 1\n")  # the user's own file: not ours to judge
    r = CliRunner().invoke(main, ["build", "--check"])
    assert r.exit_code == 1 and "old.py: is not the build of any spec" in r.output and "helpers" not in r.output
    r = CliRunner().invoke(main, ["build"])  # a plain build says so too, and deletes nothing
    assert r.exit_code == 0 and "note: generated/old.py is not the build" in r.output and "_cuda" not in r.output
    assert Path("generated/old.py").exists()
    assert CliRunner().invoke(main, ["build", "specs/linreg.yaml", "--check"]).exit_code == 0  # named specs only
    Path("generated/old.py").unlink()
    assert CliRunner().invoke(main, ["build", "--check"]).exit_code == 0


def test_load_builds_into_cache_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "specs" / "tiny.yaml"
    spec.parent.mkdir()
    spec.write_text("name: tiny\nparams: {w: {shape: [2], init: 3}}\nloss: sum(w[i]**2, i)\n")
    m = symgrad.load(spec)
    assert m.loss(m.init_params()) == pytest.approx(18.0)
    spec.write_text("name: tiny\nparams: {w: {shape: [2], init: 3}}\nloss: sum(w[i]**4, i)\n")
    m2 = symgrad.load(spec)  # hash changed: rebuilt
    assert m2.loss(m2.init_params()) == pytest.approx(162.0)
    assert not (tmp_path / "generated").exists()  # nothing written next to the spec


def test_concurrent_loads_do_not_corrupt(tmp_path):
    spec = tmp_path / "conc.yaml"
    spec.write_text("name: conc\nparams: {w: {shape: [3], init: 1}}\nloss: sum(exp(w[i]), i)\n")
    code = "import symgrad, sys; m = symgrad.load(sys.argv[1]); print(round(m.loss(m.init_params()), 6))"
    env = {"SYMGRAD_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    import os

    env = dict(os.environ, SYMGRAD_CACHE=str(tmp_path / "cache"))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(spec)], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(outs) == {str(round(3 * np.e, 6))}


def test_spec_text_never_reaches_eval():
    src = "\n".join(p.read_text() for p in Path("symgrad").rglob("*.py"))
    assert not re.search(r"(^|[^_a-zA-Z.])(eval|exec)\(|sympify\(|parse_expr\(|yaml\.load\(", src)


def test_float32_follows_params():
    m = symgrad.load("specs/mlp_digits.yaml")
    p64 = m.init_params(0)
    p32 = m.init_params(0, dtype=np.float32)
    rng = np.random.default_rng(0)
    batch = {"x": rng.random((4, 64)), "y": np.eye(10)[[0, 1, 2, 3]]}
    l64, g64 = m.loss_and_grad(p64, batch)
    l32, g32 = m.loss_and_grad(p32, batch)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def test_load_target_cuda_without_gpu_names_what_is_missing():
    import os

    from numba import cuda

    from symgrad.errors import SymgradError

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda.is_available():
        pytest.skip("a (simulated) GPU is present")
    with pytest.raises(SymgradError, match="CUDA requested but no GPU/driver found"):
        symgrad.load("specs/linreg.yaml", target="cuda")
    with pytest.raises(SymgradError, match="target"):
        symgrad.load("specs/linreg.yaml", target="tpu")


def _loops_rebinding_an_enclosing_variable(source: str) -> list[tuple[int, str]]:
    import ast

    bad: list[tuple[int, str]] = []

    def visit(node: ast.AST, around: frozenset[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.For) and isinstance(child.target, ast.Name):
                if child.target.id in around:
                    bad.append((child.lineno, child.target.id))
                visit(child, around | {child.target.id})
            else:
                visit(child, frozenset() if isinstance(child, ast.FunctionDef) else around)

    visit(ast.parse(source), frozenset())
    return bad


@pytest.mark.parametrize(
    "spec",
    [*SPECS, Path("tests/regressions/abs_of_standardize_rebinds_its_index.yaml")],
    ids=lambda p: p.stem,
)
def test_no_loop_rebinds_an_enclosing_loop_variable(spec):
    """`for i: ... for i:` overwrites the outer i: whole-array z - mean(z), stored as a vector, was generated so
    (abs(standardize(z)) 50% off). Every kernel, on both backends, names each loop apart from those around it."""
    from symgrad import backends
    from symgrad.errors import SpecError

    for target in ("cpu", "cuda"):
        try:
            source = backends.get(target).render(spec, str(spec))
        except SpecError:  # a form the CUDA backend refuses (batch statistics, recurrences)
            assert target == "cuda"
            continue
        assert not _loops_rebinding_an_enclosing_variable(source), (target, spec.name)
