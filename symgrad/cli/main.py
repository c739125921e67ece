"""Command line: thin click commands that call the stages and map errors to exit codes (API.md).

Exit status: 0 success, 1 a check failed or training diverged, 2 a usage or spec error (one line, no traceback).
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from pathlib import Path

import click

from symgrad import backends
from symgrad.cli.messages import one_line
from symgrad.errors import CheckFailed, SpecError, SymgradError, UsageError


def _fail(message: str, code: int) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def guarded(spec_arg: str | None = None):
    """Run a command body; a SymgradError becomes its one-line message and exit code. An unexpected exception
    while reading a spec is reported as a spec error at line 1 rather than a traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SymgradError as exc:
                _fail(one_line(exc), exc.exit_code)
            except (RecursionError, MemoryError) as exc:
                where = kwargs.get(spec_arg) if spec_arg else None
                _fail(f"{where or '<spec>'}:1: spec is too complex to process ({type(exc).__name__})", 2)

        return inner

    return wrap


class _Group(click.Group):
    """click's usage errors (a bad option value, an unknown option) as one line `error: ...` and exit 2, the same
    as every other usage error, instead of click's three-line usage block."""

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Abort:  # Ctrl-C outside training (click turns KeyboardInterrupt into Abort)
            _fail("error: interrupted", 130)
        except click.exceptions.NoArgsIsHelpError as exc:  # `symgrad` alone: the help text, as click prints it
            _fail(exc.format_message(), exc.exit_code)
        except click.ClickException as exc:
            _fail(one_line(exc), exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="symgrad")
def main() -> None:
    """symgrad: derive gradients of symbolic specs, print them as LaTeX, generate Numba kernels, train."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--wrt", multiple=True, help="only these parameters' gradients")
@click.option("--format", "fmt", type=click.Choice(["latex", "text"]), default="latex", show_default=True)
@click.option("--render", type=click.Path(dir_okay=False), help="also write OUT.png (mathtext) or OUT.html")
@guarded("spec")
def derive(spec: str, wrt: tuple[str, ...], fmt: str, render: str | None) -> None:
    """Print the backward pass and each parameter's gradient."""
    from symgrad.display.derivation import render_text
    from symgrad.ir.derive import derive as run_derive
    from symgrad.ir.graph import build_program

    if render is not None:
        from symgrad.runtime.paths import output_path

        if not render.endswith((".png", ".html")):
            raise UsageError(f"--render must name a .png or .html file, got {render!r}")
        output_path(render, "--render")  # before the derivation's seconds, not after them
    d = run_derive(build_program(spec))
    text = render_text(d, fmt, list(wrt) or None)
    click.echo(text, nl=False)
    if render:
        from symgrad.display.derivation import derivation_lines
        from symgrad.display.page import render_file

        try:
            render_file(derivation_lines(d, "latex", list(wrt) or None), d.program.spec.name, render)
        except OSError as exc:
            raise UsageError(f"cannot write {render}: {exc.strerror or exc}") from None
        click.echo(f"wrote {render!r}" if "\n" in render else f"wrote {render}", err=True)


@main.command()
@click.argument("specs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default="generated", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--target",
    type=click.Choice([*backends.names(), "all"]),
    default="cpu",
    show_default=True,
    help="backend to generate for (all: every backend that can build the spec)",
)
@click.option("--check", is_flag=True, help="regenerate in memory; exit 1 if a file on disk differs")
@guarded()
def build(specs: tuple[str, ...], out_dir: str, target: str, check: bool) -> None:
    """Generate OUT/<name>.py from each spec (default: specs/*.yaml); prints `wrote PATH` for each file written
    and `unchanged PATH` for one already up to date. (`symgrad.load` builds into its own cache instead; see
    docs/api.md.)"""
    from symgrad.artifacts import write_atomic
    from symgrad.frontend.spec import load_spec
    from symgrad.ir.graph import build_program

    if not out_dir.strip():  # an unset $OUTDIR in a script: not the current folder in silence
        raise UsageError("--out must name a folder, got an empty string")
    targets = [backends.get(t) for t in (backends.names() if target == "all" else (target,))]
    longest_suffix = max((backends.get(n).suffix for n in backends.names()), key=len)  # names fit every backend
    given = [Path(s) for s in specs] or sorted(Path("specs").glob("*.yaml"))
    if not given:
        raise UsageError("no specs given and none found under specs/")
    paths = list({os.path.realpath(p): p for p in reversed(given)}.values())[::-1]  # a file listed twice: once
    rendered: list[tuple[Path, str | None]] = []  # None: a file on disk that nothing builds (--check only)
    owners: dict[str, tuple[Path, str]] = {}  # output file name -> (spec, its name)
    name_max = _name_max(Path(out_dir))
    project = Path(out_dir).resolve().parent  # headers name the spec relative to the project, from any folder

    def backends_for(name: str) -> list:
        """The backends to render: the targets; with --check also any other backend whose file is on disk (a CUDA
        module left from `--target all` that no longer matches its spec is caught by a plain `build --check`)."""
        if not check:
            return targets
        return [
            b
            for b in map(backends.get, backends.names())
            if b in targets or (Path(out_dir) / f"{name}{b.suffix}.py").exists()
        ]

    for path in paths:  # everything is generated before anything is written: a bad spec writes nothing
        spec = load_spec(path)
        name = spec.name
        # every backend's file name, for every backend (so `A` with --target all and `A_cuda` never share one)
        for suffix in {backends.get(n).suffix for n in backends.names()}:
            file = name + suffix
            if file in owners and owners[file][0] != path:
                other, other_name = owners[file]
                raise SpecError(
                    f"name {name!r} and the name {other_name!r} of {other} would both write "
                    f"{Path(out_dir) / (file + '.py')}; give one another name",
                    str(path),
                    spec.line_of.get("name", 1),
                )
            owners[file] = (path, name)
        if len(f".symgrad-{name}{longest_suffix}.py.tmp12345678".encode()) > name_max:
            raise SpecError(
                f"name {name[:40]!r}... is too long for a file name in {out_dir} (at most {name_max} bytes there)",
                str(path),
                spec.line_of.get("name", 1),
            )
        for backend in backends_for(name):
            out_file = Path(out_dir) / f"{name}{backend.suffix}.py"
            refused = (
                backend.unsupported(build_program(str(path))) if target == "all" or backend not in targets else None
            )
            if refused is not None:
                if backend in targets:
                    click.echo(f"note: {path}: no {backend.name} module: {refused[0]}", err=True)
                else:  # --check: a file this backend cannot build is on disk; it is no build of the spec
                    rendered.append((out_file, None))
                continue
            rendered.append((out_file, backend.render(path, _display(path, project))))
    if check:
        if not specs:  # the whole of specs/: a generated module on disk that no spec builds is stale too
            rendered += [(orphan, None) for orphan in _orphans(Path(out_dir), owners)]
        stale = []
        for path, text in rendered:
            old = _read_generated(path)
            if text is None:
                stale.append(path)
                click.echo(f"{path}: is not the build of any spec here (remove it)")
            elif old != text:
                stale.append(path)
                before = (old or "").splitlines(True)
                diff = difflib.unified_diff(
                    before, text.splitlines(True), f"{path} (on disk)", f"{path} (regenerated)", n=2
                )
                sys.stdout.writelines(list(diff)[:200])
        if stale:
            raise CheckFailed(f"{len(stale)} generated file(s) differ from their specs; run `symgrad build` to update")
        click.echo(f"{len(rendered)} generated file(s) up to date")
        return
    for path, text in rendered:
        if text is None:
            continue
        if not path.is_symlink() and _read_generated(path) == text:
            click.echo(f"unchanged {path}")
            continue
        try:
            write_atomic(path, text)  # fresh O_EXCL temporary + rename: never through a link, never half a file
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        click.echo(f"wrote {path}")
    if not specs:  # never deleted (it may be someone's work), but said: `build --check` will report it
        for orphan in _orphans(Path(out_dir), owners):
            click.echo(f"note: {orphan} is not the build of any spec under specs/ (remove it)", err=True)


def _orphans(out_dir: Path, owners: dict) -> list[Path]:
    """Modules in `out_dir` headed as symgrad's output that no spec under specs/ builds for any backend (a spec
    removed or renamed): `generated/` must be exactly the build of `specs/`. `owners` holds every backend's file
    stem of every spec. Files without symgrad's header are the user's, not ours."""
    if not out_dir.is_dir():
        return []
    out = []
    for file in sorted(out_dir.glob("*.py")):
        if file.stem in owners or file.is_symlink():
            continue
        head = (_read_generated(file) or "")[:200]
        if head.startswith("# Generated by symgrad "):
            out.append(file)
    return out


def _name_max(out_dir: Path) -> int:
    """The longest file name the output folder's filesystem takes (255 where it cannot be asked)."""
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def cpu_only(path: Path) -> bool:
    """Can only the CPU backend build this spec (a recurrence or a batch statistic, today)?"""
    from symgrad.ir.graph import build_program

    prog = build_program(str(path))
    return any(backends.get(n).unsupported(prog) is not None for n in backends.names() if n != "cpu")


def _read_generated(path: Path) -> str | None:
    """What a generated file on disk holds, or None when it is missing, not a regular file (a folder, a FIFO: never
    opened), too large or not UTF-8: such a file differs (`--check`) and is replaced (`build`)."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64 * 2**20:
            return None
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _display(path: Path, project: Path | None = None) -> str:
    """The spec path as a generated header names it: relative to the project (the folder above --out) when the
    spec is inside it, else to the current folder, else its file name."""
    for base in (project, Path.cwd()):
        if base is None:
            continue
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return path.name


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--rtol", default=1e-5, show_default=True, type=float)
@guarded("spec")
def check(spec: str, seed: int, rtol: float) -> None:
    """Compare generated gradients with float64 central differences on random inputs, and the generated loss with
    the independent reference evaluator (naming the first statement that differs)."""
    import math

    from symgrad.checks.gradcheck import LOSS_RTOL, gradient_check, loss_check
    from symgrad.checks.reference import EvaluatorError

    if not (math.isfinite(rtol) and rtol > 0):  # a NaN tolerance would make every comparison pass
        raise UsageError(f"--rtol must be a positive finite number, got {rtol:g}")

    try:
        rows = gradient_check(spec, seed=seed)
        lc = loss_check(spec, seed=seed)
    except SymgradError:
        raise
    except EvaluatorError as exc:  # e.g. a summation index that escaped its Sum while parsing
        raise CheckFailed(f"check failed: the reference evaluator cannot evaluate this spec: {exc}") from None
    except Exception as exc:  # a kernel must never raise (ZeroDivisionError, a name it never bound): a failed check
        raise CheckFailed(
            f"check failed: {type(exc).__name__} while building or running the generated module: {exc}"
        ) from None
    worst = 0.0
    for name, err in rows:
        status = "ok" if err <= rtol else "MISMATCH"
        click.echo(f"{name:<16} worst relative error {err:.2e}  {status}")
        worst = max(worst, err)
    status = "ok" if lc.rel_error <= LOSS_RTOL and "loss" not in lc.nonfinite else "MISMATCH"
    click.echo(
        f"{'loss':<16} generated {lc.generated:.17g} reference {lc.reference:.17g} "
        f"relative error {lc.rel_error:.2e}  {status}"
    )
    if lc.first_bad is not None and lc.first_bad[0]:
        name, line, err = lc.first_bad
        click.echo(f"{'':<16} first statement that differs: {name} ({spec}:{line}), relative error {err:.2e}")
    elif lc.first_bad is not None:
        click.echo(
            f"{'':<16} every statement agrees with the reference on its own; the loss differs (a statement "
            "read before it is fully written, or the reduction over the batch)"
        )
    for what in lc.nonfinite:
        click.echo(f"{'':<16} {what} is not finite  MISMATCH")
    if worst > rtol:
        raise CheckFailed(f"gradient check failed: worst relative error {worst:.2e} > rtol {rtol:g}")
    if not lc.ok():
        what = (
            ", ".join(lc.nonfinite) + " not finite"
            if lc.nonfinite
            else f"relative error {lc.rel_error:.2e} > {LOSS_RTOL:g}"
        )
        raise CheckFailed(f"loss check failed against the reference evaluator: {what}")


def _register_train() -> None:
    try:
        from symgrad.cli.train import evaluate_command, predict_command, train_command
    except ImportError:  # pragma: no cover - the runtime is part of the package
        return
    main.add_command(train_command, "train")
    main.add_command(predict_command, "predict")
    main.add_command(evaluate_command, "evaluate")


_register_train()


if __name__ == "__main__":  # pragma: no cover
    main()
