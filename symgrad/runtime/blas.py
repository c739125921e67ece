"""How many BLAS threads a generated kernel's matrix products get.

Numba's `np.dot` calls SciPy's OpenBLAS. For the small products of small models (a 64x128 layer on a batch of 64)
OpenBLAS's second thread costs more than it brings, and when another process holds a core its spinning threads
collapse throughput (measured here: W2 fell from ~8,000 to ~60 steps/s). So kernels whose largest product is small
run with one BLAS thread; big ones (W3: 256x784x512) keep every thread. The limit applies only around symgrad's
compiled calls and is restored after them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

SMALL_WORK = 4_000_000  # batch x parameters below which one BLAS thread is faster (see the module docstring)

_LIBS: list = []


def _blas_libs() -> list:
    """SciPy's OpenBLAS (what Numba links) found once; later calls are plain ctypes calls."""
    if not _LIBS:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba uses)
            from threadpoolctl import ThreadpoolController

            libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        except Exception:  # pragma: no cover - no threadpoolctl or an exotic BLAS: leave threads alone
            libs = []
        _LIBS.append(libs)
    return _LIBS[0]


def threads_for(n_theta: int, batch_size: int) -> int | None:
    """1 for small steps, None (the library's default) for large ones."""
    return 1 if n_theta * max(batch_size, 1) < SMALL_WORK else None


@contextlib.contextmanager
def limit(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    libs = _blas_libs()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, n in zip(libs, before, strict=True):
            lib.set_num_threads(n)
