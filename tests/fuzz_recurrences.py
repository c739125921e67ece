"""Property test of the sequence language: random multi-state recurrences against a NumPy step loop written here.

`python tests/fuzz_recurrences.py --n 400 [--seed S]` (NUMBA_DISABLE_JIT=1 is set: the kernels run as Python, the
maths is what is under test). Each case draws 1-3 states `s_k[t, j]`, each reading any state at steps t - 1 or
t - 2 through a matrix, optionally an earlier state at the current step and a gate statement inside the step, with
an init of 0, a number, a learned param or an input; the loss reads every step of every state. The compiled loss
must equal the loop's to 1e-10, every gradient element its central difference to 1e-6, and `symgrad check`'s
reference evaluator must agree with the module.

Why: the shipped tests had one state per recurrence (Elman, GRU); an LSTM's two states broke `symgrad check`'s
reference evaluator (the cell state was never started), which no generator drew.
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


def _sig(a):
    return 1 / (1 + np.exp(-a))


FUN = {"tanh": np.tanh, "sigmoid": _sig, "sin": np.sin, "lin": lambda a: 0.5 * a}
INITS = ("0", "0.3", "param", "input")


def draw(rng: random.Random) -> dict:
    """One recurrence's structure; every choice is a draw of `rng`."""
    n_states = rng.randint(1, 3)
    states = []
    for k in range(n_states):
        states.append(
            {
                "f": rng.choice(sorted(FUN)),
                "reads": [(rng.randrange(n_states), rng.randint(1, 2)) for _ in range(rng.randint(1, 2))],
                "cur": rng.randrange(k) if k > 0 and rng.random() < 0.5 else None,
                "init": rng.choice(INITS),
                "gate": rng.random() < 0.3,
            }
        )
    return {"T": rng.randint(1, 4), "H": rng.randint(1, 3), "states": states}


def spec_text(case: dict) -> str:
    inputs, params, fwd = {"x": "[T, H]", "y": "[]"}, {}, []
    for k, s in enumerate(case["states"]):
        if s["init"] == "param":
            params[f"p{k}"] = "[H]"
        if s["init"] == "input":
            inputs[f"q{k}"] = "[H]"
        params[f"w{k}"] = "[H]"
        terms = [f"x[t, j]*w{k}[j]"]
        for r, (src, lag) in enumerate(s["reads"]):
            params[f"A{k}_{r}"] = "[H, H]"
            terms.append(f"sum(A{k}_{r}[j, i]*s{src}[t - {lag}, i], i)")
        if s["cur"] is not None:
            terms.append(f"s{s['cur']}[t, j]")
        pre = " + ".join(terms)
        if s["gate"]:
            params[f"G{k}"] = "[H]"
            fwd.append(f'  - g{k}[t, j]: {{shape: [T, H], expr: "sigmoid(G{k}[j]*x[t, j] + s{k}[t - 1, j])"}}')
            pre = f"g{k}[t, j]*({pre})"
        body = f"0.5*({pre})" if s["f"] == "lin" else f"{s['f']}({pre})"
        init = {"0": "0", "0.3": "0.3", "param": f"p{k}", "input": f"q{k}"}[s["init"]]
        fwd.append(f'  - s{k}[t, j]: {{shape: [T, H], expr: "{body}", init: {init}}}')
    params["V"] = "[H]"
    last = len(case["states"]) - 1
    loss = " + ".join([f"sum(V[j]*s{last}[T - 1, j], j)"] + [f"0.1*sum(s{k}**2)" for k in range(last + 1)])
    return "\n".join(
        [
            "name: recf",
            f"dims: {{T: {case['T']}, H: {case['H']}}}",
            "inputs: {" + ", ".join(f"{k}: {v}" for k, v in inputs.items()) + "}",
            "params:",
            *(f'  {k}: {{shape: {v}, init: "normal(0, 0.6)"}}' for k, v in params.items()),
            "forward:",
            *fwd,
            f"loss: ({loss} - y)**2",
            "",
        ]
    )


def loop_loss(case: dict, p: dict, x: np.ndarray, y: float, q: dict) -> float:
    """The recurrence as a plain loop over t (a read before step 0 gives the read state's init)."""
    states, n_t, n_h = case["states"], case["T"], case["H"]
    vals = {k: np.zeros((n_t, n_h)) for k in range(len(states))}

    def read(src: int, t: int) -> np.ndarray:
        if t >= 0:
            return vals[src][t]
        init = states[src]["init"]
        return {"0": np.zeros(n_h), "0.3": np.full(n_h, 0.3), "param": p.get(f"p{src}"), "input": q.get(f"q{src}")}[
            init
        ]

    for t in range(n_t):
        for k, s in enumerate(states):
            pre = x[t] * p[f"w{k}"]
            for r, (src, lag) in enumerate(s["reads"]):
                pre = pre + p[f"A{k}_{r}"] @ read(src, t - lag)
            if s["cur"] is not None:
                pre = pre + vals[s["cur"]][t]
            if s["gate"]:
                pre = _sig(p[f"G{k}"] * x[t] + read(k, t - 1)) * pre
            vals[k][t] = FUN[s["f"]](pre)
    last = len(states) - 1
    out = p["V"] @ vals[last][n_t - 1] + sum(0.1 * np.sum(vals[k] ** 2) for k in range(last + 1))
    return float((out - y) ** 2)


def run_case(case: dict, workdir: str, index: int) -> tuple[str, str]:
    """('ok' | 'refused' | 'loss' | 'grad' | 'reference' | 'crash', detail)."""
    import symgrad
    from symgrad.errors import SpecError

    text = spec_text(case)
    path = Path(workdir) / f"case{index}.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        m = symgrad.load(str(path))
    except SpecError as exc:
        return "refused", str(exc).split(": ", 1)[-1]
    nrng = np.random.default_rng(index)
    p = {k: np.asarray(v, float) + 0.1 * nrng.standard_normal(np.shape(v)) for k, v in m.init_params(index).items()}
    batch = {name: nrng.normal(size=(2, *shape)) for name, shape, _ in m.INPUTS}

    def ref(pp: dict) -> float:
        inits = [{k: v[b] for k, v in batch.items() if k[0] == "q"} for b in range(2)]
        return float(np.mean([loop_loss(case, pp, batch["x"][b], batch["y"][b], inits[b]) for b in range(2)]))

    loss, grad = m.loss_and_grad(p, batch)
    want = ref(p)
    if not np.isclose(loss, want, rtol=1e-10, atol=1e-12):
        return "loss", f"{loss!r} against the loop's {want!r}"
    h = 1e-6
    for k, v in p.items():
        for idx in np.ndindex(v.shape):
            hi = {a: w.copy() for a, w in p.items()}
            lo = {a: w.copy() for a, w in p.items()}
            hi[k][idx] += h
            lo[k][idx] -= h
            fd = (ref(hi) - ref(lo)) / (2 * h)
            if abs(grad[k][idx] - fd) > 1e-6 * max(1.0, abs(fd)):
                return "grad", f"d/d{k}{list(idx)}: {grad[k][idx]!r} against central differences {fd!r}"
    from symgrad.checks.gradcheck import loss_check

    lc = loss_check(str(path), seed=index)  # the independent evaluator `symgrad check` uses must agree too
    if not lc.ok():
        return "reference", f"symgrad check's evaluator: {lc.reference!r} against the module's {lc.generated!r}"
    return "ok", ""


def campaign(n: int, seed: int) -> tuple[Counter, list[tuple[str, str, str]]]:
    workdir = tempfile.mkdtemp(prefix="symgrad-recfuzz-")
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
