"""`jax.jit` of the whole train step (value_and_grad + optax Adam + apply_updates), parameters and optimizer
state donated; the epoch is a Python loop over pre-split device arrays, synchronised once at its end."""

from __future__ import annotations

import os

import jax  # noqa: E402
import numpy as np

if os.environ.get("BENCH_DTYPE") == "float64":
    jax.config.update("jax_enable_x64", True)
if os.environ.get("BENCH_JAX_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["BENCH_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from bench.workloads import ADAM_EPS, BETA1, BETA2, LR, Workload  # noqa: E402


def _loss_fn(w: Workload):
    n = len(w.layers) - 1

    def mlp(p, x, y):
        a = x
        for k in range(1, n + 1):
            a = a @ p[f"W{k}"].T + p[f"b{k}"]
            if k < n:
                a = jnp.tanh(a) if w.act == "tanh" else jax.nn.relu(a)
        if w.loss == "mse":
            return jnp.mean((a - y) ** 2)
        return jnp.mean(optax.softmax_cross_entropy(a, y))

    def vae(p, x, eps):
        h = jnp.tanh(x @ p["We"].T + p["be"])
        mu = h @ p["Wm"].T + p["bm"]
        lv = h @ p["Wv"].T + p["bv"]
        z = mu + jnp.exp(0.5 * lv) * eps
        logits = jnp.tanh(z @ p["Wd"].T + p["bd"]) @ p["Wo"].T + p["bo"]
        rec = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x))
        kl = -0.5 * jnp.sum(1.0 + lv - mu * mu - jnp.exp(lv))
        return (rec + kl) / x.shape[0]

    return vae if w.kind == "vae" else mlp


class JaxRunner:
    def __init__(self, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]):
        self.n_steps = data["x"].shape[0]
        self.params = {k: jnp.asarray(v) for k, v in params.items()}
        opt = optax.adam(LR, b1=BETA1, b2=BETA2, eps=ADAM_EPS)
        self.opt_state = opt.init(self.params)
        loss_fn = _loss_fn(w)
        other = data["eps"] if w.kind == "vae" else data["y"]
        self.xs = [jnp.asarray(a) for a in data["x"]]
        self.others = [jnp.asarray(a) for a in other]

        def train_step(params, opt_state, x, o):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, o)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = jax.jit(train_step, donate_argnums=(0, 1))
        self._fwd = jax.jit(loss_fn)

    def step(self, i: int) -> float:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, self.xs[i], self.others[i])
        return float(loss)

    def loss_at(self, i: int) -> float:
        return float(self._fwd(self.params, self.xs[i], self.others[i]))

    def epoch(self) -> None:
        p, s = self.params, self.opt_state
        for x, o in zip(self.xs, self.others, strict=False):
            p, s, loss = self._step(p, s, x, o)
        self.params, self.opt_state = p, s
        loss.block_until_ready()

    def forward_epoch(self) -> None:
        p = self.params
        jax.block_until_ready([self._fwd(p, x, o) for x, o in zip(self.xs, self.others, strict=False)])


def make(peer: str, w: Workload, data: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> JaxRunner:
    return JaxRunner(w, data, params)
