"""One peer on one workload, in a fresh process: time to first step, loss check, then timed epochs.

Run by bench/run.py as `python -m bench.worker PEER WORKLOAD DATA.npz BUDGET_S MIN_EPOCHS`; prints one line
`BENCH_RESULT {json}` on stdout. The clock for "first step" starts here, before the framework is imported.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import importlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

MAX_EPOCHS = 500


def _time_epochs(fn, budget_s: float, min_n: int) -> list[float]:
    times: list[float] = []
    total = 0.0
    while len(times) < min_n or (total < budget_s and len(times) < MAX_EPOCHS):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        times.append(dt)
        total += dt
    return times


def run(peer: str, wid: str, npz: str, budget_s: float, min_epochs: int) -> dict:
    from bench.peers import MODULES
    from bench.workloads import WORKLOADS, read_npz

    w = WORKLOADS[wid]
    data, params = read_npz(npz)
    t_imp = time.perf_counter()
    try:
        mod = importlib.import_module(MODULES[peer])
    except Exception as e:  # framework or symgrad missing or broken: report, do not crash the run
        return {"status": "unavailable", "reason": f"import: {type(e).__name__}: {e}".splitlines()[0][:200]}
    import_s = time.perf_counter() - t_imp
    try:
        runner = mod.make(peer, w, data, params)
        first_loss = runner.step(0)
    except Exception as e:
        if peer != "symgrad":
            raise
        return {"status": "unavailable", "reason": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
    first_step_s = time.perf_counter() - T0
    getattr(runner, "settle", lambda: None)()  # background work a peer started (symgrad's warm-up) ends untimed
    check = [first_loss, runner.step(1), runner.step(2), runner.loss_at(3)]

    n = runner.n_steps
    runner.epoch()  # warm-up (and compilation of anything not yet compiled)
    train = _time_epochs(runner.epoch, budget_s, min_epochs)
    runner.forward_epoch()
    fwd = _time_epochs(runner.forward_epoch, budget_s / 2, min_epochs)
    step_s = statistics.median(train) / n
    fwd_s = statistics.median(fwd) / n
    return {
        "status": "ok",
        "import_s": import_s,
        "first_step_s": first_step_s,
        "check": check,
        "n_steps": n,
        "step_s": step_s,
        "fwd_s": fwd_s,
        "n_train_epochs": len(train),
        "n_fwd_epochs": len(fwd),
        # the process's peak resident set (Linux reports KiB): data, framework, model and training state
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    peer, wid, npz, budget, min_epochs = sys.argv[1:6]
    try:
        res = run(peer, wid, npz, float(budget), int(min_epochs))
    except Exception as e:
        traceback.print_exc()
        res = {"status": "error", "reason": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
    print("BENCH_RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
