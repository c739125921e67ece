"""PyTorch eager, and `torch.compile` of the whole train step (zero_grad, forward, backward, Adam step),
as the PyTorch documentation recommends; Dynamo splits it at `backward()` and compiles both halves."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.workloads import ADAM_EPS, BETA1, BETA2, LR, Workload, param_shapes

torch.set_num_threads(2)


class TorchRunner:
    def __init__(self, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray], compiled: bool):
        self.w = w
        self.n_steps = data["x"].shape[0]
        self.p = {name: torch.nn.Parameter(torch.tensor(params[name])) for name, _, _ in param_shapes(w)}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS)
        self.xs = [torch.from_numpy(a) for a in data["x"]]
        if w.kind == "vae":
            self.others = [torch.from_numpy(a) for a in data["eps"]]
        elif w.loss == "ce":
            self.others = [torch.from_numpy(a) for a in data["labels"]]
        else:
            self.others = [torch.from_numpy(a) for a in data["y"]]
        self._step = torch.compile(self._train_step) if compiled else self._train_step
        self._fwd = torch.compile(self._forward_nograd) if compiled else self._forward_nograd

    def _loss(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        p, w = self.p, self.w
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
                a = torch.tanh(a) if w.act == "tanh" else torch.relu(a)
        return F.mse_loss(a, other) if w.loss == "mse" else F.cross_entropy(a, other)

    def _train_step(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(x, other)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _forward_nograd(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._loss(x, other)

    def step(self, i: int) -> float:
        return float(self._step(self.xs[i], self.others[i]))

    def loss_at(self, i: int) -> float:
        return float(self._fwd(self.xs[i], self.others[i]))

    def epoch(self) -> None:
        for x, o in zip(self.xs, self.others, strict=False):
            loss = self._step(x, o)
        float(loss)

    def forward_epoch(self) -> None:
        for x, o in zip(self.xs, self.others, strict=False):
            loss = self._fwd(x, o)
        float(loss)


def make(peer: str, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> TorchRunner:
    return TorchRunner(w, data, params, compiled=(peer == "torch.compile"))
