"""Random well-formed specs from the grammar (a Hypothesis strategy) and the differential check of one case.

The generator is typed by shape: it builds per-sample scalars, whole-array vectors and index-form statements of
known sizes, so every spec it writes is valid, and it keeps every `log` and `sqrt` on a positive argument, so the
maths is finite. What it aims at is what people write every day and what the compiler's hoisting, naming and
printing must survive: nonlinearities of reductions nested inside one another in one statement, shared parameters,
affine, strided and triangular index ranges, Piecewise/Max/Min, every primitive and library function, user
functions, literal float constants, maximize and sum reduction.

`run_case` compares one generated spec's loss with `symgrad.checks.reference` (rel 1e-9) and its gradient with central
differences of the *reference* loss in float64, and optionally float32 params with the float64 result.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

LOSS_RTOL = 1e-9
# a loss that cancels to rounding noise (the mean of softmax(a) - softmax(b) is 0) has no relative precision: two
# correct evaluations differ by a few 1e-17 (fz0dee5e382e: 1.4e-17 against 2.8e-17, "rel 0.5")
LOSS_ATOL = 1e-13
GRAD_RTOL = 1e-5
FD_EPS = 1e-6
F32_RTOL = 2e-3

UNARY_ANY = ["tanh", "sigmoid", "sin", "cos", "softplus", "relu", "log_sigmoid", "abs"]
LITERALS = ["0.5", "2", "3", "0.7978845608028654", "0.044715", "1e-3", "2.5", "0.1", "1.5", "0.25"]
USER_FUNCTIONS = {
    "gelu": ("gelu(s)", "0.5*s*(1 + tanh(0.7978845608028654*(s + 0.044715*s**3)))"),
    "swish": ("swish(s)", "s*sigmoid(s)"),
    "mish": ("mish(s)", "s*tanh(softplus(s))"),
    "sq1": ("sq1(s)", "s**2 + 1"),  # positive
    "gate": ("gate(a, g)", "a*sigmoid(g)"),
    "scaled": ("scaled(s)", "beta*s - s**2/D"),  # a user function may use constants and dims
}
POSITIVE_FUNCTIONS = {"sq1"}
_NOT_LABELLED = {"m", "n", "s", "q", "r", "loss", "forward"}  # also YAML keys or function parameters
# Names the compiler generates (adjoints, hidden statements, temporaries) or the generated module relies on.
HOSTILE_NAMES = [
    "w_bar",
    "W_bar",
    "b_bar",
    "x_bar",
    "L",
    "L_bar",
    "s_L",
    "s_L2",
    "lse_c",
    "lse_w",
    "lse_t",
    "s_h1",
    "theta",
    "grad",
    "consts",
    "gscale",
    "acc",
    "t0",
    "t1",
    "B",
    "np",
    "math",
    "numba",
    "njit",
    "mf",
    "rt",
    "update",
    "SPEC",
    "PARAMS",
    "INPUTS",
    "range",
    "float",
    "len",
    "min",
    "max",
    "int",
    "print",
    "loss",
    "forward",
    "init_params",
    "cuda",
    "out",
    "value",
    "m",
    "n",
    "s",
    "q",
    "r",
]


class _Gen:
    """One spec under construction: what is declared so far, what is used, and the statements written."""

    def __init__(self, draw):
        self.draw = draw
        self.dims = {"D": draw(st.integers(2, 4)), "H": draw(st.integers(2, 4)), "K": draw(st.integers(2, 4))}
        D, H, K = self.dims["D"], self.dims["H"], self.dims["K"]
        self.inputs = {"x": ("D",), "y": (), "t": ("K",), "u": (), "eps": ("H",)}  # eps: a sampled input
        self.params = {
            "W": ("H", "D"),
            "V": ("K", "H"),
            "U": ("D", "H"),
            "w": ("D",),
            "c": ("H",),
            "d": ("K",),
            "b": (),
            "a": (),
        }
        self.sizes = {
            "x": (D,),
            "y": (),
            "t": (K,),
            "u": (),
            "eps": (H,),
            "W": (H, D),
            "V": (K, H),
            "U": (D, H),
            "w": (D,),
            "c": (H,),
            "d": (K,),
            "b": (),
            "a": (),
        }
        self.used: set[str] = set()
        self.functions: set[str] = set()
        self.use_beta = False
        self.forward: list[tuple[str, str]] = []  # (yaml key, yaml value text)
        self.count = 0

    # -- helpers -----------------------------------------------------------------------------------------
    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def flip(self, p_true: float = 0.5) -> bool:
        return self.draw(st.integers(0, 99)) < int(p_true * 100)

    def names_of(self, shape: tuple[int, ...]) -> list[str]:
        return [n for n, s in self.sizes.items() if s == shape and not n.startswith("_")]

    def use(self, name: str) -> str:
        self.used.add(name)
        return name

    def literal(self) -> str:
        return self.pick(LITERALS)

    # -- scalars -----------------------------------------------------------------------------------------
    def scalar(self, depth: int, pos: bool = False) -> str:
        if pos:
            return self.positive_scalar(depth)
        if depth <= 0:
            return self.scalar_leaf()
        kind = self.pick(
            [
                "leaf",
                "unary",
                "binary",
                "binary",
                "reduce",
                "reduce",
                "reduce",
                "library",
                "index_sum",
                "piecewise",
                "maxmin",
                "user",
                "log",
                "pow",
            ]
        )
        return self._scalar(kind, depth)

    def _scalar(self, kind: str, depth: int) -> str:
        n = self.vec_size()
        if kind == "leaf":
            return self.scalar_leaf()
        if kind == "unary":
            fn = self.pick(UNARY_ANY + ["exp"])
            arg = self.scalar(depth - 1)
            return f"{fn}({arg})" if fn != "exp" else f"exp(tanh({arg}))"
        if kind == "binary":
            op = self.pick(["+", "-", "*", "/"])
            right = self.scalar(depth - 1, pos=op == "/")
            return f"({self.scalar(depth - 1)} {op} {right})"
        if kind == "pow":
            return f"({self.scalar(depth - 1)})**{self.pick(['2', '3'])}"
        if kind == "log":
            fn = self.pick(["log", "sqrt"])
            return f"{fn}({self.positive_scalar(depth - 1)})"
        if kind == "reduce":
            form = self.pick(["sum", "dot", "lse", "sum_idx", "mean"])
            if form == "sum":
                return f"sum({self.vec(n, depth - 1)})"
            if form == "mean":
                return f"mean({self.vec(n, depth - 1)})"
            if form == "dot":
                return f"({self.vec(n, depth - 1)}) @ ({self.vec(n, depth - 1)})"
            if form == "lse":
                return f"logsumexp({self.vec(n, depth - 1)})"
            var = self.fresh_var()
            return f"sum({self.idx(n, var, depth - 1)}, {var})" if self.has_plain(n) else f"sum({self.vec(n, 0)})"
        if kind == "library":
            lib = self.pick(["mse", "sce", "kl", "bce", "bcel", "bcel_vec"])
            if lib == "mse":
                return f"mse({self.vec(n, depth - 1)}, {self.vec(n, depth - 1)})"
            if lib == "sce":
                return f"softmax_cross_entropy({self.vec(n, depth - 1)}, {self.vec(n, 0)})"
            if lib == "kl":
                return f"gaussian_kl({self.vec(n, depth - 1)}, tanh({self.vec(n, depth - 1)}))"
            if lib == "bce":
                return f"bce(sigmoid({self.scalar(depth - 1)}), {self.scalar_leaf()})"
            if lib == "bcel":
                return f"bce_with_logits({self.scalar(depth - 1)}, {self.scalar_leaf()})"
            return f"sum(bce_with_logits({self.vec(n, depth - 1)}, {self.vec(n, 0)}))"
        if kind == "index_sum":
            return self.index_sum(depth)
        if kind == "piecewise":
            a, b = self.scalar(depth - 1), self.scalar(depth - 1)
            cond = self.pick(
                [
                    f"{a} > {self.literal()}",
                    f"{a} < {b}",
                    f"{a} >= 0",
                    f"({a} > 0) and ({b} < {self.literal()})",
                    f"({a} < -0.5) or ({b} > 0.5)",
                ]
            )
            return f"Piecewise(({a}, {cond}), ({b}, True))"
        if kind == "maxmin":
            fn = self.pick(["Max", "Min"])
            return f"{fn}({self.scalar(depth - 1)}, {self.pick([self.literal(), self.scalar(depth - 1)])})"
        if kind == "user":
            return self.user_call(lambda: self.scalar(depth - 1))
        raise AssertionError(kind)

    def scalar_leaf(self) -> str:
        options = self.names_of(()) + ["lit", "lit", "beta", "D"]
        name = self.pick(options)
        if name == "lit":
            return self.literal()
        if name == "beta":
            self.use_beta = True
            return "beta"
        if name == "D":
            return "D"
        return self.use(name)

    def positive_scalar(self, depth: int) -> str:
        inner = self.scalar(max(depth - 1, 0))
        form = self.pick(["exp", "1pexp", "sq", "softplus", "sigmoid", "sq1", "lse_pos"])
        if form == "exp":
            return f"exp(tanh({inner}))"
        if form == "1pexp":
            return f"(1 + exp({inner}))"
        if form == "sq":
            return f"(({inner})**2 + 0.5)"
        if form == "softplus":
            return f"(softplus({inner}) + 0.1)"
        if form == "sigmoid":
            return f"sigmoid({inner})"
        if form == "sq1":
            self.functions.add("sq1")
            return f"sq1({inner})"
        return f"sum(exp(tanh({self.vec(self.vec_size(), max(depth - 1, 0))})))"

    def index_sum(self, depth: int) -> str:
        """Sums in index notation over full, affine, strided and triangular ranges."""
        D = self.dims["D"]
        self.use("w")
        self.use("x")
        form = self.pick(["full", "affine", "strided", "triangular", "lower", "double"])
        i, j, h = self.fresh_var(), self.fresh_var(), self.fresh_var()
        body = self.pick(["w[{i}]*x[{i}]", "tanh(w[{i}])*x[{i}]", "w[{i}]**2"]).format(i=i)
        if form == "full":
            return f"Sum({body}, ({i}, 0, D - 1))"
        if form == "affine":
            return f"Sum(w[{i}]*x[{i} + 1] - w[{i} + 1]*x[{i}], ({i}, 0, D - 2))"
        if form == "strided":
            return f"Sum(w[2*{i}]*x[2*{i}], ({i}, 0, {(D - 1) // 2}))"
        if form == "triangular":
            return f"Sum(Sum(w[{i}]*x[{j}], ({j}, 0, {i})), ({i}, 0, D - 1))"
        if form == "lower":
            return f"Sum(Sum(w[{j}]*x[{i}], ({j}, {i} + 1, D - 1)), ({i}, 0, D - 2))"
        self.use("W")
        inner = self.scalar(depth - 1)
        return f"Sum(Sum(W[{h}, {j}]*x[{j}], ({j}, 0, D - 1))**2 * ({inner}), ({h}, 0, H - 1))"

    # -- vectors (whole-array notation) ------------------------------------------------------------------
    def vec_size(self) -> int:
        return self.pick(sorted({self.dims["D"], self.dims["H"], self.dims["K"]}))

    def has_plain(self, n: int) -> bool:
        return bool(self.names_of((n,)))

    def vec(self, n: int, depth: int, pos: bool = False) -> str:
        if pos:
            inner = self.vec(n, max(depth - 1, 0))
            form = self.pick(["exp", "1pexp", "sq", "softplus", "softmax", "sigmoid"])
            return {
                "exp": f"exp(tanh({inner}))",
                "1pexp": f"(1 + exp({inner}))",
                "sq": f"(({inner})**2 + 0.5)",
                "softplus": f"(softplus({inner}) + 0.1)",
                "softmax": f"softmax({inner})",
                "sigmoid": f"sigmoid({inner})",
            }[form]
        if depth <= 0:
            return self.vec_leaf(n, 0)
        kind = self.pick(
            [
                "leaf",
                "matvec",
                "matvec",
                "unary",
                "unary",
                "binary",
                "binary",
                "scale",
                "div",
                "pow",
                "log",
                "maxmin",
                "piecewise",
                "softmax",
                "center",
                "user",
            ]
        )
        if kind == "leaf":
            return self.vec_leaf(n, depth)
        if kind == "matvec":
            mats = [(m, s) for m, s in self.sizes.items() if len(s) == 2 and s[0] == n]
            if mats:
                m, s = mats[self.draw(st.integers(0, len(mats) - 1))]
                return f"({self.use(m)} @ ({self.vec(s[1], depth - 1)}))"  # `*` and `@` bind alike in Python"
            return self.vec_leaf(n, depth)
        if kind == "unary":
            fn = self.pick(UNARY_ANY + ["exp"])
            arg = self.vec(n, depth - 1)
            return f"{fn}({arg})" if fn != "exp" else f"exp(tanh({arg}))"
        if kind == "binary":
            op = self.pick(["+", "-", "*"])
            return f"({self.vec(n, depth - 1)} {op} {self.vec(n, depth - 1)})"
        if kind == "scale":
            return f"({self.scalar(depth - 1)}) * ({self.vec(n, depth - 1)})"
        if kind == "div":
            return f"({self.vec(n, depth - 1)}) / {self.vec(n, depth - 1, pos=True)}"
        if kind == "pow":
            return f"({self.vec(n, depth - 1)})**{self.pick(['2', '3'])}"
        if kind == "log":
            fn = self.pick(["log", "sqrt"])
            return f"{fn}({self.vec(n, depth - 1, pos=True)})"
        if kind == "maxmin":
            fn = self.pick(["Max", "Min"])
            other = self.pick([self.literal(), self.scalar(0), self.vec(n, depth - 1)])
            return f"{fn}({self.vec(n, depth - 1)}, {other})"
        if kind == "piecewise":
            a = self.vec(n, depth - 1)
            return f"Piecewise(({a}, {a} > {self.pick(['0', self.literal()])}), ({self.vec(n, depth - 1)}, True))"
        if kind == "softmax":
            return f"{self.pick(['softmax', 'log_softmax'])}({self.vec(n, depth - 1)})"
        if kind == "center":  # a reduction of v beside v itself: whole-array notation rebinds v's own index
            v = self.vec(n, depth - 1)
            return self.pick([f"(({v}) - mean({v}))", f"standardize({v}, 0.5)", f"(({v}) * sum({v}))"])
        return self.user_call(lambda: self.vec(n, depth - 1))

    def vec_leaf(self, n: int, depth: int) -> str:
        names = self.names_of((n,))
        if not names or (depth > 0 and self.flip(0.2)):
            mats = [(m, s) for m, s in self.sizes.items() if len(s) == 2 and s[0] == n and self.names_of((s[1],))]
            if mats:
                m, s = mats[0] if len(mats) == 1 else mats[self.draw(st.integers(0, len(mats) - 1))]
                return f"({self.use(m)} @ {self.use(self.pick(self.names_of((s[1],))))})"
            if not names:
                # no vector of this size: a softmax of a library-free constant vector is not writable, use a matvec
                raise _NoVector(n)
        return self.use(self.pick(names))

    def user_call(self, arg) -> str:
        fn = self.pick(sorted(USER_FUNCTIONS))
        self.functions.add(fn)
        if fn == "scaled":
            self.use_beta = True
        if fn == "gate":
            return f"gate({arg()}, {arg()})"
        return f"{fn}({arg()})"

    # -- index notation ----------------------------------------------------------------------------------
    def idx(self, n: int, var: str, depth: int) -> str:
        """An expression in index notation with free index `var` ranging over n."""
        plain = self.names_of((n,))
        leaf = f"{self.use(self.pick(plain))}[{var}]" if plain else "1"
        if depth <= 0:
            return leaf
        kind = self.pick(["leaf", "contract", "contract_t", "unary", "binary", "scalar", "tri"])
        other = self.fresh_var()
        if kind == "contract":
            mats = [(m, s) for m, s in self.sizes.items() if len(s) == 2 and s[0] == n and self.names_of((s[1],))]
            if mats:
                m, s = mats[self.draw(st.integers(0, len(mats) - 1))]
                return f"sum({self.use(m)}[{var}, {other}] * {self.idx(s[1], other, depth - 1)}, {other})"
            return leaf
        if kind == "contract_t":  # the transpose, which whole-array notation cannot write
            mats = [(m, s) for m, s in self.sizes.items() if len(s) == 2 and s[1] == n and self.names_of((s[0],))]
            if mats:
                m, s = mats[self.draw(st.integers(0, len(mats) - 1))]
                return f"sum({self.use(m)}[{other}, {var}] * {self.idx(s[0], other, depth - 1)}, {other})"
            return leaf
        if kind == "unary":
            fn = self.pick(UNARY_ANY)
            return f"{fn}({self.idx(n, var, depth - 1)})"
        if kind == "binary":
            op = self.pick(["+", "-", "*"])
            return f"({self.idx(n, var, depth - 1)} {op} {self.idx(n, var, depth - 1)})"
        if kind == "scalar":
            return f"({self.scalar(depth - 1)}) * {self.idx(n, var, depth - 1)}"
        if plain:  # triangular: a prefix sum over the same range
            name = self.use(self.pick(plain))
            return f"Sum({name}[{other}] * {self.idx(n, var, 0)}, ({other}, 0, {var}))"
        return leaf

    # -- statements --------------------------------------------------------------------------------------
    def fresh_var(self) -> str:
        """A bound index name used nowhere else in the spec, so nested sums never capture each other's index."""
        self.count += 1
        return f"m{self.count}"

    def new_name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def statement(self, depth: int) -> None:
        kind = self.pick(["vec", "vec", "scalar", "index", "index_long", "affine", "strided", "matrix", "matmat"])
        D = self.dims["D"]
        if kind == "vec":
            n = self.vec_size()
            name = self.new_name("h")
            self.forward.append((name, self.vec(n, depth)))
            self.sizes[name] = (n,)
        elif kind == "scalar":
            name = self.new_name("s")
            self.forward.append((name, self.scalar(depth)))
            self.sizes[name] = ()
        elif kind == "index":
            n = self.vec_size()
            name = self.new_name("g")
            body = self.idx(n, "i", depth)
            if re.search(r"\[i[],]", body):  # a plain use fixes the range of i
                self.forward.append((f"{name}[i]", body))
            else:
                self.forward.append((f"{name}[i]", {"shape": [n], "expr": body}))
            self.sizes[name] = (n,)
        elif kind == "index_long":
            n = self.vec_size()
            name = self.new_name("q")
            self.forward.append((f"{name}[i]", {"shape": [n], "expr": self.idx(n, "i", depth)}))
            self.sizes[name] = (n,)
        elif kind == "affine":
            name = self.new_name("e")
            self.use("x")
            self.use("w")
            # no plain x[i]: that would fix i's range to D (a plain use wins over the declared shape)
            body = self.pick(["x[i + 1] - w[1 + i]", "w[i + 1]*x[i + 1]", "tanh(w[i + 1] - x[i + 1])*w[D - 1 - i]"])
            self.forward.append((f"{name}[i]", {"shape": [D - 1], "expr": body}))
            self.sizes[name] = (D - 1,)
        elif kind == "matmat":  # a matrix-matrix product, then usable in later matrix-vector products
            name = self.new_name("M")
            left, right = self.pick([("W", "U"), ("V", "W"), ("U", "W")])
            self.use(left)
            self.use(right)
            fn = self.pick(["", "tanh", "sigmoid"])
            self.forward.append((name, f"{fn}({left} @ {right})"))
            self.sizes[name] = (self.sizes[left][0], self.sizes[right][1])
        elif kind == "strided":
            name = self.new_name("r")
            self.use("x")
            self.use("w")
            m = (D + 1) // 2
            self.forward.append((f"{name}[i]", {"shape": [m], "expr": "w[2*i]*x[2*i] + sigmoid(w[2*i])"}))
            self.sizes[name] = (m,)
        else:
            name = self.new_name("A")
            self.use("W")
            self.use("x")
            body = self.pick(["W[h, j]*x[j]", "tanh(W[h, j]) + x[j]", "W[h, j]*c[h]"])
            if "c[h]" in body:
                self.use("c")
            self.forward.append((f"{name}[h, j]", body))
            self.sizes[name] = (self.dims["H"], D)

    # -- the whole spec ----------------------------------------------------------------------------------
    def spec(self) -> str:
        for _ in range(self.draw(st.integers(0, 3))):
            self.statement(self.draw(st.integers(1, 3)))
        loss = self.scalar(self.draw(st.integers(1, 4)))
        used_stmt = [n.split("[")[0] for n, _ in self.forward]
        if self.forward and self.flip(0.7):  # make the last statements matter
            last = used_stmt[-1]
            shp = self.sizes[last]
            term = last if not shp else (f"sum({last})" if len(shp) == 1 else f"sum({last}[h, j], h, j)")
            loss = f"{loss} + {self.pick(['', 'tanh', 'sin'])}({term})"
        tokens = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", loss))
        if not tokens & set(self.params):  # a loss that reaches the params only through statements may not
            loss = f"{loss} + (b - 0.5)**2"
            self.used.add("b")
        lines = [f"name: fz{hashlib.sha256(loss.encode()).hexdigest()[:10]}"]
        lines.append("dims: {" + ", ".join(f"{k}: {v}" for k, v in self.dims.items()) + "}")
        inputs = [n for n in self.inputs if n in self.used]
        if inputs:
            decl = [
                f"{n}: {{shape: [{', '.join(self.inputs[n])}], sample: normal}}"
                if n == "eps"
                else f"{n}: [{', '.join(self.inputs[n])}]"
                for n in inputs
            ]
            lines.append("inputs: {" + ", ".join(decl) + "}")
        params = [n for n in self.params if n in self.used]
        lines.append("params:")
        for n in params:
            lines.append(f'  {n}: {{shape: [{", ".join(self.params[n])}], init: "normal(0, 0.5)"}}')
        if self.use_beta:
            lines.append("constants: {beta: 0.75}")
        if self.functions:
            lines.append("functions:")
            for fn in sorted(self.functions):
                sig, body = USER_FUNCTIONS[fn]
                lines.append(f'  "{sig}": "{body}"')
        if self.forward:
            lines.append("forward:")
            listed = self.flip(0.25)  # the list-of-mappings form keeps the order explicit too
            lead, pad = ("  - ", "      ") if listed else ("  ", "    ")
            for key, value in self.forward:
                if isinstance(value, dict):
                    lines.append(f"{lead}{key}:")
                    lines.append(f"{pad}shape: [{', '.join(map(str, value['shape']))}]")
                    lines.append(f'{pad}expr: "{value["expr"]}"')
                else:
                    lines.append(f'{lead}{key}: "{value}"')
        lines.append(f'loss: "{loss}"')
        if self.flip(0.2):
            lines.append("objective: maximize")
        if self.flip(0.3):
            lines.append("reduction: sum")
        text = "\n".join(lines) + "\n"
        return self.hostile_names(text) if self.flip(0.3) else text

    def hostile_names(self, text: str) -> str:
        """Rename a few of the spec's own names to names the compiler makes or the generated module uses (w_bar,
        s_L, lse_c, theta, range, np, ...): names are the spec's, so none of them may change the maths."""
        mine = [
            n
            for n in ("x", "y", "t", "u", "W", "V", "U", "w", "c", "d", "b", "a", "beta")
            if re.search(rf"\b{n}\b", text)
        ]
        mine += [n for n, _ in self.forward]
        mine = [n.split("[")[0] for n in mine]
        taken = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
        for _ in range(self.draw(st.integers(1, 3))):
            if not mine:
                break
            old = self.pick(sorted(set(mine)))
            new = self.pick(HOSTILE_NAMES)
            if new in taken:
                continue
            text = re.sub(rf"(?<![A-Za-z0-9_]){old}(?![A-Za-z0-9_])", new, text)
            mine = [m for m in mine if m != old]
            taken.add(new)
        return text


class _NoVector(Exception):
    pass


@st.composite
def specs(draw) -> str:
    """A random well-formed spec as YAML text."""
    for _ in range(20):
        try:
            return _Gen(draw).spec()
        except _NoVector:
            continue
    return 'name: fzfallback\ninputs: {x: []}\nparams: {b: []}\nloss: "(b*x - 1)**2"\n'


# ------------------------------------------------------------------------------------------------- one case


@dataclass
class CaseResult:
    outcome: str  # ok | refused | skipped | fail
    kind: str = ""  # failure class: build-crash:<Exc>, run-crash:<Exc>, loss, grad, nonfinite, f32, reference-crash
    detail: str = ""
    spec: str = ""
    extra: dict = field(default_factory=dict)


def random_point(ref_model, seed: int, n: int = 3) -> tuple[dict, dict | None]:
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(0.0, 0.5, size=s) for k, s in ref_model.params.items()}
    batch = {k: rng.uniform(-1.0, 1.0, size=(n, *s)) for k, s in ref_model.inputs.items()} or None
    return params, batch


def run_case(text: str, seed: int = 0, f32: bool = True, workdir: str | None = None) -> CaseResult:
    """Build one spec and compare it with the reference; never raises (a crash is a result)."""
    from symgrad.checks.gradcheck import rel_error
    from symgrad.checks.reference import build_reference, reference_loss, reference_statements
    from symgrad.errors import SpecError
    from symgrad.runtime.loader import load

    workdir = workdir or tempfile.mkdtemp(prefix="symgrad-fuzz-")
    path = Path(workdir) / f"case{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    path.write_text(text, encoding="utf-8")
    res = CaseResult("ok", spec=text)
    try:
        module = load(str(path))
    except SpecError as exc:
        return CaseResult("refused", "refused", str(exc).replace(str(path), "SPEC"), text)
    except Exception as exc:  # noqa: BLE001 - a crash of the compiler is the finding
        return CaseResult("fail", f"build-crash:{type(exc).__name__}", _short(exc), text)
    try:
        model = build_reference(str(path))
        params, batch = random_point(model, seed, n=1 + seed % 3)  # batches of 1, 2 and 3
        consts = {k: v + 0.25 * (seed % 5) for k, v in model.constants.items()} or None  # not the defaults

        def ref_fn(p, b):
            return reference_loss(model, p, b, consts)

        ref = ref_fn(params, batch)
    except Exception as exc:  # noqa: BLE001
        if "is not bound here" in str(exc):  # the parsed SymPy expression itself lets a summation index escape
            return CaseResult("fail", "parse:bound-index-escapes", _short(exc), text)
        return CaseResult("fail", f"reference-crash:{type(exc).__name__}", _short(exc), text)
    names = list(getattr(module, "STATEMENTS", ()))
    clash = sorted({n for n in names if names.count(n) > 1})
    suffix = f":name-clash({','.join(sorted({c.split('_')[0] for c in clash}))})" if clash else ""
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    hostile = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code)) & (set(HOSTILE_NAMES) - _NOT_LABELLED)
    if hostile:
        suffix += ":hostile-name"
    try:  # a known printer defect, recognisable in the source: b**-2 printed as /b*b
        source = Path(module.__spec_path__).read_text(encoding="utf-8")
        if re.search(r"/([A-Za-z_]\w*(?:\[[^\]]*\])?)\*\1(?![\w\[])", source):
            suffix += ":recip-square-print"
        # allocated (a workspace slot), never written
        for adj in re.findall(r"^\s+(\w+_bar) = (?:np\.empty|_w\[|_mf\.slot\(_w,)", source, re.M):
            if not re.search(rf"\b{adj}\[[^\]]*\] \+?=|, {adj}\)|\b{adj} \+= ", source):
                suffix += ":unwritten-adjoint"
                break
    except (OSError, AttributeError):
        pass
    if not math.isfinite(ref) or abs(ref) > 1e8:
        return CaseResult("skipped", "ill-posed", f"reference loss {ref}", text)
    try:
        with np.errstate(all="ignore"):
            gen, grads = module.loss_and_grad(params, batch, consts)
            gen_only = module.loss(params, batch, consts)
    except Exception as exc:  # noqa: BLE001
        return CaseResult("fail", f"run-crash:{type(exc).__name__}" + suffix, _short(exc), text)
    if not (math.isfinite(gen) and all(np.all(np.isfinite(g)) for g in grads.values())):
        return CaseResult("fail", "nonfinite" + suffix, f"loss {gen}, reference {ref}", text)
    try:  # a kernel that reads a buffer it never wrote: fill freed memory with NaN and run again
        _poison_allocator()
        with np.errstate(all="ignore"):
            gen2, grads2 = module.loss_and_grad(params, batch, consts)
    except Exception as exc:  # noqa: BLE001
        return CaseResult("fail", f"run-crash:{type(exc).__name__}" + suffix, _short(exc), text)
    changed = [k for k in grads if not np.array_equal(grads[k], grads2[k])]
    if changed or gen2 != gen:
        return CaseResult(
            "fail",
            "uninitialised" + suffix,
            f"a second identical call changes the gradient of {changed} (a buffer read before it is written)",
            text,
        )
    err = max(rel_error(gen, ref), rel_error(gen_only, ref))
    if err > LOSS_RTOL and max(abs(gen - ref), abs(gen_only - ref)) > LOSS_ATOL:
        from symgrad.checks.gradcheck import generated_statements

        bad = ""
        try:
            gv = generated_statements(module, params, batch, consts)
            rv = reference_statements(model, params, batch, consts)
            for name in model.user_statements:
                if name not in gv or rel_error(gv[name], rv[name]) > LOSS_RTOL:
                    bad = name
                    break
        except Exception as exc:  # noqa: BLE001
            bad = f"? ({type(exc).__name__})"
        return CaseResult(
            "fail",
            "loss" + suffix,
            f"generated {gen!r} reference {ref!r} rel {err:.2e}; first statement {bad}",
            text,
            {"statement": bad},
        )
    try:  # the public forward(): the declared outputs, batched
        outs = module.forward(params, batch, consts)
        rv = reference_statements(model, params, batch, consts)
        for name, value in outs.items():
            want = rv[name] if batch else rv[name][0]
            if rel_error(value, np.broadcast_to(want, np.shape(value))) > LOSS_RTOL:
                return CaseResult("fail", "forward" + suffix, f"forward()[{name!r}] differs from the reference", text)
    except Exception as exc:  # noqa: BLE001
        return CaseResult("fail", f"forward-crash:{type(exc).__name__}" + suffix, _short(exc), text)
    # gradient: central differences of the reference loss, two step sizes (a kink between them: skip)
    rng = np.random.default_rng(seed + 1)
    worst = (0.0, "")
    for name, value in params.items():
        for _ in range(2):
            d = rng.standard_normal(value.shape)
            fds = []
            for eps in (FD_EPS, 4 * FD_EPS):
                plus = ref_fn(dict(params, **{name: value + eps * d}), batch)
                minus = ref_fn(dict(params, **{name: value - eps * d}), batch)
                fds.append((plus - minus) / (2 * eps))
            an = float(np.sum(grads[name] * d))
            floor = 1e-7 * (1.0 + abs(ref))
            fd_noise = abs(fds[0] - fds[1])  # truncation and rounding of the differences, measured
            if fd_noise > 1e-4 * max(abs(fds[0]), floor):
                continue  # not smooth here (relu, abs, Max, Piecewise near a kink)
            e = max(abs(fds[0] - an) - 10 * fd_noise, 0.0) / max(abs(fds[0]), abs(an), floor)
            if GRAD_RTOL < e < 1e-2:  # borderline (a tiny derivative of a large loss): Richardson, bigger steps

                def central(h, name=name, value=value, d=d):
                    return (
                        ref_fn(dict(params, **{name: value + h * d}), batch)
                        - ref_fn(dict(params, **{name: value - h * d}), batch)
                    ) / (2 * h)

                rich = (4 * central(1e-3) - central(2e-3)) / 3  # error O(h**4); rounding 1e-16/h
                noise = abs(rich - (16 * central(5e-4) - central(1e-3)) / 15)
                # the differences' own rounding: ulp(loss) / h, which two estimates can happen to share (a
                # saturated tanh's 1e-8 derivative of a loss of 65, fz9870a22ea1: exact to 5e-9, FD off by 1e-3)
                rounding = 8 * np.finfo(np.float64).eps * max(abs(ref), 1.0) / 5e-4
                e = max(abs(rich - an) - 10 * noise - rounding, 0.0) / max(abs(rich), abs(an), 1e-300)
            if e > worst[0]:
                worst = (e, name)
    if worst[0] > GRAD_RTOL:
        return CaseResult(
            "fail", "grad" + suffix, f"gradient of {worst[1]} rel error {worst[0]:.2e}", text, {"param": worst[1]}
        )
    if f32:
        try:
            p32 = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
            b32 = {k: np.asarray(v, dtype=np.float32) for k, v in batch.items()} if batch else None
            with np.errstate(all="ignore"):
                l32, g32 = module.loss_and_grad(p32, b32, consts)
        except Exception as exc:  # noqa: BLE001
            return CaseResult("fail", f"f32-crash:{type(exc).__name__}" + suffix, _short(exc), text)
        ref32 = ref_fn(
            {k: v.astype(np.float64) for k, v in p32.items()},
            {k: v.astype(np.float64) for k, v in b32.items()} if b32 else None,
        )
        bad = abs(l32 - ref32) > F32_RTOL * (1 + abs(ref32)) or any(g32[k].dtype != np.float32 for k in g32)
        if not bad:
            # compare with the float64 gradient at the float32-rounded point: rounding the parameters may cross a
            # kink (Min, Max, Piecewise, relu), where the gradient itself jumps; that is not a float32 fault
            with np.errstate(all="ignore"):
                _, g_at32 = module.loss_and_grad(
                    {k: v.astype(np.float64) for k, v in p32.items()},
                    {k: v.astype(np.float64) for k, v in b32.items()} if b32 else None,
                    consts,
                )
            for k, g in g_at32.items():
                scale = float(np.max(np.abs(g))) + 1.0
                if not np.all(np.abs(g32[k].astype(np.float64) - g) <= 5e-2 * scale):
                    bad = True
        if bad:
            return CaseResult(
                "skipped" if not math.isfinite(l32) else "fail",
                "f32" + suffix,
                f"float32 loss {l32} vs float64 {ref32}",
                text,
            )
    return res


def _poison_allocator() -> None:
    """Allocate and free NaN-filled blocks of every small size, so an uninitialised `np.empty` likely holds NaN."""
    blocks = [np.full(n, np.nan) for n in range(1, 257) for _ in range(2)]
    del blocks


def _short(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "symgrad" in f.filename), "?")
    return f"{type(exc).__name__} at {where}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def numba_disabled() -> bool:
    return os.environ.get("NUMBA_DISABLE_JIT") == "1"
