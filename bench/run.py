"""Benchmark orchestrator: `python -m bench [--quick] [--workloads W1,W3] [--peers numpy,jax.jit]`.

Every (peer, workload) pair runs in a fresh subprocess (bench/worker.py), in several rounds with the
peer order rotated. Round 1 starts with empty on-disk caches (symgrad's generated modules, Numba,
TorchInductor, JAX) and gives the cold time to first step; later rounds reuse those caches and give the
warm-cache time. Results are printed and written to bench/RESULTS.md.
"""

from __future__ import annotations

import os
import resource
import sys

THREADS = "2"
THREAD_ENV = {
    k: THREADS
    for k in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    )
}
# OpenMP threads sleep instead of spinning at barriers: on a 2-core machine shared with other processes, spinning
# threads that wait for a descheduled sibling made torch 10-30x slower (measured); passive costs a little when idle.
THREAD_ENV["OMP_WAIT_POLICY"] = "PASSIVE"
THREAD_ENV["SYMGRAD_WARMUP"] = "1"  # symgrad's background warm-up (its default) is measured on, whatever the shell says
os.environ.update(THREAD_ENV)  # before numpy is imported: the BLAS peak below runs under the same limit

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.peers import PEERS  # noqa: E402
from bench.report import render  # noqa: E402
from bench.workloads import WORKLOADS, write_npz  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")


def blas_peak_gflops(n: int = 2048, repeats: int = 8) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def reference_check(wid: str, npz: str) -> list[float]:
    """The NumPy-by-hand peer, run in this process: losses of steps 1-3 and the loss on batch 4 after them."""
    from bench.peers.numpy_peer import make
    from bench.workloads import read_npz

    data, params = read_npz(npz)
    r = make("numpy", WORKLOADS[wid], data, params)
    return [r.step(0), r.step(1), r.step(2), r.loss_at(3)]


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat; (0, 0) where unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle, sum(v[:8])


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_worker(
    peer: str,
    wid: str,
    npz: str,
    cache: str,
    budget: float,
    min_epochs: int,
    timeout: float,
    spec_cache: str | None = None,
) -> dict:
    """One worker process; `spec_cache` (symgrad's cache of generated modules) defaults to one inside `cache`."""
    env = dict(os.environ, **THREAD_ENV)
    env.update(
        {
            "SYMGRAD_CACHE": spec_cache or os.path.join(cache, "symgrad"),
            "NUMBA_CACHE_DIR": os.path.join(cache, "numba"),
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
            "BENCH_JAX_CACHE": os.path.join(cache, "jax"),
            "BENCH_DTYPE": WORKLOADS[wid].dtype,
            "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    cmd = [sys.executable, "-m", "bench.worker", peer, wid, npz, str(budget), str(min_epochs)]
    t = time.perf_counter()
    busy0, total0 = _cpu_jiffies()
    own0 = _children_cpu_s()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("BENCH_RESULT "):
            res = json.loads(line[len("BENCH_RESULT ") :])
            break
    else:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        res = {"status": "error", "reason": f"exit {p.returncode}: {tail[:200]}"}
    res["wall_s"] = time.perf_counter() - t
    busy1, total1 = _cpu_jiffies()
    if total1 > total0:
        # CPU used by other processes on the machine while this worker ran, as a fraction of all cores
        tick = os.sysconf("SC_CLK_TCK")
        foreign = (busy1 - busy0) / tick - (_children_cpu_s() - own0)
        res["foreign_load"] = max(0.0, foreign / ((total1 - total0) / tick))
    return res


def machine_info() -> dict:
    info = {
        "cpu": "unknown",
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for mod in ("torch", "jax", "optax", "numba", "scipy"):
        try:
            out = subprocess.run(
                [sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            info[mod] = out or "missing"
        except subprocess.TimeoutExpired:
            info[mod] = "?"
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, short timing budgets")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, e.g. W1,W3")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 4, --quick 2)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed training epochs per process")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a worker process is killed")
    ap.add_argument("--out", default=RESULTS, help="markdown results file")
    ap.add_argument("--render", metavar="JSON", help="only re-render the tables from a saved raw .json")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            _write(json.load(f), args.out)
        return
    wids = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for bad in [w for w in wids if w not in WORKLOADS] + [p for p in peers if p not in PEERS]:
        ap.error(f"unknown workload or peer: {bad}")
    rounds = args.rounds or (2 if args.quick else 4)
    budget = args.budget or (0.25 if args.quick else 1.0)
    min_epochs = 2 if args.quick else 3

    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="symgrad-bench-")
    try:
        info = machine_info()
        peak = blas_peak_gflops()
        print(f"machine: {info['cpu']}, {info['cores']} cores; every peer limited to {THREADS} threads")
        print(f"BLAS peak (numpy 2048x2048 float32 matmul): {peak:.1f} GFLOP/s")
        npz, refs = {}, {}
        for wid in wids:
            npz[wid] = os.path.join(tmp, f"{wid}.npz")
            write_npz(WORKLOADS[wid], npz[wid])
            refs[wid] = reference_check(wid, npz[wid])
        results: dict[tuple[str, str], list[dict]] = {(w, p): [] for w in wids for p in peers}
        dead: set[tuple[str, str]] = set()
        for r in range(rounds):
            order = peers[r % len(peers) :] + peers[: r % len(peers)]
            for wid in wids:
                for peer in order:
                    if (wid, peer) in dead:
                        continue
                    cache = os.path.join(tmp, "cache", f"{peer}-{wid}")
                    res = run_worker(peer, wid, npz[wid], cache, budget, min_epochs, args.timeout)
                    res["round"] = r
                    results[(wid, peer)].append(res)
                    if res["status"] == "ok":
                        print(
                            f"[round {r + 1}/{rounds}] {wid} {peer:13s} {1 / res['step_s']:10.1f} steps/s"
                            f"  first step {res['first_step_s']:6.2f} s  ({res['wall_s']:.1f} s,"
                            f" other load {100 * res.get('foreign_load', 0):.0f}%)",
                            flush=True,
                        )
                    else:
                        print(
                            f"[round {r + 1}/{rounds}] {wid} {peer:13s} {res['status']}: {res['reason']}",
                            flush=True,
                        )
                        dead.add((wid, peer))
        new_spec = {}
        if "symgrad" in peers:
            # A new spec on a machine where symgrad has run before: symgrad's own kernels (optimizer step, BLAS
            # and view helpers) are in Numba's cache from round 1, the spec's generated module and its kernels are
            # not (a fresh symgrad cache: rendered and compiled from scratch).
            for wid in wids:
                cache = os.path.join(tmp, "cache", f"symgrad-{wid}")
                fresh = os.path.join(tmp, "cache", f"symgrad-{wid}-new-spec")
                res = run_worker("symgrad", wid, npz[wid], cache, 0.05, 1, args.timeout, spec_cache=fresh)
                if res["status"] == "ok":
                    new_spec[wid] = res["first_step_s"]
                    print(f"[new spec] {wid} symgrad first step {res['first_step_s']:6.2f} s", flush=True)
        peak = max(peak, blas_peak_gflops())  # again at the end: other processes may have been busy at the start
        raw = {
            "wids": wids,
            "peers": peers,
            "results": [[w, p, runs] for (w, p), runs in results.items()],
            "refs": refs,
            "peak": peak,
            "new_spec": new_spec,
            "info": info,
            "rounds": rounds,
            "budget": budget,
            "command": " ".join(["python -m bench"] + (argv if argv is not None else sys.argv[1:])),
            "elapsed": time.perf_counter() - t_start,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1)
    _write(raw, args.out)


def _write(raw: dict, out: str) -> None:
    results = {(w, p): runs for w, p, runs in raw["results"]}
    args = [raw[k] for k in ("wids", "peers")] + [results] + [raw[k] for k in ("refs", "peak", "info")]
    text = render(*args, raw["rounds"], raw["budget"], raw["command"], raw["elapsed"], raw.get("new_spec", {}))
    print()
    print(text)
    with open(out, "w") as f:
        f.write(text)
    print(f"written to {os.path.relpath(out, os.getcwd())} (raw figures beside it, .json)")


if __name__ == "__main__":
    main()
