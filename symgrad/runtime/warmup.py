"""Compile symgrad's own kernels into Numba's on-disk cache in a second process, the first time a machine trains.

A first training step on a machine compiles two things: the spec's generated kernels, and symgrad's runtime (the
optimizer step, the products in each operand layout, the float32 scalar forms), ~2 s of W4's 5 s and compiled once
per machine, symgrad and Numba version. Numba compiles on one core. `start` hands the runtime to a background
process on the other core (what torch.compile's parallel compile workers do for its kernels): the scalar forms
the model calls first, then the optimizer step, then the products, then the rest (`compile_runtime` says why in
that order). The first step loads what the worker has cached when it gets there and compiles the rest itself:
nothing waits on the worker, and its failure costs only time.

On by default; `SYMGRAD_WARMUP=0` turns it off. Two processes writing one Numba cache is safe because symgrad's
cache locks its index updates and checks every entry it loads (`jitcache._guard_entries`): it was opt-in until
that was so. A marker file (named by symgrad's source digest, Numba's and Python's versions, the CPU and the
dtype) says a machine is warm; a lock file (holding the worker's PID) keeps concurrent trainings to one worker.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

_DTYPES = ("float32", "float64")
_WORKERS: list[subprocess.Popen] = []
_STALE_LOCK_S = 300.0  # a worker that has not finished in 5 minutes is gone; another may start
_ROOT = str(Path(__file__).resolve().parents[2])  # the directory symgrad itself was imported from
# The worker is started with `-c` (not `-m`, which puts the working directory first on sys.path, where a user's own
# `symgrad/` or `numpy.py` would be imported instead) and imports symgrad from where this process did.
_LAUNCH = (
    "import sys; sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p]; "
    "from symgrad.runtime.warmup import _main; sys.exit(_main(sys.argv[2:]))"
)
# Set by the MPI launchers (Open MPI, MPICH/Intel MPI, Slurm): ranks already use the cores a worker would take.
_WORLD_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def _marker(dtype: str) -> Path:
    import numba

    from symgrad.backends.cpu import jitcache

    return (
        jitcache.entries_root() / f"warm-{jitcache.package_digest()[:16]}-{_machine()}-numba{numba.__version__}-{dtype}"
    )


def _machine() -> str:
    """What else Numba's entries depend on: Python's version and the CPU (a home directory shared by machines)."""
    import hashlib

    from llvmlite import binding

    cpu = f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()} {binding.get_host_cpu_name()} {_ROOT}"
    return hashlib.sha256(cpu.encode()).hexdigest()[:8]


def _wanted(dtype: str) -> bool:
    if dtype not in _DTYPES or os.environ.get("SYMGRAD_WARMUP", "1") == "0" or getattr(sys, "frozen", False):
        return False
    if any(_int(os.environ.get(name)) > 1 for name in _WORLD_SIZE_VARS):
        return False  # an MPI job: its ranks compile side by side already, on the cores a worker would take
    from numba.core import config

    # numba's config (set at its import, from the environment, .numba_config.yaml or code) or the environment now
    if config.DISABLE_JIT or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):  # type: ignore[attr-defined]
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return cores >= 2  # on one core the worker would only slow the first step down


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _stale(lock: Path) -> bool:
    """A lock left by a worker that is gone: its PID is not running, or it is older than `_STALE_LOCK_S`."""
    if time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
        return True
    pid = _int(lock.read_text(encoding="ascii", errors="replace").strip())
    if pid <= 0 or os.name == "nt":
        return False  # just made, its PID not written yet (or no cheap check here): the age alone decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def start(dtype: str, model: ModuleType | None = None) -> bool:
    """Start the background worker for `dtype` unless this machine is warm or one is running; True if started.
    `model`, a generated module, says which scalar forms to compile first (those its kernels call)."""
    dtype = str(dtype)
    if not _wanted(dtype):
        return False
    marker = _marker(dtype)
    lock = marker.with_name(marker.name + ".lock")
    try:
        if marker.exists():
            return False
        lock.parent.mkdir(parents=True, exist_ok=True)
        if lock.exists() and _stale(lock):
            lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:  # held by another worker, or the cache is not writable: nothing to do
        return False
    try:
        # not in the terminal's process group: Ctrl-C stops training, not this
        nt_group = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if os.name == "nt" else 0
        worker = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, _ROOT, dtype, str(lock), *used_forms(model)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=os.name != "nt",
            creationflags=nt_group,
        )
        os.write(fd, f"{worker.pid}\n".encode())
    except OSError:
        os.close(fd)
        lock.unlink(missing_ok=True)
        return False
    os.close(fd)
    _WORKERS.append(worker)
    return True


def wait(timeout: float = 120.0) -> None:
    """Wait for the workers this process started (the benchmark does, so that a worker still compiling does not
    share the cores with the steps it times); training never waits."""
    for worker in _WORKERS:
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


_FORMS = ("tanh", "exp", "log", "sigmoid_w", "log1p", "softplus_w", "expm1", "log_sigmoid_w")
_PLAIN = ("relu", "step", "sigmoid", "softplus", "log_sigmoid", "heaviside", "sign")
_CALL = re.compile(r"\b_mf\.([a-z_0-9]+)\(")


def used_forms(model: ModuleType | None) -> list[str]:
    """The scalar forms a generated module's kernels call (`_mf.tanh(...)`), read from its text."""
    path = getattr(model, "__file__", None)
    if not path:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    # in the order the kernels call them, which is the order a first step compiles them
    return list(dict.fromkeys(name for name in _CALL.findall(text) if name in _FORMS or name in _PLAIN))


def compile_runtime(dtype: str, first: tuple[str, ...] | list[str] = ()) -> None:
    """Compile (and so cache) every runtime kernel a CPU training step of `dtype` calls, with the argument types
    the generated kernels pass (tests/test_warmup.py checks that a first step then finds them in the cache)."""
    import numpy as np

    from symgrad.backends.cpu import mathfns as mf
    from symgrad.runtime import optim

    f = np.dtype(dtype).type
    n = 8
    theta, grad = np.zeros(n, f), np.zeros(n, f)
    # Order: a first step types its kernel top-down: the workspace, the first product, the scalar forms of the
    # forward, the backward's products, then the optimizer step, which it reaches ~1.5-2.5 s after this worker
    # starts. So: the scalar forms the model calls (`first`), the step, the products (whose shared core the first
    # step has usually compiled itself by then: each further layout is a small wrapper), then everything else, so
    # that the marker means the whole runtime is cached.
    xs = (f(0.5), 0.5)  # float32 kernels also mix in float64 constants

    def form(name: str) -> None:
        if name in _PLAIN:
            getattr(mf, name)(f(0.5))
        elif f is np.float32:  # float64 forms are math.* itself: nothing of symgrad's to compile
            for x in xs:
                mf.FAST32[name][1](x)

    def dispatch(name: str) -> None:  # one line around each form; last, as a first step compiles it in ~0.05 s
        call = _caller(getattr(mf, name))
        for x in xs:
            call(x, theta)

    wanted = [name for name in first if name in _FORMS or name in _PLAIN]
    for name in wanted:
        form(name)
    mf.total(theta)
    state = np.zeros((2, n), f)
    hyper = np.array([0.0, 0.9, 0.999, 1e-8])
    # the generated `_train_epoch` passes kind and t as int64, lr and clip_norm as float64, and the loss in the
    # parameters' dtype (the sum of a float32 array is float32)
    optim.gated_step(theta, grad, state, 3, 1e-3, hyper, 1, 0.0, f(0.0))
    c = np.zeros((4, 4), f)
    for prod in (mf.gemm, mf.gemm_acc):
        for a in (c, c.T):
            for b in (c, c.T):
                prod(a, b, np.zeros((4, 4), f))
    for name in (*_FORMS, *_PLAIN):
        if name not in wanted:
            form(name)
    mf.zeros(n)
    _caller(mf.scratch)(n, theta)
    for name in (*wanted, *(name for name in _FORMS if name not in wanted)):
        if name in _FORMS:
            dispatch(name)
    if f is np.float32:
        optim.gated_step(theta, grad, state, 3, 1e-3, hyper, 1, 0.0, 0.0)  # MPI's loop passes a Python float


def _caller(stub):
    """A jitted `stub(x, w)`: the dtype-aware forms are overloads, callable only from compiled code."""
    from numba import njit

    return njit(lambda x, w: stub(x, w))


def _main(argv: list[str]) -> int:
    dtype, lock, first = argv[0], Path(argv[1]), argv[2:]
    status = "ok"
    try:
        if hasattr(os, "nice"):
            os.nice(5)  # behind the user's own work when the machine is busy
        compile_runtime(dtype, first)
    except Exception as exc:  # noqa: BLE001  (a worker that fails costs time only; say so in the marker)
        status = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    try:
        from symgrad.artifacts import write_atomic

        # written on failure too: the same symgrad and Numba would fail the same way, so no run retries it
        write_atomic(_marker(dtype), f"{time.time():.0f} {status}\n")
    finally:
        lock.unlink(missing_ok=True)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
