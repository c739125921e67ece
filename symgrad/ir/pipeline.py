"""The compiler's one entry: spec file -> checked program -> derivation -> kernel IR, for every backend alike.

A backend never derives again; it prints `Compiled.ir` (and reads `Compiled.program` for names and shapes), so two
backends of one spec cannot disagree about the maths.
"""

from __future__ import annotations

from dataclasses import dataclass

from symgrad.ir.derive import Derivation, derive
from symgrad.ir.graph import Program, build_program
from symgrad.ir.lower import KernelIR, lower


@dataclass(frozen=True)
class Compiled:
    """Everything the front and middle stages know about one spec."""

    spec_path: str
    program: Program
    derivation: Derivation
    ir: KernelIR


def compile_program(prog: Program, spec_path: str) -> Compiled:
    """Derive and lower an already-built program (a backend that refuses some programs checks them first)."""
    d = derive(prog)
    return Compiled(spec_path, prog, d, lower(d))


def compile_spec(spec_path: str) -> Compiled:
    """`build_program` -> `derive` -> `lower`: the whole middle of the pipeline."""
    return compile_program(build_program(spec_path), spec_path)
