"""Markdown tables from the workers' results (the same text is printed and written to RESULTS.md)."""

from __future__ import annotations

import statistics
import time

from bench.workloads import WORKLOADS, train_flops_per_step

RTOL = {"float32": 1e-3, "float64": 1e-8}
REF_PEER = "jax.jit"

METHOD = [
    "- Identical maths and data in every peer: the orchestrator draws the initial weights "
    "(U(+-1/sqrt(fan_in)) for weights and biases, numpy `default_rng(0)`), the synthetic data and "
    "the VAE noise (`default_rng(1)`), batches them (no shuffling, trailing partial batch dropped) "
    "and hands one .npz to every process. W4 uses one pre-drawn eps per step, reused every epoch, "
    "and the first 1437 digits binarised at pixel > 7.",
    "- Peers: NumPy by hand (forward, backward and Adam written out on one flat parameter vector); "
    "PyTorch eager (`torch.optim.Adam`, defaults); `torch.compile` (default mode) of the whole step "
    "function `zero_grad; loss; backward; opt.step`; `jax.jit` of value_and_grad + optax.adam + "
    "apply_updates with params and optimizer state donated, the epoch a Python loop synchronised at "
    "its end; symgrad (specs in bench/specs/) through `_train_epoch` (one compiled call per epoch) "
    "and `_loss` (one call per batch).",
    "- Per-step times: training step = epoch time / steps; forward = the same for a forward-only "
    "loss pass (torch `no_grad`, compiled for torch.compile; a jitted loss for jax; `_loss` for "
    "symgrad); bwd+update = training step - forward.",
    "- First step: wall time from the start of the worker process's main module (before the "
    "framework is imported; Python start-up itself excluded) until the first training step's loss "
    "is available: import, model build or code generation, compilation, one step. Cold = round 1 "
    "with empty symgrad (generated code), Numba, TorchInductor and JAX persistent caches; warm "
    "cache = median of later rounds (new processes reusing those caches; NumPy and torch eager "
    "have nothing to cache, their figure is just a second start). New spec (symgrad): a spec never "
    "built on this machine, after symgrad has run once there: a fresh symgrad cache (the spec is rendered "
    "and its kernels compiled) beside round 1's Numba cache, which holds symgrad's own kernels (the "
    "optimizer step, the BLAS and view helpers: compiled once per machine and version). For the other "
    "peers a new model is their cold figure: their caches are keyed by the model.",
    "- 'other load' = CPU time used by processes other than the worker while it ran, as a share of "
    "the machine (from /proc/stat minus the worker's own CPU time).",
    "- Peak RSS = the worker process's maximum resident set (`getrusage` ru_maxrss) at its end: the "
    "framework, the workload's data (the whole epoch of batches), the model, optimizer state and "
    "compilation; median over rounds.",
]


def _ok(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["status"] == "ok"]


def _why(runs: list[dict]) -> str:
    bad = [r for r in runs if r["status"] != "ok"]
    return f"{bad[0]['status']}: {bad[0]['reason']}" if bad else "not run"


def _sps(runs: list[dict]) -> list[float]:
    return [1.0 / r["step_s"] for r in _ok(runs)]


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _load(runs: list[dict]) -> str:
    vals = [r["foreign_load"] for r in runs if "foreign_load" in r]
    return f"{100 * statistics.median(vals):.0f}%" if vals else "?"


def _quietest(runs: list[dict]) -> dict:
    return min(_ok(runs), key=lambda r: r.get("foreign_load", 0.0))


def _quiet(runs: list[dict]) -> str:
    q = _quietest(runs)
    return f"{_fmt_rate(1.0 / q['step_s'])} ({100 * q.get('foreign_load', 0.0):.0f}%)"


def _fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.3f}x"


# Why a peer can disagree with the reference; shown under the check table when that row fails.
KNOWN = {
    ("torch.compile", "float64"): "torch.compile of `torch.optim.Adam` computes the bias corrections from the "
    "optimizer's float32 `step` tensor, so float64 updates are only float32-accurate (~2e-7 relative; "
    "measured: compiling only `opt.step()` gives the same error, compiling only the forward gives none). "
    "A property of torch.compile, not of the benchmark.",
}


def _check(runs: list[dict], ref: list[float], rtol: float) -> tuple[float, bool]:
    got = _ok(runs)[0]["check"]
    err = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(got, ref, strict=False))
    return err, err <= rtol


def render(wids, peers, results, refs, peak, info, rounds, budget, command, elapsed, new_spec=None) -> str:
    new_spec = new_spec or {}
    out: list[str] = ["# symgrad training-step benchmark", ""]
    vers = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "numba", "scipy", "torch", "jax", "optax"))
    out += [
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; command: `{command}`; total {elapsed / 60:.1f} min",
        f"- machine: {info['cpu']}, {info['cores']} cores; {vers}",
        "- threads: every peer may use both cores and no more (OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS=2, "
        "`torch.set_num_threads(2)`; XLA's CPU pool is sized by the 2 cores); OMP_WAIT_POLICY=PASSIVE for all",
        f"- BLAS peak: **{peak:.1f} GFLOP/s** (numpy 2048x2048 float32 matmul, 2 threads, best of 2x8 "
        "timings at the start and the end of the run)",
        f"- {rounds} rounds, each peer in a fresh process, peer order rotated each round; per process "
        "one warm-up "
        f"epoch, then at least 3 (quick: 2) timed epochs and >= {budget:g} s; steps/s = steps / "
        "median epoch time; "
        "headline = median over rounds, min-max over rounds",
    ]
    loads = [r["foreign_load"] for runs in results.values() for r in runs if "foreign_load" in r]
    if loads:
        out.append(
            f"- load from other processes while the workers ran: median {100 * statistics.median(loads):.0f}%, "
            f"max {100 * max(loads):.0f}% of the machine's CPU (column 'other load' below); high values mean "
            "the figures measure contention as much as the peers"
        )
    out.append("")

    # summary
    out += [
        "## Steps per second (median over rounds)",
        "",
        "| workload | " + " | ".join(peers) + f" | symgrad / {REF_PEER} |",
        "|---" * (len(peers) + 2) + "|",
    ]
    for wid in wids:
        cells = []
        for p in peers:
            s = _sps(results[(wid, p)])
            cells.append(_fmt_rate(statistics.median(s)) if s else "unavailable")
        sg, jx = _sps(results.get((wid, "symgrad"), [])), _sps(results.get((wid, REF_PEER), []))
        ratio = _fmt_ratio(statistics.median(sg) / statistics.median(jx)) if sg and jx else "-"
        out.append(f"| {wid} | " + " | ".join(cells) + f" | {ratio} |")
    out.append("")

    # loss check
    notes: list[str] = []
    out += [
        "## Loss check against the NumPy reference",
        "",
        "Mean batch loss of training steps 1, 2, 3 (before each update) and forward loss on batch 4 after "
        "the 3 updates, from the same initial weights; relative error = max over the 4 values.",
        "",
        "| workload | peer | step 1 | step 2 | step 3 | after 3 steps | max rel err | rtol | agrees |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for wid in wids:
        rtol = RTOL[WORKLOADS[wid].dtype]
        ref = refs[wid]
        out.append(f"| {wid} | reference | " + " | ".join(f"{v:.10g}" for v in ref) + " | - | - | - |")
        for p in peers:
            runs = results[(wid, p)]
            if not _ok(runs):
                out.append(f"| {wid} | {p} | {_why(runs)} | | | | | | |")
                continue
            err, good = _check(runs, ref, rtol)
            vals = " | ".join(f"{v:.10g}" for v in _ok(runs)[0]["check"])
            out.append(f"| {wid} | {p} | {vals} | {err:.1e} | {rtol:g} | {'yes' if good else '**NO**'} |")
            why = KNOWN.get((p, WORKLOADS[wid].dtype))
            if not good and why and why not in notes:
                notes.append(why)
    out.append("")
    out += [f"Note: {n}" for n in notes] + ([""] if notes else [])

    # per workload detail
    for wid in wids:
        w = WORKLOADS[wid]
        jx = _sps(results.get((wid, REF_PEER), []))
        jmed = statistics.median(jx) if jx else None
        n_steps = next((r["n_steps"] for p in peers for r in _ok(results[(wid, p)])), "?")
        out += [
            f"## {wid}: {w.title}",
            "",
            f"batch {w.batch}, {w.dtype}, {n_steps} steps per epoch, Adam lr 1e-3.",
            "",
            f"| peer | steps/s | min-max | vs {REF_PEER} | fwd us/step | bwd+update us/step | import s "
            "| first step, cold s | first step, new spec s | first step, warm cache s | peak RSS MB | other load "
            "| quietest round steps/s (load) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in peers:
            runs = results[(wid, p)]
            ok = _ok(runs)
            if not ok:
                out.append(f"| {p} | {_why(runs)} | | | | | | | | | | | |")
                continue
            s = _sps(runs)
            med = statistics.median(s)
            ratio = _fmt_ratio(med / jmed) if jmed else "-"
            fwd = statistics.median(r["fwd_s"] for r in ok) * 1e6
            bwd = statistics.median(r["step_s"] - r["fwd_s"] for r in ok) * 1e6
            imp = statistics.median(r["import_s"] for r in ok)
            cold = [r["first_step_s"] for r in ok if r["round"] == 0]
            warm = [r["first_step_s"] for r in ok if r["round"] > 0]
            rss = [r["peak_rss_mb"] for r in ok if "peak_rss_mb" in r]
            out.append(
                f"| {p} | {_fmt_rate(med)} | {_fmt_rate(min(s))}-{_fmt_rate(max(s))} | {ratio} | {fwd:,.0f} "
                f"| {bwd:,.0f} | {imp:.2f} | {f'{cold[0]:.2f}' if cold else '-'} "
                f"| {f'{new_spec[wid]:.2f}' if p == 'symgrad' and wid in new_spec else '-'} "
                f"| {f'{statistics.median(warm):.2f}' if warm else '-'} "
                f"| {f'{statistics.median(rss):,.0f}' if rss else '-'} | {_load(ok)} | {_quiet(ok)} |"
            )
        out.append("")

    if "W3" in wids:
        flops = train_flops_per_step(WORKLOADS["W3"])
        out += [
            "## W3 arithmetic throughput",
            "",
            f"Model FLOPs per training step (matrix products only: forward, dW, dX except the first layer): "
            f"{flops / 1e9:.3f} GFLOP. BLAS peak {peak:.1f} GFLOP/s.",
            "",
            "| peer | GFLOP/s (median round) | % of BLAS peak | GFLOP/s (quietest round) | % of BLAS peak |",
            "|---|---|---|---|---|",
        ]
        for p in peers:
            s = _sps(results[("W3", p)])
            if not s:
                out.append(f"| {p} | {_why(results[('W3', p)])} | | | |")
                continue
            g = flops * statistics.median(s) / 1e9
            gq = flops / _quietest(results[("W3", p)])["step_s"] / 1e9
            out.append(f"| {p} | {g:.1f} | {100 * g / peak:.0f}% | {gq:.1f} | {100 * gq / peak:.0f}% |")
        out.append("")

    out += [
        "## Method",
        "",
        *METHOD,
        "",
    ]
    return "\n".join(out)
