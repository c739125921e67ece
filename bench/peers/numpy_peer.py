"""NumPy by hand: forward, backward and Adam written out, on one flat parameter vector (as symgrad does),
so that Adam is a handful of whole-vector operations."""

from __future__ import annotations

import numpy as np

from bench.workloads import ADAM_EPS, BETA1, BETA2, LR, Workload, param_shapes


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class NumpyRunner:
    def __init__(self, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]):
        self.w, self.data = w, data
        self.n_steps = data["x"].shape[0]
        shapes = param_shapes(w)
        n = sum(int(np.prod(s)) for _, s, _ in shapes)
        dt = w.np_dtype
        self.theta, self.grad = np.empty(n, dt), np.zeros(n, dt)
        self.m, self.v = np.zeros(n, dt), np.zeros(n, dt)
        self.p, self.g = {}, {}
        off = 0
        for name, shape, _ in shapes:
            size = int(np.prod(shape))
            self.p[name] = self.theta[off : off + size].reshape(shape)
            self.g[name] = self.grad[off : off + size].reshape(shape)
            self.p[name][...] = params[name]
            off += size
        self.t = 0
        self.n_layers = len(w.layers) - 1

    def _batch(self, i: int):
        d = self.data
        return d["x"][i], d["eps"][i] if "eps" in d else d["y"][i]

    # ---- MLP ---------------------------------------------------------------------------------------
    def _mlp(self, x: np.ndarray, y: np.ndarray, grad: bool) -> float:
        p, g, L = self.p, self.g, self.n_layers
        acts = [x]
        a = x
        for k in range(1, L + 1):
            s = a @ p[f"W{k}"].T
            s += p[f"b{k}"]
            if k < L:
                a = np.tanh(s) if self.w.act == "tanh" else np.maximum(s, 0)
                acts.append(a)
        B = x.shape[0]
        if self.w.loss == "mse":
            r = s - y
            loss = float(np.mean(r * r))
            if not grad:
                return loss
            ds = r * (2.0 / r.size)
        else:
            mx = s.max(axis=1, keepdims=True)
            e = np.exp(s - mx)
            se = e.sum(axis=1, keepdims=True)
            loss = float(np.mean(np.log(se[:, 0]) + mx[:, 0] - np.sum(y * s, axis=1)))
            if not grad:
                return loss
            ds = (e / se - y) * (1.0 / B)
        for k in range(L, 0, -1):
            a = acts[k - 1]
            np.matmul(ds.T, a, out=g[f"W{k}"])
            np.sum(ds, axis=0, out=g[f"b{k}"])
            if k > 1:
                da = ds @ p[f"W{k}"]
                ds = da * (1.0 - a * a) if self.w.act == "tanh" else da * (a > 0)
        return loss

    # ---- VAE ---------------------------------------------------------------------------------------
    def _vae(self, x: np.ndarray, eps: np.ndarray, grad: bool) -> float:
        p, g = self.p, self.g
        B = x.shape[0]
        h = np.tanh(x @ p["We"].T + p["be"])
        mu = h @ p["Wm"].T + p["bm"]
        lv = h @ p["Wv"].T + p["bv"]
        std = np.exp(0.5 * lv)
        z = mu + std * eps
        gd = np.tanh(z @ p["Wd"].T + p["bd"])
        lo = gd @ p["Wo"].T + p["bo"]
        bce = np.maximum(lo, 0) - lo * x + np.log1p(np.exp(-np.abs(lo)))
        var = std * std
        kl = -0.5 * (1.0 + lv - mu * mu - var)
        loss = float((bce.sum() + kl.sum()) / B)
        if not grad:
            return loss
        inv_b = 1.0 / B
        dlo = (_sigmoid(lo) - x) * inv_b
        np.matmul(dlo.T, gd, out=g["Wo"])
        np.sum(dlo, axis=0, out=g["bo"])
        dsd = (dlo @ p["Wo"]) * (1.0 - gd * gd)
        np.matmul(dsd.T, z, out=g["Wd"])
        np.sum(dsd, axis=0, out=g["bd"])
        dz = dsd @ p["Wd"]
        dmu = dz + mu * inv_b
        dlv = dz * eps * std * 0.5 + (var - 1.0) * (0.5 * inv_b)
        np.matmul(dmu.T, h, out=g["Wm"])
        np.sum(dmu, axis=0, out=g["bm"])
        np.matmul(dlv.T, h, out=g["Wv"])
        np.sum(dlv, axis=0, out=g["bv"])
        dse = (dmu @ p["Wm"] + dlv @ p["Wv"]) * (1.0 - h * h)
        np.matmul(dse.T, x, out=g["We"])
        np.sum(dse, axis=0, out=g["be"])
        return loss

    # ---- runner interface --------------------------------------------------------------------------
    def _loss(self, i: int, grad: bool) -> float:
        x, other = self._batch(i)
        return (self._vae if self.w.kind == "vae" else self._mlp)(x, other, grad)

    def _adam(self) -> None:
        self.t += 1
        g, m, v = self.grad, self.m, self.v
        m *= BETA1
        m += (1.0 - BETA1) * g
        v *= BETA2
        v += (1.0 - BETA2) * (g * g)
        bc1, bc2 = 1.0 - BETA1**self.t, 1.0 - BETA2**self.t
        self.theta -= (LR / bc1) * m / (np.sqrt(v / bc2) + ADAM_EPS)

    def step(self, i: int) -> float:
        loss = self._loss(i, True)
        self._adam()
        return loss

    def loss_at(self, i: int) -> float:
        return self._loss(i, False)

    def epoch(self) -> None:
        for i in range(self.n_steps):
            self.step(i)

    def forward_epoch(self) -> None:
        for i in range(self.n_steps):
            self._loss(i, False)


def make(peer: str, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> NumpyRunner:
    return NumpyRunner(w, data, params)
