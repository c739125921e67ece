"""Every failure the differential fuzzer ever found, kept as a minimal spec in tests/regressions/.

Each spec goes through the real pipeline (loader -> compiled kernels, Numba JIT on) and must match the independent
reference evaluator: loss to 1e-9, gradient to central differences of the reference loss (1e-5), the same
gradient on a second call after freed memory is filled with NaN (no buffer read before it is written), and float32
params close to float64. Known failures are xfail in one place, tests/known_failing.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_specs import run_case
from known_failing import EXPECTED_REFUSALS, KNOWN_FAILING

REGRESSIONS = sorted((Path(__file__).parent / "regressions").glob("*.yaml"))


def _param(path: Path):
    marks = [pytest.mark.xfail(strict=False, reason=KNOWN_FAILING[path.stem])] if path.stem in KNOWN_FAILING else []
    return pytest.param(path, id=path.stem, marks=marks)


def test_known_failing_names_exist():
    stems = {p.stem for p in REGRESSIONS}
    listed = {k for k in KNOWN_FAILING if not k.startswith("stable_")}
    assert not listed - stems, "known_failing.py lists a regression spec that does not exist"


@pytest.mark.parametrize("path", [_param(p) for p in REGRESSIONS])
def test_regression_spec(path: Path, tmp_path: Path):
    text = path.read_text(encoding="utf-8")
    for seed in (0, 1):
        r = run_case(text, seed=seed, f32=True, workdir=str(tmp_path))
        if path.stem in EXPECTED_REFUSALS:
            assert r.outcome == "refused" and EXPECTED_REFUSALS[path.stem] in r.detail, f"{path.name}: {r.detail}"
            assert r.detail.startswith("SPEC:") and "\n" not in r.detail.strip()
            continue
        assert r.outcome == "ok", f"{path.name} (seed {seed}): {r.kind}: {r.detail}"
