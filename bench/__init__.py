"""Training-step benchmark of symgrad against NumPy, PyTorch (eager and torch.compile) and jax.jit.

Run `python -m bench --help`; results go to bench/RESULTS.md.
"""
