"""Data-parallel training over MPI: `symgrad.train(..., comm=MPI.COMM_WORLD)`, `mpiexec -n N symgrad train`.

Design (docs/distributed.md has the cost model):

- **Same parameters everywhere.** Every rank builds the same `Trainer` from the same seed, so the epoch
  permutation and the sampled inputs (`sample: normal`) are drawn for the *global* batch by the same generator
  as a one-process run; each rank then takes its contiguous block of rows of every global batch
  (`shard(B)`: sizes differ by at most one).
- **One Allreduce per step.** `grad` is a view of the flat buffer `buf = [grad (N_THETA) | loss sum | flag | stop]`
  in theta's dtype. Each rank runs the compiled `_loss_grad` on its shard with the *global* gradient scale
  (SIGN / B_global for `mean`, SIGN * N_train / B_global for `sum`), writes its loss sum and a failure flag
  into two trailing slots (a third carries Ctrl-C, below), and one in-place `Allreduce(SUM)` gives every rank
  the global gradient, loss sum and failure count. Then, on every rank and on the global gradient: finiteness
  check, clipping, `symgrad.runtime.optim.update` -- the same sequence as the fused `_train_epoch` of one
  process, so results agree up to summation order.
- **Failures never hang.** A rank whose step raises or whose loss is not finite sets its flag; since the flag
  travels in the step's own reduction, all ranks see it at the same step and raise together (a
  `DistributedError` naming the rank, the step and the message, or `TrainingDiverged` naming the ranks whose
  shard was not finite). Set-up errors (bad data, unreadable checkpoint, a spec that does not build) are
  exchanged with one `allgather` before the first step, together with the run's configuration (spec digest,
  data shapes, epochs, batch size, optimizer, lr, schedule, dtype, ...) and a fingerprint of the data and the
  starting state: ranks that differ refuse to start, in one line naming the first difference. Checkpoint writing
  and the per-epoch callback run on rank 0 only, and their outcome is broadcast. Anything else that escapes on
  one rank cannot be agreed on (the others may be blocked in a reduction), so it ends the job with
  `comm.Abort(1)` after printing the rank, step and error -- inside `train`, and, once `train(comm=...)` has
  been called, for any exception the program does not catch (a `sys.excepthook`, as `python -m mpi4py` does).
  Errors raised on every rank together carry `all_ranks = True` and end the program normally.
- **Ctrl-C stops every rank at one step.** mpiexec forwards SIGINT to every rank, each at its own moment (one may
  be inside a kernel, another blocked in the Allreduce, which a KeyboardInterrupt cannot leave). So during
  training the first SIGINT only sets a flag; it travels in the step's own reduction (a third trailing slot), and
  every rank stops before the same step with the same parameters: `TrainingInterrupted` on every rank, the CLI
  saves them (rank 0) and exits 130, as one process does. A second Ctrl-C interrupts at once (and, landing on one
  rank alone, ends the job as any other one-rank error does).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from symgrad.errors import SymgradError, TrainingDiverged, TrainingInterrupted, UsageError
from symgrad.runtime.optim import gated_step, grad_norm_ok
from symgrad.runtime.trainer import Trainer, diverged_message

# Set by launchers in every process they start: Hydra (MPICH, Intel MPI), Open MPI, Slurm.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")


class DistributedError(SymgradError):
    """Raised on every rank, at the same point, when one or more ranks failed. `ranks`, `step` say where."""

    all_ranks = True  # raised on every rank together: nothing to abort

    def __init__(self, message: str, *, ranks: list[int], step: int | None = None, exit_code: int = 1):
        super().__init__(message)
        self.ranks = ranks
        self.step = step
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------- launching


def launched_size() -> int:
    """Number of processes the MPI launcher started (1 when not started by `mpiexec`)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher numbered it (0 when not started by `mpiexec`)."""
    if launched_size() <= 1:
        return 0
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


def world_comm() -> Any:
    """`MPI.COMM_WORLD` when this process was started by `mpiexec -n N` with N > 1, otherwise None.

    Looks at the launcher's environment first, so a plain `symgrad train` never initialises MPI.
    """
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError(
            "started by an MPI launcher with more than one process, but mpi4py is not installed: "
            "pip install 'symgrad[mpi]'"
        ) from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def is_root(comm: Any) -> bool:
    return comm is None or comm.Get_rank() == 0


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SymgradError) else f"{type(exc).__name__}: {exc}"


def _exit_code(exc: BaseException) -> int:
    return int(getattr(exc, "exit_code", 1))


def agree(comm: Any, exc: BaseException | None, what: str, extra: Any = None) -> list[Any]:
    """One `allgather` of (error, extra) per rank; raises `DistributedError` on every rank if any failed.

    Returns the gathered `extra` values otherwise. Every rank must call it at the same point.
    """
    mine = (None if exc is None else _describe(exc), _exit_code(exc) if exc is not None else 0, extra)
    gathered = comm.allgather(mine)
    failed = [(rank, msg, code) for rank, (msg, code, _) in enumerate(gathered) if msg is not None]
    if exc is not None and len(failed) == len(gathered) and len({msg for _, msg, _ in failed}) == 1:
        _mark_all_ranks(exc)
        raise exc  # the same error on every rank (a usage error, say): report it as one process would
    if failed:
        lines = "; ".join(f"rank {rank}: {msg}" for rank, msg, _ in failed)
        err = DistributedError(
            f"{what} failed on {_ranks_str([r for r, _, _ in failed])} ({lines})",
            ranks=[r for r, _, _ in failed],
            exit_code=max(code for _, _, code in failed),
        )
        raise err from exc
    return [extra for _, _, extra in gathered]


def collective(comm: Any, fn: Callable[[], Any], what: str) -> Any:
    """Run `fn()` on every rank and agree on the outcome: its value, or a `DistributedError` on all ranks."""
    if comm is None:
        return fn()
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is reported to every rank
        agree(comm, exc, what)
        raise  # pragma: no cover - agree raised
    agree(comm, None, what)
    return value


def _mark_all_ranks(exc: BaseException) -> None:
    try:
        exc.all_ranks = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - an exception type with __slots__
        pass


def raised_on_all_ranks(exc: BaseException) -> bool:
    """True for an error every rank raised at the same point (so no rank is left waiting)."""
    return bool(getattr(exc, "all_ranks", False))


ABORT_GRACE_S = 0.5


def abort(comm: Any, message: str) -> None:
    """Print one line and end every rank of the job: the only way out when the others may be blocked."""
    sys.stderr.write(f"symgrad: {message}; aborting all {comm.Get_size()} ranks\n")
    sys.stderr.flush()
    # MPICH's launcher tears the job down on Abort and can drop what a rank wrote just before it (seen: 1 run in
    # 4 of tests/test_mpi.py lost the whole message and traceback); give its stdio forwarding a moment first
    time.sleep(ABORT_GRACE_S)
    comm.Abort(1)


def abort_if_alone(exc: BaseException) -> None:
    """Under `mpiexec -n N` (N > 1): end the job when `exc` was raised on this rank alone (the CLI's last resort)."""
    if launched_size() <= 1 or raised_on_all_ranks(exc):
        return
    comm = world_comm()
    if comm is not None:
        abort(comm, f"rank {comm.Get_rank()} failed: {_describe(exc)}")


_HOOKED: list[Any] = []


def install_abort_hook(comm: Any) -> None:
    """An exception no one catches on one rank ends the whole job (as `python -m mpi4py` does), not a hang.

    Installed by `train(comm=...)`; errors raised on every rank together (`all_ranks`) exit normally.
    """
    if _HOOKED or comm.Get_size() <= 1:
        return
    previous = sys.excepthook

    def hook(tp, value, tb):
        previous(tp, value, tb)
        if not raised_on_all_ranks(value) and not issubclass(tp, KeyboardInterrupt):
            abort(comm, f"uncaught exception on rank {comm.Get_rank()}: {_describe(value)}")

    sys.excepthook = hook
    _HOOKED.append(hook)


def _ranks_str(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def _fingerprint(arrays: Mapping[str, np.ndarray]) -> tuple:
    # an ndarray is a buffer; numpy's stubs declare its __buffer__ for Python >= 3.12 only
    return tuple(
        (name, arr.shape, str(arr.dtype), zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")))  # type: ignore[arg-type]
        for name, arr in sorted(arrays.items())
    )


# ---------------------------------------------------------------------------------------------- trainer


class DistributedTrainer(Trainer):
    """A `Trainer` whose steps are split across the ranks of `comm`; every rank passes the same global batch.

    `.step(batch)` and `.run_epoch(batches)` take the *global* batches (every rank the same arrays) and return
    the global batch objectives, exactly like `Trainer`; each rank computes only its rows.
    `allreduce_time` accumulates the seconds spent in `Allreduce` (the benchmark reads it).
    """

    def __init__(self, model, optimizer, *, comm, **kwargs):
        super().__init__(model, optimizer, **kwargs)
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        n = model.N_THETA
        self.buf = np.zeros(n + 3, self.dtype)  # [grad | loss sum | failure flag | stop flag], reduced in one call
        self.grad = self.buf[:n]
        self.allreduce_time = 0.0
        self.allreduce_calls = 0
        self.failed_ranks: list[int] = []
        self._good: tuple[np.ndarray, np.ndarray, int] | None = None  # params, state, step of the last finite loss
        self._ws: np.ndarray | None = None
        self.stop_requested: Callable[[], bool] = lambda: False  # a Ctrl-C seen on this rank (see _Hooks.run)

    def shard(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch: contiguous blocks, sizes differing by at most one."""
        base, extra = divmod(batch_size, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def _local(self, consts, gscale, shard) -> float:
        """This rank's loss sum; writes its gradient share into `self.grad` (zeros for an empty shard)."""
        if shard and shard[0].shape[0] == 0:
            self.grad[:] = 0.0
            return 0.0
        ws = self._workspace(shard[0].shape[0] if shard else 1)
        if ws is None:  # a module without a workspace contract (the CUDA twin): it allocates its own
            return float(self.model._loss_grad(self.theta, self.grad, consts, gscale, *shard))
        return float(self.model._loss_grad(self.theta, self.grad, consts, gscale, *shard, ws))

    def _workspace(self, rows: int) -> np.ndarray | None:
        """The kernels' scratch for a shard of `rows` samples, made once and reused every step (no allocation
        per step: fresh buffers cost page faults)."""
        per_fixed = getattr(self.model, "_WS", None)
        if per_fixed is None:
            return None
        size = rows * per_fixed[0] + per_fixed[1]
        if self._ws is None or self._ws.shape[0] < size:
            self._ws = np.empty(size, self.dtype)
        return self._ws[:size]

    def _run(self, batches: dict[str, np.ndarray], n_steps: int, batch_size: int) -> np.ndarray:
        from mpi4py import MPI

        t0 = self.step_count
        inputs = self._inputs(batches, n_steps, batch_size)  # sampled inputs drawn for the global batch
        lo, hi = self.shard(batch_size)
        lrs = self.lrs(t0, n_steps)
        consts = self.consts_steps(t0, n_steps)
        gscale = self.gscale(batch_size)  # the global scale: the SUM over ranks is the global gradient
        clip = float(self.clip_norm) if self.clip_norm is not None else 0.0
        kind, hyper = int(self.optimizer.kind), self.optimizer.hyper
        n, buf = self.model.N_THETA, self.buf
        losses = np.zeros(n_steps)
        spare_theta, spare_state = np.empty_like(self.theta), np.empty_like(self.opt_state)
        for i in range(n_steps):
            shard = tuple(a[i, lo:hi] for a in inputs)  # contiguous row blocks, no copy
            error: BaseException | None = None
            try:
                local = self._local(consts[i], gscale, shard)
                buf[n] = local
                buf[n + 1] = 0.0 if math.isfinite(local) else 1.0
            except Exception as exc:  # noqa: BLE001 - reported to every rank through the flag
                error, local = exc, math.nan
                buf[:] = 0.0
                buf[n + 1] = 1.0
            buf[n + 2] = 1.0 if self.stop_requested() else 0.0
            start = time.perf_counter()
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            self.allreduce_time += time.perf_counter() - start
            self.allreduce_calls += 1
            total = float(buf[n])
            if buf[n + 2] != 0.0:  # Ctrl-C on some rank: every rank stops here, before this step
                self.step_count = t0 + i
                stop = KeyboardInterrupt(f"interrupted before step {t0 + i + 1}")
                _mark_all_ranks(stop)
                raise stop
            if buf[n + 1] != 0.0:  # a rank failed or had a non-finite share: no rank steps
                self.step_count = t0 + i
                self._fail(t0 + i + 1, error, local, consts[i], gscale, shard, losses[:i], batch_size)
            spare_theta[:] = self.theta
            spare_state[:] = self.opt_state
            if not gated_step(self.theta, self.grad, self.opt_state, kind, lrs[i], hyper, t0 + i + 1, clip, total):
                self.step_count = t0 + i  # the reduced loss or gradient is not finite (overflow in the sum)
                self._fail(t0 + i + 1, error, local, consts[i], gscale, shard, losses[:i], batch_size)
            losses[i] = total
            # the parameters this step used had a finite loss: the ones a divergence at a later step keeps
            good = self._good
            self._good = (spare_theta, spare_state, t0 + i)
            if good is None:
                spare_theta, spare_state = np.empty_like(self.theta), np.empty_like(self.opt_state)
            else:
                spare_theta, spare_state = good[0], good[1]
        self.step_count = t0 + n_steps
        return np.asarray(self.objective(losses, batch_size))

    def load_state_dict(self, d) -> None:
        super().load_state_dict(d)
        self._good = None

    def _restore_good(self) -> None:
        """Back to the parameters of the last step whose loss was finite (the starting ones if none was)."""
        if self._good is not None and self._good[2] + 1 == self.step_count:
            self.theta[:] = self._good[0]
            self.opt_state[:] = self._good[1]
            self.step_count = self._good[2]

    def _fail(self, step, error, local, consts, gscale, shard, done, batch_size) -> None:
        """Every rank arrives here at the same step: find which ranks failed and raise the same error."""
        status: tuple[str, str] | None
        if error is not None:
            status = ("error", _describe(error))
        elif not math.isfinite(local):
            status = ("nonfinite", f"loss sum {local}")
        else:  # recompute this rank's share (theta is untouched) to see whether its gradient was finite
            scratch, self.grad = self.grad, np.zeros_like(self.grad)
            try:
                self._local(consts, gscale, shard)
                _, ok = grad_norm_ok(self.grad)
            finally:
                self.grad = scratch
            status = None if ok else ("nonfinite", "gradient")
        statuses = self.comm.allgather(status)
        self._restore_good()
        errors = [(r, s[1]) for r, s in enumerate(statuses) if s is not None and s[0] == "error"]
        bad = [r for r, s in enumerate(statuses) if s is not None]
        self.failed_ranks = bad
        if errors:
            lines = "; ".join(f"rank {r}: {msg}" for r, msg in errors)
            raise DistributedError(
                f"step {step} failed on {_ranks_str([r for r, _ in errors])} ({lines}); "
                f"every rank stopped at step {step}, the last parameters with a finite loss kept",
                ranks=[r for r, _ in errors],
                step=step,
            ) from error
        where = (
            f"on {_ranks_str(bad)}"
            if bad
            else "in the reduced gradient (every rank's share was finite: overflow in the sum)"
        )
        exc = TrainingDiverged(
            diverged_message(step, self.step_count, f" {where}"), step=step, params=self.params_copy()
        )
        exc.objectives = np.asarray(self.objective(np.asarray(done, np.float64), batch_size))
        exc.ranks = bad
        exc.where = f" {where}"
        raise exc


# ---------------------------------------------------------------------------------------------- train


def _first_difference(configs: list[dict[str, Any]]) -> tuple[str, int, Any, Any] | None:
    """(key, rank, rank's value, rank 0's value) of the first setting where a rank differs from rank 0."""
    for key in configs[0]:
        for rank, cfg in enumerate(configs[1:], start=1):
            if cfg.get(key) != configs[0][key]:
                return key, rank, cfg.get(key), configs[0][key]
    for rank, cfg in enumerate(configs[1:], start=1):
        extra = sorted(set(cfg) - set(configs[0]))
        if extra:
            return extra[0], rank, cfg[extra[0]], None
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Dist:
    """The training loop's hooks for one rank of `comm` (`symgrad.runtime.training._Local` is the one-process twin)."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.is_root = self.rank == 0
        self.phase = "setup"
        self.trainer: DistributedTrainer | None = None
        self.interrupts = 0  # SIGINTs seen while training (see _stop_at_a_step)

    def make_trainer(self, model, optimizer, **kwargs) -> DistributedTrainer:
        self.trainer = DistributedTrainer(model, optimizer, comm=self.comm, **kwargs)
        self.trainer.stop_requested = lambda: self.interrupts > 0
        return self.trainer

    def setup_done(self, trainer: Trainer, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        """The one set-up collective: every rank's error (or none), its configuration, fingerprints of data/state."""
        state = {"theta": trainer.theta, "opt_state": trainer.opt_state}
        mine = (dict(config), _fingerprint(arrays), _fingerprint(state), trainer.step_count)
        prints = agree(self.comm, None, "set-up", mine)
        self.phase = "run"
        diff = _first_difference([p[0] for p in prints])
        if diff is not None:
            key, rank, theirs, root = diff
            what = (
                f"rank {rank} and rank 0 have different lr or constant schedules"
                if key in ("schedule", "constants")
                else f"rank {rank} has {key}={_short(theirs)}, rank 0 has {key}={_short(root)}"
            )
            raise DistributedError(
                f"ranks disagree on the configuration: {what}; every rank must run the same command",
                ranks=[rank],
                exit_code=2,
            )
        for what, idx in (("training data", 1), ("starting state (parameters / checkpoint)", 2)):
            differ = [r for r, p in enumerate(prints) if p[idx] != prints[0][idx]]
            if differ:
                raise DistributedError(
                    f"{_ranks_str(differ)} {'holds' if len(differ) == 1 else 'hold'} different {what} from "
                    "rank 0: every rank must read the same data file and checkpoint",
                    ranks=differ,
                    exit_code=2,
                )
        differ = [r for r, p in enumerate(prints) if p[3] != prints[0][3]]
        if differ:
            raise DistributedError(
                f"{_ranks_str(differ)} resume at another step than rank 0", ranks=differ, exit_code=2
            )

    def on_root(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on rank 0 only; broadcast whether it worked, so all ranks stop together if not."""
        error = None
        if self.is_root:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001
                error = exc
        msg = self.comm.bcast(None if error is None else (_describe(error), _exit_code(error)), root=0)
        if msg is not None:
            step = self.trainer.step_count if self.trainer is not None else None
            raise DistributedError(
                f"{what} failed on rank 0 after step {step}: {msg[0]}", ranks=[0], step=step, exit_code=msg[1]
            ) from error

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run the loop `fn()` on this rank: errors every rank raised together propagate, any other ends the job."""
        install_abort_hook(self.comm)
        try:
            with self._stop_at_a_step():
                return fn()
        except DistributedError:
            raise  # raised on every rank together
        except TrainingDiverged as exc:  # raised on every rank together, from the step's reduction
            _mark_all_ranks(exc)
            raise
        except TrainingInterrupted as exc:
            if not raised_on_all_ranks(exc):  # a second Ctrl-C, on this rank alone: the others may be blocked
                step = self.trainer.step_count if self.trainer is not None else 0
                abort(self.comm, f"rank {self.rank} interrupted after step {step}")
            raise
        except BaseException as exc:
            if self.phase == "setup":  # the others wait in setup_done's allgather: answer it with the error
                agree(self.comm, exc, "set-up")
            step = self.trainer.step_count if self.trainer is not None else 0
            abort(self.comm, f"rank {self.rank} failed after step {step}: {_describe(exc)}")
            raise  # pragma: no cover

    @contextmanager
    def _stop_at_a_step(self) -> Iterator[None]:
        """SIGINT sets a flag that the next step's reduction carries to every rank (see the module docstring); a
        second one raises KeyboardInterrupt here and now. Off the main thread no SIGINT arrives: nothing to do."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum: int, frame: Any) -> None:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


__all__ = [
    "DistributedError",
    "DistributedTrainer",
    "abort",
    "abort_if_alone",
    "agree",
    "collective",
    "install_abort_hook",
    "is_root",
    "launched_rank",
    "launched_size",
    "raised_on_all_ranks",
    "world_comm",
]
