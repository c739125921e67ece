"""Property test of per-axis layers and batch statistics: random chains of `softmax / log_softmax / logsumexp /
sum / mean / var / standardize (..., axis=k)` over 1-3-d arrays, optionally normalised by batch statistics
(`batch_mean`), against NumPy written here with the batch as axis 0.

`python tests/fuzz_axes.py --n 300 [--seed S]` (NUMBA_DISABLE_JIT=1 is set: the maths is under test). The compiled
loss must equal NumPy's to 1e-10, every gradient element the central difference of NumPy's loss to 1e-6, and
`symgrad check`'s reference evaluator must agree with the module.

Why: the general spec generator (tests/fuzz_specs.py) draws neither `axis=` forms nor batch statistics, the two
language features added for LayerNorm, attention and BatchNorm.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hseed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DIMS = ("A", "C", "E")
KEEP = ("softmax", "log_softmax", "standardize")
DROP = ("logsumexp", "sum", "mean", "var")
BATCH = 3


def draw(rng: random.Random) -> dict:
    ndim = rng.randint(1, 3)
    sizes = [rng.randint(1, 3) for _ in range(ndim)]
    ops = []
    shape = list(range(ndim))  # which dims the current value has, in order
    for _ in range(rng.randint(1, 3)):
        if not shape:
            break
        op = rng.choice(KEEP + DROP)
        k = rng.randrange(len(shape))
        axis = k - len(shape) if rng.random() < 0.4 else k  # negative axes too
        ops.append((op, axis))
        if op in DROP:
            shape = shape[:k] + shape[k + 1 :]
    return {
        "sizes": sizes,
        "pre": rng.choice(["tanh(x * P)", "x + P", "x * P", "sin(P) * x"]),
        "ops": ops,
        "bn_at": rng.randrange(len(ops) + 1) if rng.random() < 0.5 else None,  # batch-normalise before op i
        "shape": shape,
    }


def _dims(case: dict, dims: list[int]) -> str:
    return "[" + ", ".join(DIMS[d] for d in dims) + "]"


def spec_text(case: dict) -> str:
    nd = len(case["sizes"])
    full = _dims(case, list(range(nd)))
    fwd = [f"  - v0: {case['pre']}"]
    cur, n = "v0", 0
    for i, (op, axis) in enumerate([*case["ops"], (None, None)]):
        if case["bn_at"] == i:
            fwd += [
                f"  - mu{i}: batch_mean({cur})",
                f"  - sg{i}: batch_mean(({cur} - mu{i})**2)",
                f"  - bn{i}: ({cur} - mu{i}) / sqrt(sg{i} + 0.5)",
            ]
            cur = f"bn{i}"
        if op is None:
            break
        n += 1
        args = f"{cur}, 0.5, axis={axis}" if op == "standardize" else f"{cur}, axis={axis}"
        fwd.append(f"  - v{n}: {op}({args})")
        cur = f"v{n}"
    out = _dims(case, case["shape"])
    return "\n".join(
        [
            "name: axf",
            "dims: {" + ", ".join(f"{DIMS[d]}: {s}" for d, s in enumerate(case["sizes"])) + "}",
            f"inputs: {{x: {full}}}",
            "params:",
            f'  P: {{shape: {full}, init: "normal(0, 0.7)"}}',
            f'  R: {{shape: {out}, init: "normal(0, 0.7)"}}',
            "forward:",
            *fwd,
            f"loss: sum(R * {cur}) + 0.1 * sum({cur}**2)" if case["shape"] else f"loss: R * {cur} + 0.1 * {cur}**2",
            "",
        ]
    )


def _np_op(op: str, z: np.ndarray, axis: int) -> np.ndarray:
    ax = axis + 1 if axis >= 0 else axis  # the batch is axis 0; negative axes count from the end either way
    if op == "softmax":
        e = np.exp(z - z.max(axis=ax, keepdims=True))
        return e / e.sum(axis=ax, keepdims=True)
    if op in ("log_softmax", "logsumexp"):
        m = z.max(axis=ax, keepdims=True)
        lse = m + np.log(np.exp(z - m).sum(axis=ax, keepdims=True))
        return z - lse if op == "log_softmax" else np.squeeze(lse, axis=ax)
    if op == "sum":
        return z.sum(axis=ax)
    if op == "mean":
        return z.mean(axis=ax)
    if op == "var":
        return z.var(axis=ax)
    mu = z.mean(axis=ax, keepdims=True)
    return (z - mu) / np.sqrt(z.var(axis=ax, keepdims=True) + 0.5)


def numpy_loss(case: dict, p: dict, x: np.ndarray) -> float:
    """The batch's mean loss, the batch as axis 0."""
    P = p["P"][None]
    v = {"tanh(x * P)": np.tanh(x * P), "x + P": x + P, "x * P": x * P, "sin(P) * x": np.sin(P) * x}[case["pre"]]
    for i, (op, axis) in enumerate([*case["ops"], (None, None)]):
        if case["bn_at"] == i:
            mu = v.mean(axis=0, keepdims=True)
            v = (v - mu) / np.sqrt(((v - mu) ** 2).mean(axis=0, keepdims=True) + 0.5)
        if op is None:
            break
        v = _np_op(op, v, axis)
    per = (p["R"][None] * v + 0.1 * v**2).reshape(v.shape[0], -1).sum(axis=1)
    return float(per.mean())


def run_case(case: dict, workdir: str, index: int) -> tuple[str, str]:
    import symgrad
    from symgrad.checks.gradcheck import loss_check
    from symgrad.errors import SpecError

    path = Path(workdir) / f"case{index}.yaml"
    path.write_text(spec_text(case), encoding="utf-8")
    try:
        m = symgrad.load(str(path))
    except SpecError as exc:
        return "refused", str(exc).split(": ", 1)[-1]
    rng = np.random.default_rng(index)
    p = {
        k: np.array(np.asarray(v, float) + 0.1 * rng.standard_normal(np.shape(v)))
        for k, v in m.init_params(index).items()
    }
    x = rng.normal(size=(BATCH, *case["sizes"]))
    loss, grad = m.loss_and_grad(p, {"x": x})
    want = numpy_loss(case, p, x)
    if not np.isclose(loss, want, rtol=1e-10, atol=1e-12):
        return "loss", f"{loss!r} against NumPy's {want!r}"
    h = 1e-6
    for k, v in p.items():
        for idx in np.ndindex(v.shape):
            hi = {a: w.copy() for a, w in p.items()}
            lo = {a: w.copy() for a, w in p.items()}
            hi[k][idx] += h
            lo[k][idx] -= h
            fd = (numpy_loss(case, hi, x) - numpy_loss(case, lo, x)) / (2 * h)
            if abs(grad[k][idx] - fd) > 1e-6 * max(1.0, abs(fd)):
                return "grad", f"d/d{k}{list(idx)}: {grad[k][idx]!r} against central differences {fd!r}"
    lc = loss_check(str(path), seed=index)
    # an absolute floor: a loss that is 0 in exact arithmetic (batch-normalised softmax sums) is rounding noise in both
    if lc.nonfinite or not np.isclose(lc.generated, lc.reference, rtol=1e-9, atol=1e-12):
        return "reference", f"symgrad check's evaluator: {lc.reference!r} against the module's {lc.generated!r}"
    return "ok", ""


def campaign(n: int, seed: int) -> tuple[Counter, list[tuple[str, str, str]]]:
    workdir = tempfile.mkdtemp(prefix="symgrad-axfuzz-")
    os.environ.setdefault("SYMGRAD_CACHE", str(Path(workdir) / "cache"))
    tally: Counter = Counter()
    failures: list[tuple[str, str, str]] = []

    @settings(
        max_examples=n, database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    @given(st.randoms(use_true_random=False))
    def one(rng: random.Random) -> None:
        case = draw(rng)
        index = sum(tally.values())
        try:
            kind, detail = run_case(case, workdir, index)
        except Exception:
            kind, detail = "crash", traceback.format_exc(limit=-3)
        tally[kind] += 1
        if kind not in ("ok", "refused"):
            failures.append((kind, detail, spec_text(case)))

    hseed(seed)(one)()
    return tally, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tally, failures = campaign(args.n, args.seed)
    for kind, detail, text in failures[:5]:
        print(f"== {kind}: {detail}\n{text}")
    print(f"{sum(tally.values())} cases: {dict(tally)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
