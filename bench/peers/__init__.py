"""One module per peer. Each exposes `make(workload, data, params) -> runner`; a runner has

- `step(i) -> float`: one training step (forward, backward, Adam) on batch i; returns the batch's mean loss
  before the update (synchronised, so a timer around it is honest);
- `loss_at(i) -> float`: forward-only mean loss on batch i with the current weights;
- `epoch()`: one training step per batch, in order, finished (synchronised) on return;
- `forward_epoch()`: the forward-only loss of every batch, finished on return.

Peer modules import their framework at import time, so the worker can time the import separately.
"""

PEERS = ("numpy", "torch", "torch.compile", "jax.jit", "symgrad")
MODULES = {
    "numpy": "bench.peers.numpy_peer",
    "torch": "bench.peers.torch_peer",
    "torch.compile": "bench.peers.torch_peer",
    "jax.jit": "bench.peers.jax_peer",
    "symgrad": "bench.peers.symgrad_peer",
}
