"""symgrad through the private contract of docs/internals.md: one flat theta, `_train_epoch` runs a whole
epoch (forward, backward, Adam) in one compiled call; `_loss` is the forward-only kernel."""

from __future__ import annotations

import os

import numpy as np

import symgrad
from bench.workloads import ADAM_EPS, BETA1, BETA2, LR, Workload
from symgrad.runtime import blas, warmup

SPEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs")
ADAM = 3


class SymgradRunner:
    def __init__(self, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]):
        m = symgrad.load(os.path.join(SPEC_DIR, f"{w.wid.lower()}.yaml"))
        self.m = m
        dt = w.np_dtype
        warmup.start(np.dtype(dt).name, m)  # what symgrad.Trainer does: a first-ever run compiles on both cores
        self.n_steps = data["x"].shape[0]
        self.batch = w.batch
        self.theta = m.flatten(params, dt)
        self.grad = np.zeros(m.N_THETA, dt)
        self.state = np.zeros((2, m.N_THETA), dt)
        self.hyper = np.array([0.0, BETA1, BETA2, ADAM_EPS], dtype=np.float64)
        self.lrs = np.full(self.n_steps, LR, dtype=np.float64)
        self.consts = np.asarray(m.consts_vector(None), dtype=np.float64)
        self.consts_steps = np.ascontiguousarray(np.broadcast_to(self.consts, (self.n_steps, len(self.consts))))
        self.gscale = float(m.SIGN) / w.batch  # reduction: mean
        self.t = 0
        self.blas_threads = blas.threads_for(m.N_THETA, w.batch)  # what symgrad.Trainer uses
        # inputs in the module's INPUTS order, each (n_steps, B, *per_sample_shape) in theta's dtype
        self.inputs = [np.ascontiguousarray(data[name], dtype=dt) for name, _, _ in m.INPUTS]

    def settle(self) -> None:
        """Let the warm-up worker finish before the timed steps: it would share the cores with them."""
        warmup.wait()

    def _run(self, lo: int, hi: int) -> np.ndarray:
        ins = [a[lo:hi] for a in self.inputs]
        with blas.limit(self.blas_threads):
            losses, n_done = self._train(lo, hi, ins)
        if n_done != hi - lo:
            raise RuntimeError(f"symgrad stopped at step {self.t + n_done}: non-finite loss or gradient")
        self.t += hi - lo
        return losses

    def _train(self, lo: int, hi: int, ins: list):
        return self.m._train_epoch(
            self.theta,
            self.grad,
            self.state,
            ADAM,
            self.hyper,
            self.t,
            self.lrs[: hi - lo],
            self.consts_steps[: hi - lo],
            0.0,
            self.gscale,
            *ins,
        )

    def step(self, i: int) -> float:
        return float(self._run(i, i + 1)[0]) / self.batch

    def loss_at(self, i: int) -> float:
        return float(self.m._loss(self.theta, self.consts, *[a[i] for a in self.inputs])) / self.batch

    def epoch(self) -> None:
        self._run(0, self.n_steps)

    def forward_epoch(self) -> None:
        loss, th, c = self.m._loss, self.theta, self.consts
        with blas.limit(self.blas_threads):
            for i in range(self.n_steps):
                loss(th, c, *[a[i] for a in self.inputs])


def make(peer: str, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> SymgradRunner:
    return SymgradRunner(w, data, params)
