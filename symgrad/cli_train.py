"""`symgrad train`: a thin click command over `symgrad.train` (the lead registers `train_command`)."""

from __future__ import annotations

import os
import sys
from types import ModuleType

import click
import numpy as np

from symgrad.errors import SymgradError, TrainingDiverged, UsageError


def _load_model(spec_path: str) -> ModuleType:
    """Build-if-stale and import the generated module (indirection so tests can substitute a double)."""
    import symgrad

    return symgrad.load(spec_path)


def _silent(*_args, **_kwargs) -> None:
    """`click.echo` on ranks other than 0 under `mpiexec`: rank 0 alone prints."""


def _print_errors() -> bool:
    """Under `mpiexec`, errors are raised on every rank together with the same text: rank 0 prints it."""
    from symgrad.distributed import launched_rank

    return launched_rank() == 0


def _epoch_line(info) -> str:
    parts = [f"epoch {info.epoch}/{info.epochs}", f"loss {info.loss:.4f}"]
    if info.accuracy is not None:
        parts.append(f"acc {info.accuracy:.3f}")
    if info.val_accuracy is not None:
        parts.append(f"val_acc {info.val_accuracy:.3f}")
    elif info.val_loss is not None:
        parts.append(f"val_loss {info.val_loss:.4f}")
    return "  ".join(parts)


def _plot(path: str, history: np.ndarray, val_history: np.ndarray | None, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, history, marker="o", label="train (mean batch objective)")
    if val_history is not None and len(val_history):
        ax.plot(epochs[: len(val_history)], val_history, marker="s", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("objective")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run(
    spec: str,
    data: str,
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
) -> None:
    from symgrad.data import describe, load_dataset
    from symgrad.distributed import collective, is_root, world_comm
    from symgrad.optim import make_optimizer
    from symgrad.training import train

    comm = world_comm()  # MPI.COMM_WORLD under `mpiexec -n N` (N > 1), else None
    root = is_root(comm)
    echo = click.echo if root else _silent

    if device == "cuda":
        from symgrad.cuda_runtime import require_cuda

        require_cuda()  # one clear line naming what is missing, before any data is read
    try:
        opt = make_optimizer(optimizer, lr)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if resume is not None and not os.path.exists(resume):
        raise UsageError(f"--resume: no such checkpoint {resume!r}")
    model = collective(comm, lambda: _load_model(spec), "loading the spec")
    train_data, test_data = collective(comm, lambda: load_dataset(data, model), "reading the data")
    ranks = f", {comm.Get_size()} MPI ranks" if comm is not None else ""
    echo(f"{os.path.basename(spec)}: {describe(train_data, test_data)}, {opt}{ranks}")
    name = str(getattr(model, "SPEC", {}).get("name", os.path.basename(spec)))
    try:
        from tqdm.auto import tqdm

        result = train(
            model,
            train_data,
            optimizer=opt,
            batch_size=batch_size,
            epochs=epochs,
            seed=seed,
            clip_norm=clip_norm,
            progress=progress and root,
            validation=test_data,
            checkpoint=checkpoint or resume,
            resume=resume is not None,
            callback=lambda info: tqdm.write(_epoch_line(info)),
            device=device,
            comm=comm,
        )
    except TrainingDiverged as exc:
        if out is not None and exc.params is not None and root:
            _save_npz(out, exc.params)
            echo(f"last good parameters saved to {out}", err=True)
        raise
    if not root:  # rank 0 alone reports and writes files
        return
    click.echo(f"trained {result.steps} steps in {result.train_time:.2f} s")
    if out is not None:
        _save_npz(out, result.params)
        click.echo(f"parameters saved to {out}")
    if plot is not None:
        _plot(plot, result.history, result.val_history, name)
        click.echo(f"loss plot saved to {plot}")


def _save_npz(out: str, arrays: dict) -> None:
    """np.savez's file, written atomically (loader.write_atomic: fresh temporary, rename, never through a link).
    The name is np.savez's: `.npz` appended when missing."""
    import io

    from symgrad.loader import write_atomic

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(out if str(out).endswith(".npz") else f"{out}.npz", buf.getvalue())


@click.command("train")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, help="'digits' or a FILE.npz with arrays named like the inputs.")
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
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Save parameters to PARAMS.npz.")
@click.option(
    "--plot", type=click.Path(dir_okay=False), default=None, help="Save the loss curve to LOSS.png."
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
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train_command(
    spec: str,
    data: str,
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
) -> None:
    """Train SPEC with the mini-batch runner; prints one line per epoch and saves the parameters."""
    try:
        _run(
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
        )
    except SymgradError as exc:
        if _print_errors():
            click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
