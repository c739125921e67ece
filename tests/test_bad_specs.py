"""Hostile and broken specs: one line `FILE:LINE: message`, exit status 2, no traceback, nothing written.

Each file in tests/bad_specs/ is run through `symgrad build` and `symgrad derive` (click's CliRunner) and a
few through a real `python -m symgrad build` subprocess. The expected line is computed from the file's text:
the first line containing the case's marker (the offending key or expression); line 1 where YAML has no line
to give (empty or binary file, a top-level value that is not a mapping, a required key that is missing).

Readings assumed (the CLI must agree, or these tests change):
- the FILE part is the path exactly as given on the command line (here an absolute path);
- a missing required key is reported at line 1 (where the top-level mapping starts; the files put no comment
  before it);
- an error inside an expression is reported at the line of the statement's key (or of `loss:`);
- stdout and stderr together hold exactly that one line (a trailing newline is fine);
- `build` with a bad spec leaves `--out DIR` without files (or never creates it), and the working dir too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BAD = Path(__file__).parent / "bad_specs"
REPO = Path(__file__).resolve().parent.parent

SHAPE_WORDS = ("shape", "mismatch", "match", "size", "dimension", "incompatible", "conform")
FORBIDDEN_WORDS = (
    "allowed",
    "unsupported",
    "not supported",
    "forbidden",
    "invalid",
    "unknown",
    "syntax",
    "attribute",
    "call",
)
BOMB_WORDS = ("anchor", "alias")  # rejecting YAML anchors/aliases outright is a fine answer to a bomb


@dataclass(frozen=True)
class Bad:
    file: str  # stem under tests/bad_specs/
    marker: str | None  # a substring of the offending line; None -> line 1
    words: tuple[str, ...]  # the message must mention at least one of these
    also: str | None = None  # another acceptable marker (e.g. the first anchor of an alias bomb)

    @property
    def path(self) -> Path:
        return BAD / f"{self.file}.yaml"

    def expected_lines(self) -> set[int]:
        return {self._line(m) for m in (self.marker, self.also) if m is not None} or {1}

    def _line(self, marker: str) -> int:
        lines = self.path.read_text().splitlines()
        hits = [n for n, text in enumerate(lines, start=1) if marker in text]
        assert hits, f"test bug: marker {marker!r} not in {self.path.name}"
        return hits[0]


CASES = [
    # files that are not a spec at all
    Bad("empty", None, ("empty", "mapping", "name", "missing", "nothing")),
    Bad("binary_garbage", None, ("utf", "decode", "binary", "character", "encoding", "printable", "yaml", "read")),
    Bad("list_top", None, ("mapping", "list", "dict", "top")),
    Bad("scalar_top", None, ("mapping", "str", "dict", "top")),
    # YAML that would run code or explode under an unsafe or naive loader
    Bad("tag_python_apply", "!!python/object/apply", ("tag", "python", "constructor")),
    Bad("tag_python_name", "!!python/name", ("tag", "python", "constructor")),
    Bad("bomb_description", "description:", ("description",) + BOMB_WORDS, also="&a"),
    Bad("bomb_dim", "  D:", ("D", "dim") + BOMB_WORDS, also="&a"),
    # code injection through expressions: the parser must never evaluate text
    Bad("inject_import", "loss:", ("__import__", "import") + FORBIDDEN_WORDS),
    Bad("inject_class_bases", "  yhat:", ("__class__", "__bases__", "attribute", "tuple") + FORBIDDEN_WORDS),
    Bad("inject_lambda", "loss:", ("lambda",) + FORBIDDEN_WORDS),
    Bad("inject_attribute", "  yhat:", ("real", "attribute") + FORBIDDEN_WORDS),
    Bad("inject_fstring", "loss:", ("f-string", "fstring", "string", "JoinedStr", "literal") + FORBIDDEN_WORDS),
    Bad("inject_comprehension", "loss:", ("comprehension", "ListComp", "range", "list") + FORBIDDEN_WORDS),
    Bad("inject_exec", "loss:", ("exec",)),
    Bad("inject_kwargs", "loss:", ("keyword", "base", "argument")),
    Bad("inject_dunder_name", "loss:", ("__builtins__",)),
    # strict keys
    Bad("unknown_top_key", "objectve:", ("objectve",)),
    Bad("unknown_longform_key", "intt:", ("intt",)),
    Bad("unknown_input_key", "sampel:", ("sampel",)),
    Bad("unknown_sample_kind", "cauchy", ("cauchy", "sample")),
    Bad("missing_name", None, ("name",)),
    Bad("missing_params", None, ("params",)),
    Bad("missing_loss", None, ("loss",)),
    # types and values
    Bad("bad_name", "name:", ("name", "identifier")),
    Bad("name_not_string", "name:", ("name", "identifier", "string")),
    Bad("dim_zero", "  D: 0", ("D", "dim", "positive")),
    Bad("dim_negative", "  D: -3", ("D", "dim", "positive")),
    Bad("dim_float", "  D: 2.5", ("D", "dim", "integer")),
    Bad("dim_string", "  D: big", ("D", "dim", "integer")),
    # YAML `true` loads as a bool, a Python int subclass: still not a dim
    Bad("dim_bool", "  D: true", ("D", "dim", "integer")),
    Bad("objective_sideways", "objective:", ("objective", "sideways")),
    Bad("reduction_median", "reduction:", ("reduction", "median")),
    Bad("description_not_string", "description:", ("description",)),
    Bad("constant_not_number", "gamma:", ("gamma",)),
    Bad("loss_not_string", "loss:", ("loss",)),
    Bad("function_bad_signature", "bad fn(", ("bad fn", "signature")),
    # names, shapes and indices
    Bad("undeclared_name", "loss:", ("undeclared_thing",)),
    Bad("unknown_function", "loss:", ("frobnicate",)),
    Bad("unknown_init", "xavier_magic", ("xavier_magic",)),
    Bad("bad_init_args", "normal(0)", ("normal",)),
    Bad("matmul_mismatch", "  hmat:", SHAPE_WORDS + ("@", "Wmat")),
    Bad("add_mismatch", "  hsum:", SHAPE_WORDS + ("vfour",)),
    Bad("index_count", "  yhat:", ("Wmat", "index", "indices")),
    Bad("affine_out_of_range", "  yhat:", ("range", "bound", "out of", "i + 5")),
    Bad("piecewise_without_fallback", "loss:", ("Piecewise", "True")),
    Bad("sum_bounds_reversed", "loss:", ("low to high", "2 down to 0")),
    Bad("recurrence_reads_a_varying_past_step", "  - h[t]:", ("constant lag", "h[s]")),
    Bad("spec_name_shadows_a_module", "name: numpy", ("numpy", "module", "shadow")),
    Bad("constant_named_lr", "constants:", ("lr", "learning rate")),
    Bad("input_named_like_a_test_array", "inputs:", ("x_test", "held-out")),
    Bad("recursive_functions", '  "f(s)":', ("f -> g -> f", "recursive")),
    Bad("function_name_private", "functions:", ("_f", "reserved")),
    Bad("index_a_call_result", "loss:", ("logsumexp(S, axis=-1)", "declared arrays")),
    Bad("index_named_like_function", "  st[exp]:", ("exp", "built-in")),
    Bad("statement_named_keyword", "  None:", ("None", "keyword")),
    Bad("declared_shape_past_plain_read", "    expr: x[i]", ("range", "out of", "x[")),
    Bad("use_before_definition", "  early:", ("later",)),
    Bad("self_cycle", "  yhat:", ("yhat", "cycle", "itself")),
    Bad("redefine_input", "  y: 2", ("y", "input")),
    Bad("redefine_param", "  b: 2", ("b", "param")),
    Bad("outputs_undefined", "outputs:", ("nothere",)),
    Bad("loss_not_scalar", "loss:", ("scalar",)),
    Bad("syntax_error", "loss:", ("syntax", "parse", "invalid", "unexpected", "unmatched")),
]
IDS = [c.file for c in CASES]


def mentions(message: str, words: tuple[str, ...]) -> bool:
    """One-letter names match case-sensitively; longer words case-insensitively."""
    low = message.lower()
    return any(w in message or (len(w) > 1 and w.lower() in low) for w in words)


def check_one_line(output: str, case: Bad, path: str) -> None:
    assert "Traceback" not in output, output
    text = output.rstrip("\n")
    assert text and "\n" not in text, f"want exactly one line, got:\n{output}"
    m = re.fullmatch(re.escape(path) + r":(\d+): (.+)", text)
    assert m, f"not `{path}:LINE: message`: {text!r}"
    want = case.expected_lines()
    assert int(m.group(1)) in want, f"line {m.group(1)}, want {' or '.join(map(str, sorted(want)))}: {text}"
    assert mentions(m.group(2), case.words), f"message should mention one of {case.words}: {text}"


def nothing_written(folder: Path) -> list[str]:
    """Files under folder (an empty directory, e.g. a created --out, does not count)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def test_every_bad_file_has_a_case():
    on_disk = {p.stem for p in BAD.glob("*.yaml")} - {"_control_ok"}
    assert on_disk == set(IDS)
    assert len(CASES) >= 30


def test_control_spec_builds(tmp_path):
    """The bad files are this valid spec with one thing broken: it must build, so each failure is that one."""
    from click.testing import CliRunner

    from symgrad.cli.main import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(BAD / "_control_ok.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "control_ok.py").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_build_rejects(case, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from symgrad.cli.main import main

    out = tmp_path / "out"
    path = str(case.path)
    runner = CliRunner()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # an empty working directory: anything written into it is caught
    result = runner.invoke(main, ["build", path, "--out", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    check_one_line(result.output, case, path)
    assert nothing_written(cwd) == [], "the working directory was written to (PWNED?)"
    assert nothing_written(out) == [], f"{out} was written to"
    assert not (REPO / "PWNED").exists() and not (BAD / "PWNED").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_derive_rejects(case, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from symgrad.cli.main import main

    path = str(case.path)
    runner = CliRunner()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(main, ["derive", path])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    check_one_line(result.output, case, path)
    assert nothing_written(cwd) == []


SUBPROCESS_CASES = [
    "empty",
    "binary_garbage",
    "tag_python_apply",
    "bomb_description",
    "inject_import",
    "unknown_top_key",
    "dim_zero",
    "matmul_mismatch",
    "syntax_error",
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_python_m_symgrad_build_rejects(name, tmp_path):
    case = next(c for c in CASES if c.file == name)
    out = tmp_path / "out"
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    proc = subprocess.run(
        [sys.executable, "-m", "symgrad", "build", str(case.path), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout == "" or proc.stderr == "", "the one line appears once, on one stream"
    check_one_line(proc.stdout + proc.stderr, case, str(case.path))
    assert nothing_written(tmp_path) == [], nothing_written(tmp_path)
