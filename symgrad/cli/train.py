"""`symgrad train`, `symgrad predict`, `symgrad evaluate`: thin click commands over the runtime (cli/main.py registers
them).

Naming in the output is fixed so that a person can tell the sets apart: `train` (the data trained on), `val` (the
`--val-split` fraction held out of it, seen every epoch), `test` (the file's `<input>_test` arrays). Without
`--val-split` the test set is what is evaluated every epoch, and the epoch line says `test_...`. A spec with
`objective: maximize` reports `objective` (it goes up), one that minimises reports `loss`.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import click
import numpy as np

from symgrad import backends
from symgrad.cli.messages import one_line
from symgrad.errors import DataError, SymgradError, TrainingDiverged, TrainingInterrupted, UsageError
from symgrad.runtime.paths import output_path

DATA_HELP = """\b
Data (--data): 'digits' (scikit-learn's 8x8 digits), or FILE.npz holding one
array per input of the spec, named exactly like the input, samples on the
leading axis: for `inputs: {x: [D], y: [K]}`, `x` of shape (N, D) and `y` of
shape (N, K). Arrays named `<input>_test` (`x_test`, `y_test`) are the
held-out test set. Inputs with `sample: normal` are drawn, not read.
Build one with: numpy.savez("data.npz", x=X, y=Y, x_test=Xt, y_test=Yt).
Full description: docs/data.md."""


def _load_model(spec_path: str) -> ModuleType:
    """Build-if-stale and import the generated module (indirection so tests can substitute a double)."""
    import symgrad

    return symgrad.load(spec_path)


def _silent(*_args, **_kwargs) -> None:
    """`click.echo` on ranks other than 0 under `mpiexec`: rank 0 alone prints."""


def _print_errors(exc: BaseException) -> bool:
    """Under `mpiexec`, an error every rank raised together is printed by rank 0; one raised on a single rank
    ends the whole job (`comm.Abort`) after printing it, since the other ranks may wait for this one forever."""
    from symgrad.runtime.distributed import abort_if_alone, launched_rank

    abort_if_alone(exc)
    return launched_rank() == 0


def _spec_name(model: ModuleType, spec: str) -> str:
    return str((getattr(model, "SPEC", None) or {}).get("name") or os.path.splitext(os.path.basename(spec))[0])


# ---------------------------------------------------------------------------------------------- metrics


def _chunks(n: int, size: int = 2048):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate_arrays(
    model: ModuleType, params: dict, data: dict[str, np.ndarray], constants: dict | None = None
) -> dict[str, float]:
    """The objective over `data` (reduced as the spec says) and, for a classifier, its accuracy."""
    n = _n_samples(data)
    if n == 0:
        raise DataError("no samples to evaluate")
    total = 0.0
    from symgrad.runtime.training import count_correct, label_kind, objective_word

    correct = 0
    has_acc = label_kind(model) is not None
    for sl in _chunks(n):
        batch = {k: v[sl] for k, v in data.items()}
        b = sl.stop - sl.start
        value = float(model.loss(params, batch, constants))
        total += value * b if model.REDUCTION == "mean" else value
        if has_acc:
            c = count_correct(model, model.forward(params, batch, constants), batch["y"], b)
            if c is None:
                has_acc = False
                continue
            correct += c
    out = {objective_word(model): total / n if model.REDUCTION == "mean" else total}
    if has_acc:
        out["accuracy"] = correct / n
    return out


def _n_samples(data: dict[str, np.ndarray] | None) -> int:
    return len(next(iter(data.values()))) if data else 0


# ---------------------------------------------------------------------------------------------- files


def _read_params(path: str, option: str, model: ModuleType) -> dict[str, np.ndarray]:
    """A parameters file, checked against the spec here so that every problem names the file: each parameter
    present, numeric, of its shape and finite, and nothing else in it (a data file given by mistake)."""
    if not os.path.exists(path):
        raise UsageError(f"{option}: no such file {path!r} (symgrad train writes runs/<name>/params.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{option} {path}: cannot read parameters: {exc}") from None
    names = [name for name, _ in model.PARAMS]
    for key in arrays:
        if key not in names:
            raise DataError(
                f"{option} {path}: array {key!r} is not a parameter of the spec (parameters: {', '.join(names)})"
            )
    for name, shape in model.PARAMS:
        expected = tuple(shape)
        if name not in arrays:
            raise DataError(f"{option} {path}: no parameter {name!r} (expected shape {expected})")
        a = arrays[name]
        if a.dtype.kind not in "iuf":
            raise DataError(
                f"{option} {path}: parameter {name!r} holds {a.dtype} values, expected numbers of shape {expected}"
            )
        if a.shape != expected:
            raise DataError(f"{option} {path}: parameter {name!r} has shape {a.shape}, expected {expected}")
        if not np.all(np.isfinite(a)):
            raise DataError(f"{option} {path}: parameter {name!r} contains NaN or infinite values")
    return arrays


def _read_inputs(path: str, model: ModuleType, held_out: bool = False) -> dict[str, np.ndarray]:
    """Arrays named like the spec's data inputs (or `<input>_test` with `held_out`); missing ones are left to
    `forward`/`loss`, which name what they need."""
    if path.endswith(".npz"):
        if not os.path.exists(path):
            raise DataError(f"no such data file: {path!r}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path!r}: {exc}") from None
        suffix = "_test" if held_out else ""
        names = [name for name, _, _ in model.INPUTS]
        got = {n: arrays[n + suffix] for n in names if n + suffix in arrays}
        for n, a in got.items():  # a module's forward takes NaN as NumPy does; a data file must be clean (data.md)
            if a.dtype.kind in "iuf" and not np.all(np.isfinite(a)):
                raise DataError(f"{path}: array {n + suffix!r} contains NaN or infinite values")
        if not got:
            raise DataError(
                f"{path!r} has no array named like an input{' + _test' if held_out else ''} "
                f"(inputs: {', '.join(names)}; the file has: {', '.join(sorted(arrays)) or 'nothing'})"
            )
        return got
    from symgrad.runtime.data import load_dataset

    train, test = load_dataset(path, model)
    return (test or {}) if held_out else train


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's file, written atomically (loader.write_atomic: a fresh O_EXCL temporary in the folder, then a
    rename that replaces a link rather than writing through it). `.npz` is appended when missing, as np.savez does."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # mypy checks **dict against allow_pickle: bool too
    _write_file(path if str(path).endswith(".npz") else f"{path}.npz", buf.getvalue())


def _write_file(path: str, data: bytes) -> None:
    """Atomically (write_atomic: the folder is made, a fresh O_EXCL temporary, then a rename that replaces a link
    rather than writing through it); an OS error is one line naming the file."""
    from symgrad.runtime.loader import write_atomic

    try:
        write_atomic(Path(path), data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def default_out(name: str) -> str:
    """Where `symgrad train` saves when `--out` is not given."""
    return os.path.join("runs", name, "params.npz")


# ---------------------------------------------------------------------------------------------- train


def _parse_constants(items: tuple[str, ...], model: ModuleType) -> dict[str, float]:
    known = [n for n, _ in getattr(model, "CONSTANTS", ())]
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"--constant {item!r}: write NAME=VALUE, e.g. --constant beta=0.5")
        if name not in known:
            raise UsageError(
                f"--constant {name!r} is not a constant of the spec (constants: {', '.join(known) or 'none'})"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise UsageError(f"--constant {item!r}: {value!r} is not a number") from None
    return out


SCHEDULE_HELP = (
    "lr multiplier: cosine | cosine:FINAL | step_decay:EVERY:GAMMA | inverse_time:DECAY | "
    "warmup:STEPS; or a constant's value: NAME=linear_ramp:START:END:STEPS "
    "(e.g. beta=linear_ramp:0:1:500). Repeatable."
)


def _count(x: float) -> int:
    """A number of steps written on the command line: `10` or `10.0`, never `2.5`, `nan` or `inf`."""
    if not (math.isfinite(x) and x == int(x)):
        raise ValueError(f"{x:g} is not a whole number of steps")
    return int(x)


def _schedule_number(text: str) -> float:
    """One `:`-separated argument of --schedule, finite; said in the option's words, not float()'s."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{text!r} is not a finite number")
    return value


def _parse_schedules(items: tuple[str, ...], model: ModuleType, total_steps: int):
    from symgrad.runtime import schedules as S

    known = [n for n, _ in getattr(model, "CONSTANTS", ())]
    out: dict = {}
    for item in items:
        target, sep, rest = item.partition("=")
        if not sep:
            target, rest = "lr", item
        kind, *args = rest.split(":")
        try:
            nums = [_schedule_number(a) for a in args]
            if kind == "cosine" and len(nums) <= 1:
                sched: S.Schedule = S.cosine(max(1, total_steps), *nums)
            elif kind == "step_decay" and len(nums) in (1, 2):
                sched = S.step_decay(_count(nums[0]), *nums[1:])
            elif kind == "inverse_time" and len(nums) == 1:
                sched = S.inverse_time(nums[0])
            elif kind == "warmup" and len(nums) == 1:
                sched = S.linear_warmup(_count(nums[0]))
            elif kind == "linear_ramp" and len(nums) == 3:
                sched = S.linear_ramp(nums[0], nums[1], _count(nums[2]))
            else:
                raise UsageError(f"not understood ({SCHEDULE_HELP})")
        except (ValueError, UsageError) as exc:
            raise UsageError(f"--schedule {item!r}: {exc}") from None
        if target != "lr" and target not in known:
            raise UsageError(
                f"--schedule {item!r}: {target!r} is not a constant of the spec "
                f"(constants: {', '.join(known) or 'none'})"
            )
        out[target] = sched
    if not out:
        return None
    return out["lr"] if list(out) == ["lr"] else out


def _split(train: dict[str, np.ndarray], fraction: float, seed: int):
    n = _n_samples(train)
    n_val = int(round(n * fraction))
    if not 0 < n_val < n:
        raise UsageError(f"--val-split {fraction:g} of {n} training samples leaves no validation or no training set")
    perm = np.random.default_rng([abs(int(seed)), 1013]).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return {k: v[train_idx] for k, v in train.items()}, {k: v[val_idx] for k, v in train.items()}


def _epoch_line(info, word: str, held: str) -> str:
    parts = [f"epoch {info.epoch}/{info.epochs}", f"{word} {info.loss:.4f}"]
    if info.accuracy is not None:
        parts.append(f"acc {info.accuracy:.3f}")
    if info.val_loss is not None:
        parts.append(f"{held}_{word} {info.val_loss:.4f}")
    if info.val_accuracy is not None:
        parts.append(f"{held}_acc {info.val_accuracy:.3f}")
    return "  ".join(parts)


class _Log:
    """`--log metrics.csv`: one row per epoch, written as it ends (so a long run can be watched)."""

    def __init__(self, path: str | None, word: str, held: str | None) -> None:
        self.path = path
        self.rows: list[list] = []
        self.columns = ["epoch", "steps", word, "acc"] + ([f"{held}_{word}", f"{held}_acc"] if held else [])

    def prefill(self, ck: dict, steps_per_epoch: int) -> None:
        """Rows for the epochs a resumed checkpoint already ran (without writing: the next epoch's row does)."""
        from types import SimpleNamespace

        logs = ck["logs"]

        def at(key: str, e: int) -> float | None:
            values = logs.get(key, [])
            return values[e] if e < len(values) and not math.isnan(values[e]) else None  # NaN: not measured

        for e, loss in enumerate(logs.get("history", [])):
            steps = min((e + 1) * steps_per_epoch, int(ck["step"]))
            info = SimpleNamespace(epoch=e + 1, steps=steps, loss=loss, accuracy=at("accuracy", e))
            info.val_loss, info.val_accuracy = at("val_history", e), at("val_accuracy", e)
            self._row(info)

    def _row(self, info) -> None:
        row = [info.epoch, info.steps, info.loss, info.accuracy]
        if len(self.columns) > 4:
            row += [info.val_loss, info.val_accuracy]
        self.rows.append(["" if v is None else v for v in row])

    def add(self, info) -> None:
        if self.path is None:
            return
        self._row(info)
        import io

        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(self.columns)
        w.writerows(self.rows)
        _write_file(self.path, buf.getvalue().encode("utf-8"))


def _plot(
    path: str, history: np.ndarray, val_history: np.ndarray | None, name: str, word: str, held: str | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, history, marker="o", label=f"train (mean batch {word})")
    if val_history is not None and len(val_history):
        ax.plot(epochs[: len(val_history)], val_history, marker="s", label=held or "held out")
    ax.set_xlabel("epoch")
    ax.set_ylabel(word)
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format=os.path.splitext(path)[1][1:].lower())
    plt.close(fig)
    _write_file(path, buf.getvalue())


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _check_plot(plot: str | None) -> None:
    """Before training, not after it: a plot path matplotlib cannot write would fail with nothing shown."""
    if plot is not None and os.path.splitext(plot)[1][1:].lower() not in PLOT_FORMATS:
        raise UsageError(f"--plot must end in {', '.join('.' + f for f in PLOT_FORMATS)}, got {plot!r}")


def _metrics_line(label: str, metrics: dict[str, float]) -> str:
    return f"{label}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _run(
    spec: str,
    data: str | None,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float | None,
    seed: int,
    out: str | None,
    plot: str | None,
    resume: str | None,
    checkpoint: str | None,
    clip_norm: float | None,
    device: str,
    progress: bool,
    val_split: float | None = None,
    log: str | None = None,
    dtype: str = "float64",
    constant: tuple[str, ...] = (),
    schedule: tuple[str, ...] = (),
    init: str | None = None,
) -> None:
    from symgrad.runtime.data import load_dataset
    from symgrad.runtime.distributed import collective, is_root, world_comm
    from symgrad.runtime.optim import make_optimizer
    from symgrad.runtime.training import objective_word, train

    comm = world_comm()  # MPI.COMM_WORLD under `mpiexec -n N` (N > 1), else None
    root = is_root(comm)
    echo = click.echo if root else _silent

    backends.get(device, "--device").check_device()  # one clear line naming what is missing, before data is read

    def prepare():  # in one collective: under mpiexec every rank learns of any rank's error, printed once
        try:
            opt = make_optimizer(optimizer, lr)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if resume is not None and not os.path.exists(resume):
            raise UsageError(f"--resume: no such checkpoint {resume!r}")
        if resume is not None and checkpoint is not None and os.path.abspath(resume) != os.path.abspath(checkpoint):
            raise UsageError(
                f"--resume {resume} and --checkpoint {checkpoint} name different files: a resumed run goes on "
                "writing the checkpoint it read; give --resume alone"
            )
        if seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {seed}")
        _check_plot(plot)
        for path, what in ((plot, "--plot"), (log, "--log"), (checkpoint, "--checkpoint"), (out, "--out")):
            if path is not None:
                output_path(path, what)
        if val_split is not None and not 0.0 < val_split < 1.0:
            raise UsageError(f"--val-split must be a fraction between 0 and 1, got {val_split:g}")
        return opt, _load_model(spec)

    opt, model = collective(comm, prepare, "loading the spec")
    name = _spec_name(model, spec)
    out = out or output_path(default_out(name), "the default --out")
    constants = _parse_constants(constant, model)
    warn = lambda msg: echo(f"warning: {msg}", err=True)  # noqa: E731
    needs = [name for name, _, sample in model.INPUTS if sample is None]
    if data is None and needs:
        raise UsageError(f"--data is needed: {name} reads the inputs {', '.join(needs)}")
    if data is None:  # a plain function of its parameters (or of sampled inputs only): full-batch steps
        train_data, test_data = {}, None
    else:
        train_data, test_data = collective(comm, lambda: load_dataset(data, model, on_warning=warn), "reading the data")
    val_data = None
    if val_split is not None:
        train_data, val_data = _split(train_data, val_split, seed)
    held = "val" if val_data is not None else ("test" if test_data else None)
    word = objective_word(model)
    sizes = [f"{_n_samples(train_data)} train"]
    if val_data is not None:
        sizes.append(f"{_n_samples(val_data)} val")
    sizes.append(f"{_n_samples(test_data)} test")
    ranks = f", {comm.Get_size()} MPI ranks" if comm is not None else ""
    echo(f"{os.path.basename(spec)}: {', '.join(sizes)} samples, {opt}{ranks}")
    shown = model
    if device != "cpu":  # the kernels that train are the device twin's: name its file, not the CPU module's
        from symgrad.runtime.loader import as_target

        shown = as_target(model, device)
    where = getattr(shown, "__spec_path__", None)
    if where:
        echo(f"generated module: {where}")
    np_dtype = np.float32 if dtype == "float32" else np.float64
    if init is not None:
        params = {k: np.asarray(v, dtype=np_dtype) for k, v in _read_params(init, "--init", model).items()}
    else:
        params = model.init_params(seed, np_dtype)
    n_train = _n_samples(train_data)
    steps_per_epoch = max(1, n_train // batch_size) if n_train else 1
    steps_total = epochs * steps_per_epoch
    sched = _parse_schedules(schedule, model, steps_total)
    metrics_log = _Log(log if root else None, word, held)
    if log is not None and root and resume is not None and os.path.exists(resume):
        # the epochs before the checkpoint: from its histories, so the log is the uninterrupted run's
        from symgrad.runtime.checkpoint import load_checkpoint

        metrics_log.prefill(load_checkpoint(resume), steps_per_epoch)

    def on_epoch(info) -> None:
        from tqdm.auto import tqdm

        tqdm.write(_epoch_line(info, word, held or "test"))
        metrics_log.add(info)

    try:
        result = train(
            model,
            train_data,
            optimizer=opt,
            batch_size=batch_size,
            epochs=epochs,
            params=params,
            seed=seed,
            clip_norm=clip_norm,
            schedule=sched,
            constants=constants or None,
            progress=progress and root,
            validation=val_data if val_data is not None else test_data,
            checkpoint=checkpoint or resume,
            resume=resume is not None,
            callback=on_epoch,
            device=device,
            comm=comm,
        )
    except TrainingDiverged as exc:
        if exc.params is not None and root:
            _write_npz(out, exc.params)
            echo(f"last good parameters saved to {out}", err=True)
        raise
    except TrainingInterrupted as exc:  # Ctrl-C: nothing is lost, one line, the shell's status for SIGINT
        if root and exc.params is not None:
            _write_npz(out, exc.params)
            echo(f"error: {exc}; its parameters saved to {out}", err=True)
        sys.exit(exc.exit_code)
    if not root:  # rank 0 alone reports and writes files
        return
    click.echo(f"trained {result.steps} steps in {result.train_time:.2f} s")
    final = constants or None
    from symgrad.runtime.training import label_kind

    if val_data is None and not test_data and label_kind(model) is not None:
        # no held-out set, so no epoch line carries an accuracy: a classifier's is reported once, on the training data
        click.echo(_metrics_line("train", evaluate_arrays(model, result.params, train_data, final)))
    if val_data is not None and test_data:
        # the test set is not seen per epoch under --val-split: report it once, on the final parameters
        click.echo(_metrics_line("train", evaluate_arrays(model, result.params, train_data, final)))
        if val_data is not None:
            click.echo(_metrics_line("val", evaluate_arrays(model, result.params, val_data, final)))
        if test_data:
            click.echo(_metrics_line("test", evaluate_arrays(model, result.params, test_data, final)))
    _write_npz(out, result.params)
    click.echo(f"parameters saved to {out}")
    if log is not None:
        click.echo(f"per-epoch metrics saved to {log}")
    if plot is not None:
        _plot(plot, result.history, result.val_history, name, word, held)
        click.echo(f"{word} plot saved to {plot}")


def _guard(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except SymgradError as exc:
        if _print_errors(exc):
            click.echo(one_line(exc), err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - under mpiexec a rank's unexpected error must not hang the others
        _print_errors(exc)
        raise


class _MpiSafeCommand(click.Command):
    """Under `mpiexec`, a command line click refuses on one rank (`--epochs 0`) would leave the other ranks waiting
    for it forever: print click's message, then end the whole job."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.Exit:
            raise
        except click.ClickException as exc:
            from symgrad.runtime.distributed import abort, launched_size, world_comm

            comm = world_comm() if launched_size() > 1 else None
            if comm is None:
                raise
            abort(comm, f"rank {comm.Get_rank()}: bad command line: {one_line(exc)}")  # one line, not click's block
            raise  # pragma: no cover - abort ended the process


@click.command("train", cls=_MpiSafeCommand, epilog=DATA_HELP)
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--data",
    default=None,
    help="'digits' or FILE.npz with arrays named like the inputs (see below); not needed by a spec without data "
    "inputs.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "momentum", "nesterov", "adam"]),
    default="adam",
    show_default=True,
)
@click.option("--lr", type=float, default=None, help="Base learning rate (default: the optimizer's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Save the trained parameters to PARAMS.npz  [default: runs/<spec name>/params.npz].",
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Save the training curve to LOSS.png.")
@click.option(
    "--log",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write per-epoch metrics to METRICS.csv (one row per epoch).",
)
@click.option(
    "--val-split",
    type=float,
    default=None,
    help="Hold out this fraction of the training data as a validation set, evaluated every epoch "
    "(the test set is then evaluated once, at the end).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float64", "float32"]),
    default="float64",
    show_default=True,
    help="Floating-point type of the parameters and the arithmetic.",
)
@click.option(
    "--constant", multiple=True, metavar="NAME=VALUE", help="Set a spec constant, e.g. --constant beta=0.5. Repeatable."
)
@click.option("--schedule", multiple=True, metavar="SCHEDULE", help=SCHEDULE_HELP)
@click.option(
    "--init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from these parameters (a PARAMS.npz written by symgrad train) instead of the spec's init.",
)
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    default=None,
    help="Continue from this checkpoint (and keep checkpointing to it).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a checkpoint here at each epoch end.",
)
@click.option("--clip-norm", type=float, default=None, help="Clip each step's gradient to this norm.")
@click.option("--device", type=click.Choice(backends.names()), default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train_command(
    spec: str,
    data: str | None,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float | None,
    seed: int,
    out: str | None,
    plot: str | None,
    log: str | None,
    val_split: float | None,
    dtype: str,
    constant: tuple[str, ...],
    schedule: tuple[str, ...],
    init: str | None,
    resume: str | None,
    checkpoint: str | None,
    clip_norm: float | None,
    device: str,
    progress: bool,
) -> None:
    """Train SPEC with mini-batches; prints one line per epoch and saves the parameters (to
    runs/<spec name>/params.npz unless --out says otherwise; the path is printed at the end).

    The epoch line names the objective `loss` (minimised) or `objective` (a maximised ELBO or
    log-likelihood: it goes up), then the held-out set's values: `val_...` with --val-split,
    else `test_...` when the data has a test set."""
    _guard(
        _run,
        spec,
        data,
        epochs,
        batch_size,
        optimizer,
        lr,
        seed,
        out,
        plot,
        resume,
        checkpoint,
        clip_norm,
        device,
        progress,
        val_split=val_split,
        log=log,
        dtype=dtype,
        constant=constant,
        schedule=schedule,
        init=init,
    )


# ---------------------------------------------------------------------------------------------- predict, evaluate

_IO_HELP = """\b
--params: a PARAMS.npz written by symgrad train (runs/<name>/params.npz).
--data: FILE.npz with arrays named like the inputs (samples on the leading
axis); predict needs only the inputs the outputs depend on (no labels)."""


def _predict(spec: str, params_path: str, data: str, out: str | None) -> None:
    model = _load_model(spec)
    params = _read_params(params_path, "--params", model)
    arrays = _read_inputs(data, model)
    n = _n_samples(arrays)
    chunks: dict[str, list[np.ndarray]] = {}
    for sl in _chunks(n):
        for k, v in model.forward(params, {k: v[sl] for k, v in arrays.items()}).items():
            chunks.setdefault(k, []).append(np.asarray(v))
    preds = {k: np.concatenate(v) for k, v in chunks.items()}
    out = out or os.path.join("runs", _spec_name(model, spec), "predictions.npz")
    _write_npz(out, preds)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in preds.items())
    click.echo(f"{n} samples: {shapes}")
    click.echo(f"predictions saved to {out}")


@click.command("predict", epilog=_IO_HELP)
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--params", "params_path", required=True, type=click.Path(dir_okay=False), help="Trained PARAMS.npz.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="New inputs, FILE.npz.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the outputs here, one array per output  [default: runs/<spec name>/predictions.npz].",
)
def predict_command(spec: str, params_path: str, data: str, out: str | None) -> None:
    """Compute SPEC's outputs for new data with trained parameters."""
    _guard(_predict, spec, params_path, data, out)


def _evaluate(spec: str, params_path: str, data: str, split: str) -> None:
    model = _load_model(spec)
    params = _read_params(params_path, "--params", model)
    arrays = _read_inputs(data, model, held_out=split == "test")
    n = _n_samples(arrays)
    click.echo(_metrics_line(f"{split} ({n} samples)", evaluate_arrays(model, params, arrays)))


@click.command("evaluate", epilog=_IO_HELP)
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--params", "params_path", required=True, type=click.Path(dir_okay=False), help="Trained PARAMS.npz.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Inputs and targets, FILE.npz.")
@click.option(
    "--split",
    type=click.Choice(["train", "test"]),
    default="train",
    show_default=True,
    help="`train`: the arrays named like the inputs; `test`: the `<input>_test` arrays.",
)
def evaluate_command(spec: str, params_path: str, data: str, split: str) -> None:
    """Print SPEC's objective (and a classifier's accuracy) on a data set with trained parameters."""
    _guard(_evaluate, spec, params_path, data, split)
