"""MPI data parallelism (issue 8): `mpiexec -n 2` against one process on the same global batches.

Each test launches `mpiexec -n 2 python tests/test_mpi.py <worker> OUTDIR` (this file is also the worker
script) under a timeout, so a hang fails the test instead of blocking the suite. The one-process references
are computed here, in the pytest process, from the same case definitions (`CASES`).

Comparisons: every rank holds bit-identical parameters; the 2-rank parameters and per-step objectives equal
the one-process ones to 1e-10 relative (norm-wise per parameter: max|a - b| <= 1e-10 max|b|), the difference
being only the order in which the gradient's batch sum is added up.

Environment: MPICH's Hydra `mpiexec` needs no flags in this container (processes on one host, started with
fork); the workers get OPENBLAS_NUM_THREADS=1 so two ranks do not oversubscribe two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
NP = 2
TIMEOUT = 420  # seconds for one mpiexec run: ~5-15 s warm, longer when both ranks compile on a loaded machine
FAIL_TIMEOUT = 60  # the failure workers: each failure is seen within seconds, so a hang fails fast


def _skip_reason() -> str | None:
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (pip install 'symgrad[mpi]' provides MPICH's)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'symgrad[mpi]')"
    return None


pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


# ---------------------------------------------------------------------------------------------- cases


def _load(name: str, folder: Path | None = None):
    from symgrad.runtime.loader import load

    return load(str((folder or SPECS) / f"{name}.yaml"))


def write_linsum(folder: Path) -> Path:
    """linreg with `reduction: sum` (gradient scale N/B), written into the run's folder once, *before* mpiexec
    starts the ranks (two ranks writing it themselves raced: one read it half-written, "spec is empty")."""
    spec = folder / "linsum.yaml"
    text = (SPECS / "linreg.yaml").read_text().replace("name: linreg", "name: linsum") + "reduction: sum\n"
    spec.write_text(text)
    return spec


def _linsum(folder: Path):
    return _load("linsum", folder)


def _digits(model, n: int):
    from symgrad.runtime.data import load_dataset

    tr, te = load_dataset("digits", model)
    return {k: v[:n] for k, v in tr.items()}, te


def case_mean(folder: Path, comm):
    from symgrad.runtime.optim import SGD
    from symgrad.runtime.training import train

    m = _load("mlp_digits")
    tr, te = _digits(m, 512)
    return train(
        m,
        tr,
        optimizer=SGD(0.1, momentum=0.9),
        batch_size=64,
        epochs=2,
        seed=3,
        progress=False,
        history_per_step=True,
        validation=te,
        comm=comm,
    )


def case_uneven(folder: Path, comm):
    """B = 63 on 2 ranks: shards of 32 and 31 rows; Adam."""
    from symgrad.runtime.optim import Adam
    from symgrad.runtime.training import train

    m = _load("mlp_digits")
    tr, _ = _digits(m, 512)
    return train(
        m, tr, optimizer=Adam(1e-3), batch_size=63, epochs=1, seed=1, progress=False, history_per_step=True, comm=comm
    )


def case_sum(folder: Path, comm):
    from symgrad.runtime.optim import SGD
    from symgrad.runtime.training import train

    m = _linsum(folder)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, 200)
    data = {"x": x, "y": 2.0 * x - 0.5 + 0.1 * rng.standard_normal(200)}
    return train(
        m, data, optimizer=SGD(1e-3), batch_size=20, epochs=3, seed=2, progress=False, history_per_step=True, comm=comm
    )


def case_vae(folder: Path, comm):
    """Sampled eps drawn for the global batch; KL annealing (constant schedule) and a cosine lr schedule."""
    from symgrad.runtime.optim import Adam
    from symgrad.runtime.schedules import cosine, linear_ramp
    from symgrad.runtime.training import train

    m = _load("vae")
    tr, _ = _digits(m, 256)
    return train(
        m,
        tr,
        optimizer=Adam(1e-3),
        batch_size=32,
        epochs=3,
        seed=5,
        progress=False,
        history_per_step=True,
        schedule={"beta": linear_ramp(0.0, 1.0, 20), "lr": cosine(24)},
        comm=comm,
    )


def case_clip(folder: Path, comm):
    """Clipping active on every step (norm 0.05), on the global gradient; step-decay lr schedule."""
    from symgrad.runtime.optim import SGD
    from symgrad.runtime.schedules import step_decay
    from symgrad.runtime.training import train

    m = _load("mlp_digits")
    tr, _ = _digits(m, 512)
    return train(
        m,
        tr,
        optimizer=SGD(0.5),
        batch_size=64,
        epochs=2,
        seed=4,
        progress=False,
        history_per_step=True,
        clip_norm=0.05,
        schedule=step_decay(5, 0.5),
        comm=comm,
    )


CASES = {"mean": case_mean, "uneven": case_uneven, "sum": case_sum, "vae": case_vae, "clip": case_clip}


# ---------------------------------------------------------------------------------------------- workers


def worker_equal(folder: Path) -> None:
    """Every case with 2 ranks; then a 2-rank checkpoint/resume; each rank saves what it got."""
    from mpi4py import MPI

    from symgrad.runtime.optim import SGD
    from symgrad.runtime.training import train

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    for name, fn in CASES.items():
        res = fn(folder, comm)
        np.savez(
            folder / f"{name}-rank{rank}.npz",
            step_history=res.step_history,
            **{f"p_{k}": v for k, v in res.params.items()},
        )
    # resume with the same number of ranks: identical to the uninterrupted 2-rank run; rank 0 alone writes
    m = _load("mlp_digits")
    tr, _ = _digits(m, 256)
    calls = []
    opts = {"optimizer": SGD(0.1, momentum=0.9), "batch_size": 32, "seed": 7, "progress": False, "comm": comm}
    full = train(m, tr, epochs=3, callback=calls.append, **opts)
    ck = folder / "ck.npz"
    train(m, tr, epochs=1, checkpoint=ck, **opts)
    resumed = train(m, tr, epochs=3, checkpoint=ck, resume=True, **opts)
    np.savez(
        folder / f"resume-rank{rank}.npz",
        callbacks=len(calls),
        **{f"full_{k}": v for k, v in full.params.items()},
        **{f"resumed_{k}": v for k, v in resumed.params.items()},
    )


def case_bn(folder: Path, comm):
    """BatchNorm (batch_mean): each rank normalises with its own shard's statistics (DDP without SyncBatchNorm)."""
    from symgrad.runtime.optim import SGD
    from symgrad.runtime.training import train

    m = _load("mlp_bn_digits")
    tr, _ = _digits(m, 256)
    return train(
        m,
        tr,
        optimizer=SGD(0.1),
        batch_size=64,
        epochs=1,
        seed=0,
        shuffle=False,
        progress=False,
        history_per_step=True,
        comm=comm,
    )


def worker_bn(folder: Path) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    res = case_bn(folder, comm)
    np.savez(folder / f"bn-rank{comm.Get_rank()}.npz", **{f"p_{k}": v for k, v in res.params.items()})


def worker_fail(folder: Path) -> None:
    """Three failures raised on every rank together; each rank prints what it caught and goes on."""
    from mpi4py import MPI

    from symgrad.errors import SymgradError
    from symgrad.runtime.optim import SGD
    from symgrad.runtime.training import train

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    m = _load("linreg")
    x = np.linspace(-1.0, 1.0, 64)
    y = 2.0 * x
    opts = {"optimizer": SGD(0.01), "batch_size": 8, "epochs": 2, "shuffle": False, "progress": False, "comm": comm}

    log = open(folder / f"fail-rank{rank}.txt", "w")  # noqa: SIM115 - one file per rank, no interleaving

    def attempt(label, fn):
        start = time.perf_counter()
        try:
            fn()
            print(f"[{label}] no error", file=log, flush=True)
        except SymgradError as exc:
            took = time.perf_counter() - start
            print(f"[{label}] {type(exc).__name__} exit={exc.exit_code} in {took:.2f}s: {exc}", file=log, flush=True)

    # 1. a non-finite loss in rank 1's shard of step 3 (rows 4..7 of global batch 3 belong to rank 1)
    y_bad = y.copy()
    y_bad[2 * 8 + 5] = 1e300
    attempt("nonfinite", lambda: train(m, {"x": x, "y": y_bad}, **opts))
    # 2. bad data on rank 1 only (a corrupted copy of the file, say): found before the first step
    x_bad = x.copy()
    if rank == 1:
        x_bad[10] = np.nan
    attempt("baddata", lambda: train(m, {"x": x_bad, "y": y}, **opts))
    # 3. an exception inside rank 1's step 2
    original = m._loss_grad
    count = [0]

    def flaky(*args):
        count[0] += 1
        if rank == 1 and count[0] == 2:
            raise RuntimeError("boom")
        return original(*args)

    m._loss_grad = flaky
    try:
        attempt("exception", lambda: train(m, {"x": x, "y": y}, **opts))
    finally:
        m._loss_grad = original
    # 4. ranks holding different data (the same shape): refused before the first step
    attempt("differ", lambda: train(m, {"x": x + (1e-3 if rank == 1 else 0.0), "y": y}, **opts))
    print("done", file=log, flush=True)
    log.close()


def worker_abort(folder: Path) -> None:
    """An error on one rank outside any step's reduction: the last resort, `comm.Abort`, ends the job."""
    from mpi4py import MPI

    import symgrad.runtime.training as train_mod
    from symgrad.runtime.optim import SGD

    comm = MPI.COMM_WORLD
    m = _load("linreg")
    x = np.linspace(-1.0, 1.0, 64)
    if comm.Get_rank() == 1:

        def broken(*args, **kwargs):
            raise MemoryError("validation buffer")

        train_mod.evaluate = broken
    train_mod.train(
        m,
        {"x": x, "y": 2 * x},
        optimizer=SGD(0.01),
        batch_size=8,
        epochs=3,
        progress=False,
        validation={"x": x, "y": 2 * x},
        comm=comm,
    )
    print("not reached", flush=True)


def worker_interrupt(folder: Path) -> None:
    """Ctrl-C on rank 0 alone, after epoch 2 (the callback runs there): every rank must stop before step 17 with the
    same parameters. The first SIGINT only sets a flag, which the next step's reduction carries to every rank."""
    import os
    import signal

    from mpi4py import MPI

    from symgrad.errors import TrainingInterrupted
    from symgrad.runtime.optim import Adam
    from symgrad.runtime.training import train

    comm = MPI.COMM_WORLD
    m = _load("linreg")
    x = np.linspace(-1.0, 1.0, 64)

    def ctrl_c(info) -> None:
        if info.epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        train(
            m,
            {"x": x, "y": 2 * x + 1},
            optimizer=Adam(0.05),
            batch_size=8,
            epochs=6,
            progress=False,
            callback=ctrl_c,
            comm=comm,
        )
        outcome, step, params = "finished", -1, {}
    except TrainingInterrupted as exc:
        outcome, step, params = f"interrupted all_ranks={getattr(exc, 'all_ranks', False)}", exc.step, exc.params
    np.savez(folder / f"interrupt-rank{comm.Get_rank()}.npz", outcome=outcome, step=step, **params)


def worker_disagree(folder: Path) -> None:
    """Rank 1 differs from rank 0 in one setting at a time: every attempt is refused before the first step."""
    from mpi4py import MPI

    from symgrad.runtime.distributed import DistributedError
    from symgrad.runtime.optim import SGD, Adam
    from symgrad.runtime.schedules import cosine
    from symgrad.runtime.training import train

    comm = MPI.COMM_WORLD
    one = comm.Get_rank() == 1
    m = _load("linreg")
    x = np.linspace(-1.0, 1.0, 64)
    data = {"x": x, "y": 2.0 * x}
    base = {"optimizer": SGD(0.01), "batch_size": 8, "epochs": 2, "progress": False, "comm": comm}
    cases = {
        "epochs": {"epochs": 3 if one else 2},
        "batch_size": {"batch_size": 16 if one else 8},
        "lr": {"optimizer": SGD(0.02 if one else 0.01)},
        "optimizer": {"optimizer": Adam(0.01) if one else SGD(0.01)},
        "schedule": {"schedule": cosine(16) if one else None},
        "dtype": {"params": {k: np.asarray(v, np.float32 if one else np.float64) for k, v in m.init_params().items()}},
        "spec": {"model": _linsum(folder) if one else m},
        "data": {"data": {"x": x[:56], "y": 2.0 * x[:56]} if one else data},
        "seed": {"seed": 1 if one else 0},
    }
    log = open(folder / f"disagree-rank{comm.Get_rank()}.txt", "w")  # noqa: SIM115
    for label, change in cases.items():
        opts = {**base, "data": data, "model": m, **change}
        model = opts.pop("model")
        start = time.perf_counter()
        try:
            train(model, opts.pop("data"), **opts)
            print(f"[{label}] no error", file=log, flush=True)
        except DistributedError as exc:
            took = time.perf_counter() - start
            print(f"[{label}] exit={exc.exit_code} in {took:.2f}s: {exc}", file=log, flush=True)
    print("done", file=log, flush=True)
    log.close()


def worker_outside(folder: Path) -> None:
    """After a `train(comm=...)`, rank 1 raises outside any symgrad call while rank 0 waits in a barrier."""
    from mpi4py import MPI

    from symgrad.runtime.optim import SGD
    from symgrad.runtime.training import train

    comm = MPI.COMM_WORLD
    m = _load("linreg")
    x = np.linspace(-1.0, 1.0, 64)
    train(m, {"x": x, "y": 2 * x}, optimizer=SGD(0.01), batch_size=8, epochs=1, progress=False, comm=comm)
    if comm.Get_rank() == 1:
        raise RuntimeError("outside train")
    comm.Barrier()  # would wait forever without the abort hook
    print("not reached", flush=True)


# ---------------------------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def mpirun(args: list[str], timeout: float = TIMEOUT, mpmd: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """`mpiexec -n NP ARGS` (or `mpiexec ARGS` for an MPMD line `-n 1 A : -n 1 B`); a hang is killed with its ranks."""
    start = time.perf_counter()
    cmd = ["mpiexec", *args] if mpmd else ["mpiexec", "-n", str(NP), *args]
    with subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)  # mpiexec and every rank it started
            out, err = child.communicate()
            pytest.fail(f"mpiexec hung: killed after {timeout:.0f} s\n{out}{err}")
    return subprocess.CompletedProcess(cmd, child.returncode, out, err), time.perf_counter() - start


def run_worker(name: str, folder: Path, timeout: float = TIMEOUT):
    return mpirun([sys.executable, str(Path(__file__).resolve()), name, str(folder)], timeout)


def assert_close(a: np.ndarray, b: np.ndarray, what: str, rtol: float = 1e-10) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    scale = max(float(np.max(np.abs(b))), 1e-300)
    err = float(np.max(np.abs(a - b))) / scale
    assert err <= rtol, f"{what}: relative difference {err:.3g} > {rtol:g}"


# ---------------------------------------------------------------------------------------------- tests


def test_two_ranks_match_one_process(tmp_path):
    write_linsum(tmp_path)
    proc, took = run_worker("equal", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, fn in CASES.items():
        ref = fn(tmp_path, None)
        got = [np.load(tmp_path / f"{name}-rank{r}.npz") for r in range(NP)]
        for key in got[0].files:  # every rank holds the same parameters, bit for bit
            assert np.array_equal(got[0][key], got[1][key]), f"{name}: ranks differ in {key}"
        assert_close(got[0]["step_history"], ref.step_history, f"{name}: per-step objectives")
        for k, v in ref.params.items():
            assert_close(got[0][f"p_{k}"], v, f"{name}: parameter {k}")
    resume = [np.load(tmp_path / f"resume-rank{r}.npz") for r in range(NP)]
    for key in resume[0].files:
        if key.startswith("full_"):
            assert np.array_equal(resume[0][key], resume[0]["resumed_" + key[5:]]), f"resume: {key}"
            assert np.array_equal(resume[0][key], resume[1][key])
    assert int(resume[0]["callbacks"]) == 3 and int(resume[1]["callbacks"]) == 0  # rank 0 alone
    print(f"\n2-rank equivalence run: {took:.1f} s")


def test_batch_statistics_are_per_rank(tmp_path):
    """Stated semantics (docs/spec.md): under MPI each rank's batch_mean is over its own shard. Two ranks equal one
    process that averages the gradients of the two half-batches, each normalised by its own statistics, and differ
    from one process normalising the whole batch."""
    proc, _ = run_worker("bn", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [np.load(tmp_path / f"bn-rank{r}.npz") for r in range(NP)]
    m = _load("mlp_bn_digits")
    tr, _ = _digits(m, 256)
    p = {k: np.asarray(v, np.float64) for k, v in m.init_params(0).items()}
    for step in range(256 // 64):
        rows = slice(64 * step, 64 * step + 64)
        halves = [{k: v[rows][:32] for k, v in tr.items()}, {k: v[rows][32:] for k, v in tr.items()}]
        grads = [m.loss_and_grad(p, h)[1] for h in halves]
        p = {k: p[k] - 0.1 * (grads[0][k] + grads[1][k]) / 2 for k in p}
    whole = case_bn(tmp_path, None).params
    for k, v in p.items():
        assert np.array_equal(got[0][f"p_{k}"], got[1][f"p_{k}"])
        assert_close(got[0][f"p_{k}"], v, f"bn: parameter {k}", rtol=1e-9)
    assert max(float(np.max(np.abs(whole[k] - p[k]))) for k in p) > 1e-6  # not the one-process statistics


def test_failures_stop_every_rank_with_rank_and_step(tmp_path):
    proc, took = run_worker("fail", tmp_path, FAIL_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 60, f"took {took:.1f} s"
    lines = {}
    for rank in range(NP):
        text = (tmp_path / f"fail-rank{rank}.txt").read_text()
        assert text.endswith("done\n"), text
        for line in text.splitlines()[:-1]:
            lines[(line[1 : line.index("]")], rank)] = line
    for rank in range(NP):
        line = lines[("nonfinite", rank)]
        assert "TrainingDiverged exit=1" in line and "step 3" in line and "on rank 1" in line, line
        line = lines[("baddata", rank)]
        assert "DistributedError exit=2" in line and "rank 1" in line and "NaN" in line, line
        line = lines[("exception", rank)]
        assert "DistributedError" in line and "step 2 failed on rank 1" in line and "boom" in line, line
        line = lines[("differ", rank)]
        assert "DistributedError exit=2" in line and "rank 1 holds different training data" in line, line
        for label in ("nonfinite", "baddata", "exception", "differ"):  # within seconds, not a timeout
            assert float(lines[(label, rank)].split(" in ")[1].split("s:")[0]) < 5.0


def test_an_error_outside_the_reduction_aborts_the_job(tmp_path):
    proc, took = run_worker("abort", tmp_path, FAIL_TIMEOUT)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "not reached" not in text
    assert "rank 1 failed after step 8" in text and "MemoryError: validation buffer" in text, text
    assert took < 60


def test_ranks_that_disagree_on_the_configuration_refuse_to_start(tmp_path):
    write_linsum(tmp_path)
    proc, took = run_worker("disagree", tmp_path, FAIL_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expect = {
        "epochs": "rank 1 has epochs=3, rank 0 has epochs=2",
        "batch_size": "rank 1 has batch_size=16, rank 0 has batch_size=8",
        "lr": "rank 1 has optimizer='SGD(lr=0.02, momentum=0.0, nesterov=False)', rank 0 has optimizer='SGD(lr=0.01",
        "optimizer": "rank 1 has optimizer='Adam(",
        "schedule": "rank 1 and rank 0 have different lr or constant schedules",
        "dtype": "rank 1 has dtype='float32', rank 0 has dtype='float64'",
        "spec": "rank 1 has model='linsum', rank 0 has model='linreg'",
        "data": "rank 1 has n_train=56, rank 0 has n_train=64",
        "seed": "rank 1 has seed=1, rank 0 has seed=0",
    }
    for rank in range(NP):
        text = (tmp_path / f"disagree-rank{rank}.txt").read_text()
        assert text.endswith("done\n"), text
        lines = {line[1 : line.index("]")]: line for line in text.splitlines()[:-1]}
        for label, needle in expect.items():
            line = lines[label]
            assert "exit=2" in line and "ranks disagree on the configuration" in line and needle in line, line
            assert float(line.split(" in ")[1].split("s:")[0]) < 5.0
    assert took < FAIL_TIMEOUT


def test_an_uncaught_exception_outside_train_ends_the_job(tmp_path):
    proc, took = run_worker("outside", tmp_path, FAIL_TIMEOUT)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "not reached" not in text
    assert "uncaught exception on rank 1: RuntimeError: outside train; aborting all 2 ranks" in text, text


def test_cli_ranks_given_different_options_refuse_in_one_line(tmp_path):
    cmd = ["symgrad", "train", "specs/linreg.yaml", "--data", str(tmp_path / "lin.npz"), "--no-progress"]
    x = np.linspace(-1.0, 1.0, 64)
    np.savez(tmp_path / "lin.npz", x=x, y=2 * x)
    proc, took = mpirun(
        ["-n", "1", *cmd, "--epochs", "1", ":", "-n", "1", *cmd, "--epochs", "2"], FAIL_TIMEOUT, mpmd=True
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 has epochs=2, rank 0 has epochs=1" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # a command line click refuses on one rank only: that rank ends the job instead of leaving rank 0 waiting
    proc, took = mpirun(
        ["-n", "1", *cmd, "--epochs", "1", ":", "-n", "1", *cmd, "--epochs", "0"], FAIL_TIMEOUT, mpmd=True
    )
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("symgrad:")]
    assert len(ours) == 1 and "rank 1: bad command line: error: Invalid value for '--epochs'" in ours[0], proc.stderr
    assert "Usage:" not in proc.stderr  # one line, not click's three-line block
    # the same error on every rank before any training: printed once, exit 2
    proc, took = mpirun([*cmd, "--resume", str(tmp_path / "missing.npz")], FAIL_TIMEOUT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("error: --resume: no such checkpoint") == 1, proc.stderr


def test_cli_under_mpiexec_prints_and_writes_on_rank_0_only(tmp_path):
    out = tmp_path / "params.npz"
    cmd = ["symgrad", "train", "specs/mlp_digits.yaml", "--data", "digits", "--epochs", "1", "--out", str(out)]
    proc, took = mpirun(cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("epoch 1/1") == 1, proc.stdout
    assert proc.stdout.count("parameters saved to") == 1
    assert proc.stdout.count("2 MPI ranks") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.npz"]
    # the same as one process
    from symgrad.runtime.optim import Adam
    from symgrad.runtime.training import train

    m = _load("mlp_digits")
    tr, _ = _digits(m, 10**6)
    ref = train(m, tr, optimizer=Adam(1e-3), batch_size=64, epochs=1, seed=0, progress=False)
    with np.load(out) as saved:
        for k, v in ref.params.items():
            assert_close(saved[k], v, f"CLI parameter {k}")


def test_ctrl_c_on_one_rank_stops_every_rank_at_one_step(tmp_path):
    """Ctrl-C under mpiexec was reported as "rank 1 failed ...; aborting all 2 ranks", exit 1, nothing saved: each
    rank's KeyboardInterrupt landed at its own moment. Now every rank stops before the same step, with the
    parameters of one process trained that far."""
    from symgrad.runtime.optim import Adam
    from symgrad.runtime.training import train

    proc, took = run_worker("interrupt", tmp_path, FAIL_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = _load("linreg")
    x = np.linspace(-1.0, 1.0, 64)
    ref = train(m, {"x": x, "y": 2 * x + 1}, optimizer=Adam(0.05), batch_size=8, epochs=2, progress=False)
    for rank in range(NP):
        with np.load(tmp_path / f"interrupt-rank{rank}.npz") as z:
            assert str(z["outcome"]) == "interrupted all_ranks=True" and int(z["step"]) == 16, (rank, z["outcome"])
            for k, v in ref.params.items():
                assert_close(z[k], v, f"rank {rank} parameter {k}")


@pytest.mark.slow
def test_cli_ctrl_c_under_mpiexec_saves_and_exits_130(tmp_path):
    """mpiexec forwards Ctrl-C to every rank: one line, the parameters saved by rank 0, exit status 130."""
    import signal

    out = tmp_path / "ci.npz"
    cmd = ["mpiexec", "-n", str(NP), "symgrad", "train", "specs/mlp_digits.yaml", "--data", "digits"]
    cmd += ["--epochs", "100000", "--no-progress", "--out", str(out)]
    env = {**_env(), "SYMGRAD_WARMUP": "0"}
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as child:
        assert child.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # until the first epoch line: training runs on both ranks
            line = child.stdout.readline()
            if line.startswith("epoch ") or not line:
                break
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=FAIL_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
            pytest.fail("mpiexec did not stop after Ctrl-C")
    assert child.returncode == 130, err[-2000:]
    ours = [ln for ln in err.splitlines() if ln.startswith(("error:", "symgrad:", "Traceback"))]
    assert len(ours) == 1 and ours[0].startswith("error: interrupted at step ") and "saved to" in ours[0], err
    with np.load(out) as z:
        assert set(z.files) == {n for n, _ in _load("mlp_digits").PARAMS}


def test_cli_bad_data_exits_2_once(tmp_path):
    bad = tmp_path / "bad.npz"
    x = np.zeros((32, 64))
    x[3, 5] = np.inf
    np.savez(bad, x=x, y=np.eye(10)[np.arange(32) % 10])
    proc, took = mpirun(
        ["symgrad", "train", "specs/mlp_digits.yaml", "--data", str(bad), "--epochs", "1"], FAIL_TIMEOUT
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("error:") == 1 and "NaN or infinite" in proc.stderr, proc.stderr
    assert took < 60


if __name__ == "__main__":  # the worker side: mpiexec -n 2 python tests/test_mpi.py WORKER FOLDER
    workers = {
        "equal": worker_equal,
        "bn": worker_bn,
        "fail": worker_fail,
        "abort": worker_abort,
        "disagree": worker_disagree,
        "outside": worker_outside,
        "interrupt": worker_interrupt,
    }
    workers[sys.argv[1]](Path(sys.argv[2]))
