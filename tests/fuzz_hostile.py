"""Grammar fuzz of the whole front end: mutated specs through `symgrad derive`, `symgrad build` and loading the
built module. The promise under test (issue 12): every mutant ends in a clean one-line `FILE:LINE: message`
refusal (exit 2) or builds a module that imports and runs; never a traceback, a hang, or code that runs.

    python tests/fuzz_hostile.py --n 10000 --seed 1     # the campaign (NUMBA_DISABLE_JIT=1: no compile)
    python tests/fuzz_hostile.py --n 300                # what tests/test_hostile.py runs in CI

Mutants are deterministic in (seed, index): a failure prints its index and is saved under --save DIR, so it
can be replayed with `--only INDEX`. Calls of the built module run pure Python (JIT disabled) with a time limit;
arithmetic exceptions there are Python's semantics, not Numba's, and are counted apart, not as failures.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_DISABLE_JIT", "1")  # before numba is imported anywhere: loading is tested compile-free

import argparse  # noqa: E402
import collections  # noqa: E402
import importlib.util  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from symgrad.cli.main import main  # noqa: E402

ONE_LINE = re.compile(r"^[^\n]*:\d+: [^\n]+\n?$")
STAGE_SECONDS = 30  # a stage running longer than this is a hang
CALL_SECONDS = 5  # a pure-Python kernel call running longer is skipped (slow, not wrong)

SEEDS = [
    "name: lin\ndescription: linear\ninputs: {x: [], y: []}\nparams: {w: {shape: [], init: 1.0}, b: []}\n"
    "forward:\n  yhat: w*x + b\nloss: (yhat - y)**2\n",
    "name: mlp\ndims: {D: 4, H: 3, K: 2}\ninputs: {x: [D], y: [K]}\n"
    "params:\n  W1: {shape: [H, D], init: 'normal(0, 0.1)'}\n  b1: [H]\n  W2: {shape: [K, H], init: glorot_uniform}\n"
    "  b2: [K]\nforward:\n  h: relu(W1 @ x + b1)\n  z: W2 @ h + b2\nloss: softmax_cross_entropy(z, y)\n",
    "name: idx\ndims: {N: 5}\ninputs: {x: [N]}\nparams: {a: [N], c: []}\nconstants: {lam: 0.1}\n"
    "forward:\n  s[i]: {shape: [N], expr: 'Sum(a[j]*x[j], (j, 0, i))'}\n  t: sum(s[i]**2, i)\n"
    "loss: t + lam*sum(a[i]**2, i) + c**2 + Sum(a[i + 1]*x[i], (i, 0, N - 2))\noutputs: [s]\n",
    "name: pw\ninputs: {x: {shape: [3], sample: normal}}\nparams: {w: {shape: [3], init: 'uniform(-1, 1)'}}\n"
    'functions: {"f(u)": "u*sigmoid(u)"}\nforward:\n  - h: Piecewise((w*x, x > 0), (0.5*w*x, True))\n'
    "  - g: f(h)\nloss: sum(log_sigmoid(g)) + Max(w[0], w[1]) - Min(w[1], 0.5)\nobjective: maximize\n"
    "reduction: sum\n",
    "name: q\nparams: {w: [2], v: {shape: [], init: -0.5}}\nloss: (w[0] - 1)**2 + 10*(w[1] - w[0]**2)**2 + "
    "exp(v) + softplus(v) + tanh(v)*sqrt(v**2 + 1) + abs(v)\n",
    "name: lse\ndims: {K: 3}\ninputs: {z0: [K]}\nparams: {W: [K, K]}\n"
    "forward:\n  z: W @ z0\n  m: logsumexp(z)\n  p: softmax(z)\nloss: m - mean(p*log(p + 1e-9))\n",
]

POOL_TOKENS = [
    "0",
    "-1",
    "1e308",
    "1e-320",
    "10**30",
    "2**10**10",
    "9**9**9",
    "1e309",
    "017",
    "1:30",
    ".inf",
    "nan",
    "9" * 400,
    "0.5",
    "2",
    "D",
    "N",
    "x",
    "w",
    "W",
    "h",
    "i",
    "j",
    "k",
    "B",
    "L",
    "np",
    "range",
    "math",
    "w_bar",
    "s_L",
    "_b",
    "lambda",
    "None",
    "True",
    "not",
    "and",
    "or",
    ">",
    "<",
    "==",
    "!=",
    "@",
    "**",
    "//",
    "%",
    "+",
    "-",
    "*",
    "/",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "'",
    '"',
    '"""',
    "\\",
    "\\x",
    "\\N{",
    "\\u12",
    "\n",
    "\t",
    "#",
    "!!python/object",
    "&a",
    "*a",
    "sum",
    "Sum",
    "mean",
    "Piecewise",
    "sqrt",
    "log",
    "exp",
    "relu",
    "softmax",
    "logsumexp",
    "sigmoid",
    "Max",
    "Min",
    "Heaviside",
    "sign",
    "abs",
    "__import__",
    "open",
    "eval",
    "x.T",
    "x[0:2]",
    "lambda q: q",
    "[i for i in x]",
    "f'{x}'",
    "x if x else w",
    "(j, 0, 5)",
    "(j, -3, 100)",
    "w[i + 1]",
    "w[2*i]",
    "w[100]",
    "normal(0, 1e309)",
    "xavier",
    "zeros",
    "ones",
    "a" * 300,
    "é",
    "\u2028",
    "\x00",
    "",
    " ",
]
EXPR_ATOMS = ["x", "w", "b", "h", "W1", "W2", "a", "c", "v", "z", "1", "0.5", "2", "1e308", "10**30", "-1"]
EXPR_FUNCS = [
    "exp",
    "log",
    "sqrt",
    "tanh",
    "sigmoid",
    "relu",
    "softplus",
    "abs",
    "sum",
    "mean",
    "softmax",
    "logsumexp",
    "log_sigmoid",
    "sin",
    "cos",
    "step",
    "sign",
]


def random_expr(rng: random.Random, depth: int = 0, names: list[str] | None = None) -> str:
    """A random expression over the spec's own names (so that many mutants are accepted and built)."""
    atoms = (names or []) * 3 + EXPR_ATOMS
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(atoms)
    r = rng.random()
    if r < 0.4:
        return (
            f"({random_expr(rng, depth + 1, names)} {rng.choice(['+', '-', '*', '/', '**', '@'])} "
            f"{random_expr(rng, depth + 1, names)})"
        )
    if r < 0.8:
        return f"{rng.choice(EXPR_FUNCS)}({random_expr(rng, depth + 1, names)})"
    if r < 0.9:
        return f"Piecewise(({random_expr(rng, depth + 1, names)}, {random_expr(rng, depth + 1, names)} > 0), (0, True))"
    return f"{random_expr(rng, depth + 1, names)}[{rng.choice(['i', 'j', '0', 'i + 1'])}]"


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(1 if rng.random() < 0.6 else rng.randint(2, 3)):
        op = rng.random()
        k = rng.randrange(len(lines))
        line = lines[k]
        if op < 0.25:  # replace one token
            toks = list(re.finditer(r"[A-Za-z_]\w*|\d+\.?\d*(?:e[-+]?\d+)?|\S", line))
            if toks:
                t = rng.choice(toks)
                line = line[: t.start()] + rng.choice(POOL_TOKENS) + line[t.end() :]
        elif op < 0.33:  # insert a token
            pos = rng.randint(0, len(line))
            line = line[:pos] + rng.choice(POOL_TOKENS) + line[pos:]
        elif op < 0.6 and ":" in line:  # replace a value by a random expression
            key, _, _ = line.partition(":")
            declared = re.findall(r"^\s*-?\s*([A-Za-z_]\w*)(?:\[[^]]*\])?\s*:|[{,]\s*([A-Za-z_]\w*)\s*:", text, re.M)
            names = sorted(
                {a or b for a, b in declared}
                - {
                    "name",
                    "params",
                    "loss",
                    "inputs",
                    "forward",
                    "dims",
                    "shape",
                    "init",
                    "expr",
                    "sample",
                    "constants",
                }
            )
            line = f"{key}: {random_expr(rng, 0, names)}"
        elif op < 0.72:  # rename a name everywhere
            names = sorted(set(re.findall(r"\b[A-Za-z_]\w*\b", text)) - {"name", "params", "loss", "inputs"})
            if names:
                old = rng.choice(names)
                new = rng.choice(
                    [
                        "np",
                        "range",
                        "L",
                        "w_bar",
                        "math",
                        "s_L",
                        "a" * 300,
                        "lambda",
                        "_x",
                        "B",
                        "sum",
                        "exp",
                        "x2",
                        "Sum",
                        "i",
                        "D",
                    ]
                )
                return re.sub(rf"\b{re.escape(old)}\b", new, "\n".join(lines))
        elif op < 0.8:  # delete a line
            del lines[k]
            if not lines:
                lines = [""]
            continue
        elif op < 0.86:  # duplicate a line
            lines.insert(k, line)
        elif op < 0.92:  # swap two lines
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], line
            continue
        else:  # a number becomes an extreme one
            nums = list(re.finditer(r"\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", line))
            if nums:
                t = rng.choice(nums)
                line = (
                    line[: t.start()]
                    + rng.choice(
                        [
                            "0",
                            "-1",
                            "1e308",
                            "1e309",
                            "017",
                            "1:30",
                            "10**30",
                            "2**10**10",
                            "9" * 400,
                            "1000000000",
                            "65536",
                            "3.5",
                            "100000",
                        ]
                    )
                    + line[t.end() :]
                )
        lines[k] = line
    return "\n".join(lines)


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def _where(exc: BaseException) -> str:
    """Type and innermost symgrad (or generated) frame: the class of a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "symgrad" in f.filename or f.filename.endswith(".py") and "gen" in f.filename]
    f = (ours or frames or [None])[-1]
    loc = f"{Path(f.filename).name}:{f.lineno}" if f else "?"
    return f"{type(exc).__name__} at {loc}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"


def _cli(args: list[str]) -> tuple[str, str]:
    """('ok' | 'refused' | 'codegen' | 'traceback' | 'bad-output', detail)."""
    signal.alarm(STAGE_SECONDS)
    try:
        r = CliRunner().invoke(main, args, catch_exceptions=True)
    except Timeout:
        return "hang", " ".join(args[:1])
    finally:
        signal.alarm(0)
    if isinstance(r.exception, Timeout):
        return "hang", " ".join(args[:1])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        return "traceback", _where(r.exception)
    if r.exit_code == 0:
        return "ok", ""
    if not ONE_LINE.match(r.output):
        return "bad-output", repr(r.output[:200])
    return ("refused" if r.exit_code == 2 else "codegen"), r.output.strip()[:160]


def _load(path: Path) -> tuple[str, str]:
    """Import the built module and, when its sizes are small, call loss_and_grad on a random batch."""
    signal.alarm(STAGE_SECONDS)
    try:
        spec = importlib.util.spec_from_file_location(f"fz_{abs(hash(str(path)))}", path)
        m = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = m
        spec.loader.exec_module(m)
        sizes = (
            [m.N_THETA]
            + [int(np.prod(s)) for _, s, _ in m.INPUTS]
            + [int(np.prod(s[0])) for s in m.STATEMENT_SHAPES.values()]
        )
        if max(sizes) > 100_000:
            return "ok-import-only", ""
    except Timeout:
        return "hang", "import"
    except BaseException as exc:  # noqa: BLE001 - classified, that is the point
        return "traceback", "import: " + _where(exc)
    finally:
        signal.alarm(0)
    signal.alarm(CALL_SECONDS)
    try:
        params = m.init_params(seed=0)
        rng = np.random.default_rng(0)
        batch = {n: rng.standard_normal((2, *s)) for n, s, _ in m.INPUTS}
        m.loss_and_grad(params, batch or None)
        m.forward(params, batch or None)
        return "ok", ""
    except Timeout:
        return "slow-call", ""
    except (ZeroDivisionError, OverflowError, FloatingPointError, ValueError) as exc:
        if isinstance(exc, ValueError) and "math domain" not in str(exc):
            return "traceback", "call: " + _where(exc)
        return "python-arith", type(exc).__name__  # pure-Python semantics (JIT off): not a Numba failure
    except BaseException as exc:  # noqa: BLE001
        return "traceback", "call: " + _where(exc)
    finally:
        signal.alarm(0)


def run_one(index: int, seed: int, work: Path) -> tuple[str, str, str]:
    """(stage, outcome, detail) of one mutant; stage is where it ended."""
    rng = random.Random(seed * 1_000_003 + index)
    text = mutate(rng.choice(SEEDS), rng)
    spec = work / f"m{index}.yaml"
    spec.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = work / f"out{index}"
    outcome, detail = _cli(["derive", str(spec)])
    if outcome != "ok":
        return "derive", outcome, detail
    outcome, detail = _cli(["build", str(spec), "--out", str(out), "--target", "all"])  # CPU and CUDA text
    if outcome != "ok":
        return "build", outcome, detail
    built = [p for p in out.glob("*.py") if not p.name.endswith("_cuda.py")]
    if len(built) != 1 or len(list(out.glob("*_cuda.py"))) != 1:
        return "build", "traceback", f"build wrote {sorted(p.name for p in out.iterdir())}"
    try:
        compile((list(out.glob("*_cuda.py"))[0]).read_text(encoding="utf-8"), "cuda", "exec")
    except SyntaxError as exc:
        return "build", "traceback", f"CUDA module does not compile: {exc.msg}"
    outcome, detail = _load(built[0])
    return "load", outcome, detail


FAILURES = {"traceback", "hang", "bad-output", "codegen"}
# names that shadow what generated code uses: the name allocator's part of issues 11/12, counted apart
# (`i`, `n`, `kind`, ... are parameters of the CUDA host functions; an index named `B` prints as the batch size)
SHADOWING = re.compile(
    r"(?<![\w.])(np|math|range|max|min|abs|L|w_bar|s_L|_b|B|lambda|sum|exp|cuda|_mf|_rt)\s*[:\[]"
    r"|[{,]\s*(i|n|kind|t0|gscale|dtype|clip_norm|theta_d|grad_d|consts_d|out_d)\s*:|\[\s*B\s*[],]"
)


def campaign(n: int, seed: int, save: Path | None, only: int | None = None, quiet: bool = False) -> dict:
    import warnings

    warnings.simplefilter("ignore")  # overflow warnings of pure-Python kernels are expected, not findings
    signal.signal(signal.SIGALRM, _alarm)
    counts: collections.Counter = collections.Counter()
    classes: dict[str, list[int]] = collections.defaultdict(list)
    indices = [only] if only is not None else range(n)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cwd = os.getcwd()
        os.chdir(work)  # anything a mutant managed to write would land here, and be seen
        try:
            for i in indices:
                stage, outcome, detail = run_one(i, seed, work)
                counts[f"{stage}:{outcome}"] += 1
                if outcome in FAILURES:
                    shadow = SHADOWING.search((work / f"m{i}.yaml").read_text(errors="replace"))
                    tag = "[name shadows generated code] " if shadow and stage in ("load", "build") else ""
                    classes[f"{tag}{stage} {outcome}: {detail}"].append(i)
                    if save is not None:
                        save.mkdir(parents=True, exist_ok=True)
                        (save / f"mutant{i}.yaml").write_bytes((work / f"m{i}.yaml").read_bytes())
                    if not quiet:
                        print(f"[{i}] {stage} {outcome}: {detail}", flush=True)
                for p in work.iterdir():  # keep the folder small; note anything unexpected
                    if p.name.startswith(("m", "out")):
                        if p.is_dir():
                            for q in p.iterdir():
                                q.unlink()
                            p.rmdir()
                        else:
                            p.unlink()
                    else:
                        classes[f"unexpected file written: {p.name}"].append(i)
                        p.unlink() if p.is_file() else None
                if not quiet and (i + 1) % 500 == 0:
                    print(f"... {i + 1} mutants: {dict(counts)}", flush=True)
        finally:
            os.chdir(cwd)
    return {"counts": counts, "classes": classes}


def main_cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None, help="copy failing mutants here")
    ap.add_argument("--only", type=int, default=None, help="replay one mutant index")
    a = ap.parse_args()
    res = campaign(a.n, a.seed, a.save, a.only)
    print("outcomes:", dict(sorted(res["counts"].items())))
    fails = sum(len(v) for v in res["classes"].values())
    shadow = sum(len(v) for k, v in res["classes"].items() if k.startswith("[name shadows"))
    for k, v in sorted(res["classes"].items(), key=lambda kv: -len(kv[1])):
        print(f"{len(v):5d}  {k}  (e.g. {v[:5]})")
    print(f"{fails} failure(s) in {sum(res['counts'].values())} mutants ({shadow} of them name shadowing)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main_cli())
