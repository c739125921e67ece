"""Differential fuzzing campaign: `python -m tests.fuzz_campaign --n 5000 [--seed S] [--json OUT]`.

Draws random specs from `tests/fuzz_specs.py`, runs each through the whole compiler and compares loss and gradient
with the independent reference (`symgrad.checks.reference`) and central differences. Prints a tally by failure class and
one (the shortest) spec per class; `--json` writes every failing case. Run it with `NUMBA_DISABLE_JIT=1` for speed
(the kernels then run as plain Python, which is what the differential check needs: the maths, not the machine code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_specs  # noqa: E402  (tests/ is not a package)


def campaign(n: int, seed: int, f32: bool = True, progress: bool = True, max_seconds: float | None = None) -> dict:
    """Run n cases (fewer if max_seconds runs out); never raises on a failing case (each is recorded)."""
    workdir = tempfile.mkdtemp(prefix="symgrad-fuzz-")
    os.environ.setdefault("SYMGRAD_CACHE", str(Path(workdir) / "cache"))
    results: list[fuzz_specs.CaseResult] = []
    start = time.time()

    @settings(
        max_examples=n, database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    @given(text=fuzz_specs.specs(), point=st.integers(0, 2**31 - 1))
    def one(text: str, point: int) -> None:
        if max_seconds is not None and time.time() - start > max_seconds:
            return  # out of time: the remaining draws are not run (and not counted)
        r = fuzz_specs.run_case(text, seed=point, f32=f32, workdir=workdir)
        r.extra["seed"] = point
        results.append(r)
        if progress and len(results) % 100 == 0:
            bad = sum(x.outcome == "fail" for x in results)
            print(f"  {len(results)} cases, {bad} failing, {time.time() - start:.0f} s", file=sys.stderr, flush=True)

    one = _seeded(one, seed)
    one()
    outcomes = Counter(r.outcome for r in results)
    kinds = Counter(r.kind for r in results if r.outcome == "fail")
    shortest: dict[str, fuzz_specs.CaseResult] = {}
    for r in results:
        if r.outcome == "fail" and (r.kind not in shortest or len(r.spec) < len(shortest[r.kind].spec)):
            shortest[r.kind] = r
    return {
        "cases": len(results),
        "seconds": round(time.time() - start, 1),
        "outcomes": dict(outcomes),
        "failure_kinds": dict(kinds),
        "refusals": Counter(r.detail.split(": ", 1)[-1][:80] for r in results if r.outcome == "refused"),
        "refused_examples": {
            r.detail.split(": ", 1)[-1][:80]: r.spec
            for r in sorted((r for r in results if r.outcome == "refused"), key=lambda r: -len(r.spec))
        },
        "shortest": {k: {"spec": r.spec, "detail": r.detail, "seed": r.extra.get("seed")} for k, r in shortest.items()},
        "failures": [
            {"kind": r.kind, "detail": r.detail, "spec": r.spec, "seed": r.extra.get("seed")}
            for r in results
            if r.outcome == "fail"
        ],
    }


def _seeded(test, seed: int):
    from hypothesis import seed as hseed

    return hseed(seed)(test)


def merge(paths: list[str]) -> dict:
    """Several campaign reports (e.g. chunks run with different seeds) as one."""
    total: dict = {
        "cases": 0,
        "seconds": 0.0,
        "outcomes": Counter(),
        "failure_kinds": Counter(),
        "refusals": Counter(),
        "shortest": {},
        "failures": [],
        "refused_examples": {},
    }
    for p in paths:
        r = json.loads(Path(p).read_text(encoding="utf-8"))
        total["cases"] += r["cases"]
        total["seconds"] += r["seconds"]
        for key in ("outcomes", "failure_kinds", "refusals"):
            total[key].update(r[key])
        total["failures"] += r["failures"]
        for k, v in r["shortest"].items():
            if k not in total["shortest"] or len(v["spec"]) < len(total["shortest"][k]["spec"]):
                total["shortest"][k] = v
    total["seconds"] = round(total["seconds"], 1)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the full report here")
    ap.add_argument("--no-f32", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop running new cases after this long")
    ap.add_argument("--merge", nargs="+", default=None, help="print the tally of these reports instead of running")
    args = ap.parse_args(argv)
    if args.merge:
        report = merge(args.merge)
    else:
        report = campaign(args.n, args.seed, f32=not args.no_f32, max_seconds=args.max_seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"{report['cases']} cases in {report['seconds']} s: {report['outcomes']}")
    for kind, count in sorted(report["failure_kinds"].items(), key=lambda kv: -kv[1]):
        r = report["shortest"][kind]
        print(f"\n== {kind}: {count} case(s); shortest: {r['detail']}\n{r['spec']}")
    for why, count in Counter(report["refusals"]).most_common(10):
        print(f"refused {count}x: {why}")
    return 1 if report["failure_kinds"] else 0


if __name__ == "__main__":
    sys.exit(main())
