"""CUDA render stage: the same KernelIR as the CPU module, printed as `numba.cuda` kernels plus host launchers.

Nothing is derived again: `build_program` -> `derive` -> `lower` are the CPU path's, and the scalar maths goes through
`KernelPrinter` (subclassed only for the backend deltas: `CudaPrinter`). What changes is the layout:

* a `LoopNest` becomes one `@cuda.jit` kernel; its threads cover the outer loops whose bounds are fixed
  (batch x target elements, one flat grid, index decomposition with the last loop fastest so neighbouring threads
  touch neighbouring elements); outer loops with bounds that depend on another loop, and the inner (reduction)
  loops, run sequentially inside each thread;
* a `+=` whose threads do not each own a distinct target element (affine target index, or more loops than the
  target has indices) is a scatter-add and goes through `cuda.atomic.add`;
* a `Gemm` is one launch of the module's shared tiled matrix-product kernel (transpose and accumulate flags passed);
* a `Fill` is a kernel over the buffer's elements.
"""

from __future__ import annotations

import sympy
from sympy import Indexed, Symbol

from symgrad.backends.base import (
    KernelPrinter,
    KernelWriter,
    _Lines,
    _names_in,
    check_names,
    module_context,
    printer_errors,
    render_template,
    statement_inputs,
)
from symgrad.errors import CodegenError, SpecError
from symgrad.ir.derive import Loop
from symgrad.ir.graph import Program, build_program
from symgrad.ir.lower import BATCH, BATCH_SIZE, Fill, Gemm, LoopNest, Mode, Reduce
from symgrad.ir.pipeline import compile_program
from symgrad.lang.library import BatchSum
from symgrad.lang.primitives import helper_imports

B_SYM = BATCH_SIZE
BATCH_ESTIMATE = 256  # batch size assumed when choosing between a per-thread loop and atomics
SEQUENTIAL_LIMIT = 4096  # a scatter-add loops inside each thread over at most this many iterations, else atomics


class CudaPrinter(KernelPrinter):
    """The CPU printer with the CUDA deltas: the scalar maths is printed by the very same methods."""

    backend_name = "cuda"
    helper_prefix = ""  # device helpers are imported by name
    witness = None


class CudaKernel:
    """One generated `@cuda.jit` kernel and how the host launches it."""

    def __init__(self, name: str, args: list[str], body: list[str], threads: str, doc: str):
        self.name = name
        self.args = args
        self.body = body
        self.threads = threads  # printed expression of the number of threads (may use _B)
        self.doc = doc


class CudaKernelWriter(KernelWriter):
    """Turns KernelIR operations into CUDA kernels (module level) and launch lines (host functions)."""

    printer_class = CudaPrinter
    NEG_INF = "-_INF"

    def __init__(self, ir, prefix: str, first: int = 0):
        super().__init__(ir)
        self.prefix = prefix
        self.first = first
        self.kernels: list[CudaKernel] = []
        self.reserved |= {"cuda", "_tid", "_r", "_INF", "_consts", "_gscale", "_B"}
        prog = ir.program
        self.shapes: dict[str, tuple] = {}
        for a in prog.arrays.values():
            self.shapes[a.name] = tuple(a.shape)
            self.shapes[prog.adjoint[a.name]] = tuple(a.shape)
        self.array_names = [a.name for a in prog.arrays.values()] + [prog.adjoint[a.name] for a in prog.arrays.values()]
        self.constants = list(prog.constants)

    # -- operations -> launch lines -------------------------------------------------------------------------
    def ops(self, ops: list) -> list[str]:
        out = _Lines()
        for op in ops:
            if isinstance(op, Gemm):
                self.gemm(op, out)
            elif isinstance(op, Fill):
                self.fill(op, out)
            elif isinstance(op, LoopNest):
                self.loopnest(op, out)
            else:  # pragma: no cover - a new op kind without a writer is a bug
                raise CodegenError(f"no CUDA writer for {type(op).__name__}")
        return out.lines

    def _full_shape(self, name: str) -> tuple:
        """Shape as stored on the device: leading `_B` for batched arrays, (1,) for unbatched 0-d ones."""
        shape = self.shapes[name]
        if name in self.batched:
            return ("_B",) + shape
        return shape or (1,)

    def gemm(self, op: Gemm, out: _Lines) -> None:
        a_nd, b_nd, o_nd = (len(self._full_shape(n)) for n in (op.a, op.b, op.out))
        a, b, o = op.a, op.b, op.out
        # every operand as a matrix: a vector A is one row (1, K), a vector B one column (K, 1)
        if a_nd == 1:
            a = f"{a}.reshape((1, {a}.shape[0]))"
        if b_nd == 1:
            b = f"{b}.reshape(({b}.shape[0], 1))"
        if o_nd == 1:
            o = f"{o}.reshape(({o}.shape[0], 1))" if a_nd == 2 else f"{o}.reshape((1, {o}.shape[0]))"
        if op.comment:
            out.add(f"# {op.comment}: tiled matrix product")
        out.add(f"_gemm({o}, {a}, {b}, {op.trans_a}, {op.trans_b}, {op.accumulate})")

    def fill(self, op: Fill, out: _Lines) -> None:
        name = op.buffer
        shape = self.shapes[name]
        idx = [Symbol(f"_f{k}", integer=True) for k in range(len(shape))]
        loops = [Loop(v, sympy.Integer(0), sympy.Integer(n - 1)) for v, n in zip(idx, shape, strict=True)]
        if name in self.batched:
            loops = [Loop(BATCH, sympy.Integer(0), B_SYM - 1)] + loops
        target = sympy.IndexedBase(name, real=True)[tuple(idx)] if shape else Symbol(name, real=True)
        self.loopnest(
            LoopNest(
                loops,
                [],
                target,
                sympy.Float(op.value),
                Mode.ASSIGN,
                reduce=Reduce.NONE,
                comment=f"{name} = {op.value}",
            ),
            out,
        )

    def _loopvars(self, op: LoopNest) -> dict:
        return self.loop_names(op.outer + op.inner)

    def loopnest(self, op: LoopNest, out: _Lines) -> None:
        loopvars = self._loopvars(op)
        expr, init, subs, locs, pr = self.prepare(op, loopvars)
        # threads: the outer loops with fixed bounds; loops with bounds that depend on another loop run inside
        # each thread, in their order
        rect = [lp for lp in op.outer if not ((lp.lo.free_symbols | lp.hi.free_symbols) - {B_SYM})]
        par = list(rect)
        inner = list(op.inner)
        reduce = op.reduce
        if op.mode == Mode.ACCUMULATE and not self._owned(op, par):
            # a scatter-add: loops that are not bare target indices either move into the thread (few iterations:
            # a deterministic sum, no atomics) or stay threads and add atomically
            shared = [lp for lp in par if lp not in self._owned_loops(op, par)]
            if _extent_estimate(shared) <= SEQUENTIAL_LIMIT:
                par = [lp for lp in par if lp not in shared]
                t_vars = op.target.free_symbols if isinstance(op.target, Indexed) else set()
                if (
                    reduce == Reduce.NONE
                    and not any(lp.var in t_vars for lp in op.outer if lp not in par)
                    and not any(lp not in rect for lp in op.outer)
                ):
                    inner = shared + inner  # target fixed per thread: accumulate in a register, write once
                    reduce = Reduce.SUM
        seq = [lp for lp in op.outer if lp not in par and lp not in inner]
        body = _Lines()
        body.depth = 1
        if par:
            extents = [sympy.expand(lp.hi - lp.lo + 1) for lp in par]
            total = sympy.Mul(*extents)
            threads = pr.doprint(total)
            body.add("_tid = cuda.grid(1)")
            body.add(f"if _tid >= {threads}:")
            body.add("    return")
            for k, (lp, ext) in enumerate(reversed(list(zip(par, extents, strict=True)))):
                v = loopvars[lp.var]
                lo = pr.doprint(lp.lo)
                off = "" if lp.lo == 0 else f"{lo} + "
                if k == len(par) - 1:
                    body.add(f"{v} = {off}_tid")
                else:
                    body.add(f"{v} = {off}_tid % {pr.doprint(ext)}")
                    body.add(f"_tid //= {pr.doprint(ext)}")
        else:
            threads = "1"
        for lp in seq:
            body.add(f"for {loopvars[lp.var]} in range({pr.doprint(lp.lo)}, {self._hi(lp, pr)}):")
            body.depth += 1
        target = pr.doprint(op.target)
        write = self._writer(op, target, par, loopvars)
        self.reduction(op, reduce, inner, expr, init, subs, locs, pr, loopvars, body, write)
        self._emit(op.comment or "", body.lines, threads, out)

    def _writer(self, op: LoopNest, target: str, par: list[Loop], loopvars: dict):
        """`target = v`, `target += v`, or an atomic add when threads share target elements."""
        if op.mode == Mode.ASSIGN:
            if not self._owned(op, par):
                raise CodegenError(f"CUDA: '=' into {target} from threads that share elements")
            return lambda v: f"{target} = {v}"
        if self._owned(op, par):
            return lambda v: f"{target} += {v}"
        base, _, rest = target.partition("[")
        index = rest[:-1]
        if "," not in index:
            return lambda v: f"cuda.atomic.add({base}, {index}, {v})"
        return lambda v: f"cuda.atomic.add({base}, ({index}), {v})"

    def _owned(self, op: LoopNest, par: list[Loop]) -> bool:
        """Does each thread own its own target element? Yes when every thread loop is a bare target index."""
        return len(self._owned_loops(op, par)) == len(par)

    def _owned_loops(self, op: LoopNest, par: list[Loop]) -> list[Loop]:
        t = op.target
        if isinstance(t, Indexed):
            name = self.names.get(t.base, str(t.base))
            idx = list(t.indices)
        else:
            name = self.names.get(t, str(t))
            idx = []
        bare = {i for i in idx if isinstance(i, Symbol)}
        if name in self.batched:
            bare.add(BATCH)
        return [lp for lp in par if lp.var in bare]

    def _emit(self, comment: str, body: list[str], threads: str, out: _Lines) -> None:
        used = _names_in("\n".join(body))  # one scan per kernel, not one per array (linear in the spec)
        args = [n for n in self.array_names if n in used]
        pre = []
        used_consts = [(k, c) for k, c in enumerate(self.constants) if c in used]
        if used_consts:
            args.append("_consts")
            pre = [f"    {c} = _consts[{k}]" for k, c in used_consts]
        if "_gscale" in used:
            args.append("_gscale")
        if "_B" in used:
            args.append("_B")
        name = f"_k{self.first + len(self.kernels):02d}_{self.prefix}"
        self.kernels.append(CudaKernel(name, args, pre + body, threads, comment))
        if comment:
            out.add(f"# {comment}")
        launch = "1, 1" if threads == "1" else f"_blocks({threads}), _TPB"
        out.add(f"{name}[{launch}]({', '.join(args)})")


def _extent_estimate(loops: list[Loop]) -> int:
    """Iterations of rectangular loops, the batch counted as BATCH_ESTIMATE samples."""
    n = 1
    for lp in loops:
        n *= int(sympy.expand(lp.hi - lp.lo + 1).subs(B_SYM, BATCH_ESTIMATE))
    return n


def unsupported(prog: Program) -> tuple[str, int] | None:
    """Why this backend cannot build the program (message, spec line), or None: what `build --target all` skips."""
    if prog.recurrences:
        rec = prog.recurrences[0]
        return (
            f"recurrence {rec.members[-1]} runs on the CPU backend only (the CUDA writer has no step loop yet); "
            f"build it with --target cpu",
            prog.arrays[rec.members[-1]].line,
        )
    batch_stat = next((st for st in prog.statements if isinstance(st.body, BatchSum)), None)
    if batch_stat is not None:
        return (
            "batch statistics (batch_mean, batch_sum) run on the CPU backend only; build it with --target cpu",
            batch_stat.line,
        )
    return None


def render_cuda_module(spec_path: str, display_path: str | None = None) -> str:
    """The full text of generated/<name>_cuda.py for one spec."""
    prog = build_program(spec_path)
    check_names(prog)
    refused = unsupported(prog)
    if refused is not None:
        raise SpecError(refused[0], prog.spec.path, refused[1])
    c = compile_program(prog, spec_path)
    ir = c.ir
    with printer_errors(spec_path, "CUDA"):
        fw = CudaKernelWriter(ir, "fwd")
        forward_lines = fw.ops(ir.forward_ops)
        bw = CudaKernelWriter(ir, "bwd", first=len(fw.kernels))
        backward_lines = bw.ops(ir.backward_ops)

    def dev_shape(shape: tuple, batched: bool) -> str:
        if batched:
            return "(_B, " + "".join(f"{n}, " for n in shape).rstrip(", ") + ")" if shape else "(_B,)"
        return str(tuple(shape) if shape else (1,))

    deps = statement_inputs(prog)
    ctx = module_context(c, display_path, prog.spec.description)
    ctx.update(
        {
            "consts": [{"name": n, "default": v} for n, (v, _) in prog.constants.items()],
            "statements": [
                {
                    "name": st.name,
                    "user_shape": tuple(st.shape),
                    "batched": st.batched,
                    "inputs": deps[st.name],
                    "dev_shape": dev_shape(tuple(st.shape), st.batched),
                }
                for st in prog.statements
            ],
            "adjoints": [
                {"name": b.name, "dev_shape": dev_shape(tuple(b.shape), b.batched)} for b in ir.adjoint_buffers
            ],
            "kernels": fw.kernels + bw.kernels,
            "cuda_helpers": helper_imports("cuda"),  # the template's import line: every row's CUDA device form
            "forward_lines": forward_lines,
            "backward_lines": backward_lines,
            "loss_index": [st.name for st in prog.statements].index(prog.loss_name),
            "grad_names": [p["grad_name"] for p in ctx["params"]],
        }
    )
    return render_template("cuda", ctx, spec_path)
