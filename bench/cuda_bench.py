"""symgrad CUDA vs PyTorch CUDA on the GPU workloads W2, W3, W4 (bench/workloads.py): training steps per second.

Both peers see the same data, initial weights and Adam settings; parameters, optimizer state and the epoch's data
live on the GPU for both. symgrad runs each epoch through `_train_steps_dev` (one launch sequence per step, no
copy back until the end); PyTorch runs its eager step (zero_grad, forward, backward, Adam with foreach), and,
with --compile, `torch.compile` of that step. Each figure is the best of --repeats timed epochs after one warm-up
epoch (compilation excluded).

    python -m bench.cuda_bench [--workloads W2 W3 W4] [--repeats 5] [--compile] [--out bench/CUDA_RESULTS.md]
    NUMBA_ENABLE_CUDASIM=1 python -m bench.cuda_bench --smoke   # logic check without a GPU (tiny, untimed)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.workloads import ADAM_EPS, BETA1, BETA2, LR, WORKLOADS, init_params, make_data  # noqa: E402

TARGETS = {
    "W2": "ahead of PyTorch (ratio > 1)",
    "W3": "within 1.5x (ratio >= 0.67)",
    "W4": "ahead of PyTorch (ratio > 1)",
}


def symgrad_runner(wid: str, data: dict, params: dict, smoke: bool):
    from numba import cuda

    from symgrad.backends.cuda.device import CudaSession
    from symgrad.runtime.loader import load_cuda

    w = WORKLOADS[wid]
    m = load_cuda(ROOT / "bench" / "specs" / f"{wid.lower()}.yaml")
    theta = m.flatten(params, w.np_dtype)
    state = np.zeros((2, m.N_THETA), w.np_dtype)
    hyper = np.array([0.0, BETA1, BETA2, ADAM_EPS])
    sess = CudaSession(m, theta, state, 3, hyper)
    n = data["x"].shape[0]
    inputs_d = sess.to_device(*[data[name] for name, _, _ in m.INPUTS])
    lrs = np.full(n, LR)
    consts = np.tile(m.consts_vector(None), (n, 1))
    gscale = float(m.SIGN) / w.batch

    def epoch():
        losses_d, _status = sess.run_async(lrs, consts, gscale, inputs_d)
        cuda.synchronize()
        return losses_d

    def first_loss():
        return float(epoch().copy_to_host()[0]) / w.batch

    return epoch, first_loss, n


def torch_runner(wid: str, data: dict, params: dict, compiled: bool):
    import torch
    import torch.nn.functional as F

    from bench.workloads import param_shapes

    w = WORKLOADS[wid]
    dev = torch.device("cuda")
    p = {name: torch.nn.Parameter(torch.tensor(params[name], device=dev)) for name, _, _ in param_shapes(w)}
    opt = torch.optim.Adam(list(p.values()), lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS)
    xs = torch.tensor(data["x"], device=dev)
    if w.kind == "vae":
        others = torch.tensor(data["eps"], device=dev)
    else:
        others = torch.tensor(data["labels"], device=dev)

    def loss_fn(x, other):
        if w.kind == "vae":
            h = torch.tanh(F.linear(x, p["We"], p["be"]))
            mu = F.linear(h, p["Wm"], p["bm"])
            lv = F.linear(h, p["Wv"], p["bv"])
            z = mu + torch.exp(0.5 * lv) * other
            logits = F.linear(torch.tanh(F.linear(z, p["Wd"], p["bd"])), p["Wo"], p["bo"])
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1.0 + lv - mu * mu - torch.exp(lv))
            return (rec + kl) / x.shape[0]
        n = len(w.layers) - 1
        a = x
        for k in range(1, n + 1):
            a = F.linear(a, p[f"W{k}"], p[f"b{k}"])
            if k < n:
                a = torch.relu(a)
        return F.cross_entropy(a, other)

    def step(x, other):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, other)
        loss.backward()
        opt.step()
        return loss.detach()

    fn = torch.compile(step) if compiled else step
    n = xs.shape[0]
    first = []

    def epoch():
        for i in range(n):
            loss = fn(xs[i], others[i])
            if not first:
                first.append(float(loss))
        torch.cuda.synchronize()

    def first_loss():
        epoch()
        return first[0]

    return epoch, first_loss, n


def best_rate(epoch, n_steps: int, repeats: int) -> float:
    epoch()  # warm-up: compilation, allocation
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch()
        best = min(best, time.perf_counter() - t0)
    return n_steps / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["W2", "W3", "W4"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the train step")
    ap.add_argument("--smoke", action="store_true", help="2 steps of each workload, no timing (simulator check)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "CUDA_RESULTS.md"))
    args = ap.parse_args()
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    rows = []
    for wid in args.workloads:
        w = WORKLOADS[wid]
        data = make_data(w)
        params = init_params(w)
        if args.smoke:
            data = {k: v[:2, :2] for k, v in data.items()}
        ep, first, n = symgrad_runner(wid, data, params, args.smoke)
        l_sym = first()
        if args.smoke:
            print(f"{wid}: symgrad CUDA first-step loss {l_sym:.6f} over {n} steps (smoke, untimed)")
            continue
        r_sym = best_rate(ep, n, args.repeats)
        ep_t, first_t, _ = torch_runner(wid, data, params, compiled=False)
        l_torch = first_t()
        r_torch = best_rate(ep_t, n, args.repeats)
        r_comp = None
        if args.compile:
            ep_c, first_c, _ = torch_runner(wid, data, params, compiled=True)
            first_c()
            r_comp = best_rate(ep_c, n, args.repeats)
        rows.append((wid, w, n, r_sym, r_torch, r_comp, l_sym, l_torch))
        print(
            f"{wid}: symgrad {r_sym:.0f} steps/s, torch {r_torch:.0f} steps/s, ratio {r_sym / r_torch:.2f}; "
            f"first loss {l_sym:.6f} vs {l_torch:.6f}",
            flush=True,
        )
    if args.smoke or sim:
        return 0
    write_results(args.out, rows, args.repeats)
    return 0


def write_results(path: str, rows: list, repeats: int) -> None:
    import numba
    import torch
    from numba import cuda

    name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else name
    lines = [
        "# symgrad CUDA vs PyTorch CUDA",
        "",
        f"Device: {name}; numba {numba.__version__}, torch {torch.__version__}. "
        "Written by `python -m bench.cuda_bench`.",
        f"Training steps per second (Adam, float32), best of {repeats} epochs after a warm-up epoch; params, optimizer",
        "state and data resident on the GPU for both. Ratio = symgrad / PyTorch eager (higher is better for symgrad).",
        "",
        "| workload | steps/epoch | symgrad CUDA steps/s | PyTorch CUDA steps/s | ratio | torch.compile steps/s "
        "| first-step loss symgrad / torch | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for wid, w, n, r_sym, r_torch, r_comp, l_sym, l_torch in rows:
        comp = f"{r_comp:.0f}" if r_comp else "-"
        lines.append(
            f"| {wid}: {w.title} | {n} | {r_sym:.0f} | {r_torch:.0f} | {r_sym / r_torch:.2f} | {comp} "
            f"| {l_sym:.6f} / {l_torch:.6f} | {TARGETS.get(wid, '-')} |"
        )
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
