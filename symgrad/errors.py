"""Exception hierarchy that carries exit codes (click's own pattern): the CLI maps each to one line and a status."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class SymgradError(Exception):
    """Base class: every error symgrad raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1


class SpecError(SymgradError):
    """A spec that cannot be used: printed as `FILE:LINE: message`, exit 2."""

    exit_code = 2

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<spec>"
        return f"{where}:{self.line or 1}: {self.message}"


class UsageError(SymgradError):
    """Bad command-line or API usage (unknown option value, missing file): exit 2."""

    exit_code = 2


class DataError(SymgradError):
    """Training data that does not fit the spec: names the array and the expected shape. Exit 2."""

    exit_code = 2


class CodegenError(SymgradError):
    """A template or printer failure: a bug in symgrad, never silently rendered."""

    exit_code = 1


class CheckFailed(SymgradError):
    """`symgrad check` or `build --check` found a mismatch: exit 1."""

    exit_code = 1


class TrainingDiverged(SymgradError):
    """A step produced a non-finite loss or gradient. `params` holds the last good parameters."""

    exit_code = 1

    # Set by the trainer that raises it, not by __init__: the batch objectives of the steps that completed and,
    # from the distributed trainer, the ranks whose values were not finite and the message's "where" part.
    objectives: np.ndarray
    ranks: list[int]
    where: str

    def __init__(
        self,
        message: str,
        step: int,
        epoch: int | None = None,
        params: dict | None = None,
        result: object | None = None,
    ):
        self.step = step
        self.epoch = epoch
        self.params = params
        self.result = result
        super().__init__(message)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `symgrad.train`: still a KeyboardInterrupt (so it stops a script as Ctrl-C does), carrying
    what a divergence carries: the step reached, the parameters after it and the result so far."""

    exit_code = 130  # the shell's convention for SIGINT
    all_ranks = False  # under MPI: every rank stopped at this step together (symgrad.runtime.distributed)

    def __init__(self, message: str, step: int, epoch: int, params: dict | None = None, result: object | None = None):
        self.step = step
        self.epoch = epoch
        self.params = params
        self.result = result
        super().__init__(message)
