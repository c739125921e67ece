"""Issue 11 regressions: nested reductions in one statement, names that collide, literals, arithmetic faults.

Each spec has a NumPy forward written here from its maths (independent of the compiler's code path); the loss is
compared to it in float64 (rtol 1e-9) and the gradient to central differences of that NumPy forward.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fdcheck import assert_gradient

import symgrad
from symgrad.cli.main import cpu_only
from symgrad.errors import SpecError
from symgrad.ir.graph import build_program
from symgrad.lang.names import RESERVED

B = 4


def _sig(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _relu(z):
    return np.maximum(z, 0.0)


def _gelu_tanh(s):
    return 0.5 * s * (1 + np.tanh(0.7978845608028654 * (s + 0.044715 * s**3)))


CASES = {
    "logreg_nested": (
        """
        dims: {D: 3}
        inputs: {x: [D], y: []}
        params:
          w: {shape: [D], init: normal(0, 0.5)}
          b: {shape: [], init: 0.1}
        loss: log(1 + exp(-y*(w @ x + b)))
        """,
        lambda p, x, y: np.log1p(np.exp(-y * (p["w"] @ x + p["b"]))),
    ),
    "log_softmax_ce": (
        """
        dims: {D: 4, K: 3}
        inputs: {x: [D], y: [K]}
        params:
          W: {shape: [K, D], init: normal(0, 0.5)}
          b: {shape: [K], init: 0.1}
        loss: -sum(y*log(softmax(W @ x + b)))
        """,
        lambda p, x, y: -np.sum(y * np.log(_softmax(p["W"] @ x + p["b"]))),
    ),
    "mlp_sce_h_ne_k": (
        """
        dims: {D: 4, H: 3, K: 5}
        inputs: {x: [D], y: [K]}
        params:
          W1: {shape: [H, D], init: normal(0, 0.5)}
          b1: {shape: [H], init: 0.1}
          W2: {shape: [K, H], init: normal(0, 0.5)}
          b2: {shape: [K], init: 0.0}
        loss: softmax_cross_entropy(W2 @ relu(W1 @ x + b1) + b2, y)
        """,
        lambda p, x, y: _sce(p["W2"] @ _relu(p["W1"] @ x + p["b1"]) + p["b2"], y),
    ),
    "mlp_sce_h_eq_k": (
        """
        dims: {D: 4, H: 3, K: 3}
        inputs: {x: [D], y: [K]}
        params:
          W1: {shape: [H, D], init: normal(0, 0.5)}
          b1: {shape: [H], init: 0.1}
          W2: {shape: [K, H], init: normal(0, 0.5)}
          b2: {shape: [K], init: 0.0}
        loss: softmax_cross_entropy(W2 @ relu(W1 @ x + b1) + b2, y)
        """,
        lambda p, x, y: _sce(p["W2"] @ _relu(p["W1"] @ x + p["b1"]) + p["b2"], y),
    ),
    "tanh_of_cube": (
        """
        dims: {D: 4, H: 3}
        inputs: {x: [D], y: [H]}
        params:
          W: {shape: [H, D], init: normal(0, 0.5)}
        forward:
          - h: tanh(W @ x + (W @ x)**3)
        loss: sum((h - y)**2)
        """,
        lambda p, x, y: np.sum((np.tanh(p["W"] @ x + (p["W"] @ x) ** 3) - y) ** 2),
    ),
    "gelu_function": (
        """
        dims: {D: 4, H: 3}
        inputs: {x: [D], y: [H]}
        functions:
          "gelu(s)": "0.5*s*(1 + tanh(0.7978845608028654*(s + 0.044715*s**3)))"
        params:
          W1: {shape: [H, D], init: normal(0, 0.5)}
          b1: {shape: [H], init: 0.1}
        forward:
          - h: gelu(W1 @ x + b1)
        loss: sum((h - y)**2)
        """,
        lambda p, x, y: np.sum((_gelu_tanh(p["W1"] @ x + p["b1"]) - y) ** 2),
    ),
    "rmsnorm_one_statement": (
        """
        dims: {D: 4}
        inputs: {x: [D], y: [D]}
        params:
          g: {shape: [D], init: 1.0}
          w: {shape: [D], init: normal(0, 0.5)}
        forward:
          - h: g * (w*x) / sqrt(sum((w*x)**2)/D + 1e-5)
        loss: sum((h - y)**2)
        """,
        lambda p, x, y: np.sum((p["g"] * (p["w"] * x) / np.sqrt(np.sum((p["w"] * x) ** 2) / 4 + 1e-5) - y) ** 2),
    ),
    "cosine_similarity": (
        """
        dims: {D: 4}
        inputs: {x: [D], y: []}
        params:
          w: {shape: [D], init: normal(0, 0.5)}
        loss: (sum(w*x)/(sqrt(sum(w*w))*sqrt(sum(x*x))) - y)**2
        """,
        lambda p, x, y: (p["w"] @ x / (np.linalg.norm(p["w"]) * np.linalg.norm(x)) - y) ** 2,
    ),
    "swish_inline": (
        """
        dims: {D: 4, H: 3}
        inputs: {x: [D], y: [H]}
        params:
          W: {shape: [H, D], init: normal(0, 0.5)}
        forward:
          - h: (W @ x) * sigmoid(W @ x)
        loss: sum((h - y)**2)
        """,
        lambda p, x, y: np.sum(((p["W"] @ x) * _sig(p["W"] @ x) - y) ** 2),
    ),
    "same_reduction_other_free_index": (
        """
        dims: {D: 4, H: 3}
        inputs: {x: [D], y: [H]}
        params:
          W: {shape: [H, D], init: normal(0, 0.5)}
        forward:
          - a[q]: tanh(sum(W[q, j]*x[j], j))
          - c[i]: a[i] * exp(sum(W[i, j]*x[j], j) / 4)
        loss: sum((c - y)**2)
        """,
        lambda p, x, y: np.sum((np.tanh(p["W"] @ x) * np.exp(p["W"] @ x / 4) - y) ** 2),
    ),
    "input_named_like_an_adjoint": (
        """
        dims: {D: 3}
        inputs: {x: [D], w_bar: [D], s_L: []}
        params:
          w: {shape: [D], init: normal(0, 0.5)}
          L: {shape: [], init: 0.3}
        loss: log(1 + exp(sum(w*x*w_bar) * L)) + s_L
        """,
        lambda p, x, w_bar, s_L: np.log1p(np.exp(np.sum(p["w"] * x * w_bar) * p["L"])) + s_L,
    ),
    "statement_named_like_a_hidden_one": (
        """
        dims: {D: 3}
        inputs: {x: [D], y: []}
        params:
          w: {shape: [D], init: normal(0, 0.5)}
        forward:
          - s_h: exp(w @ x)
          - h: log(1 + s_h * exp(w @ x))
        loss: (h - y)**2
        """,
        lambda p, x, y: (np.log1p(np.exp(p["w"] @ x) ** 2) - y) ** 2,
    ),
    "long_exact_literals": (
        """
        inputs: {y: []}
        params:
          a: {shape: [], init: 0.5}
        loss: (0.7978845608028654 * 0.044715 * a**3 - y)**2 + 0.1234567890123 * a / 0.3333333333333333
        """,
        lambda p, y: (
            (0.7978845608028654 * 0.044715 * p["a"] ** 3 - y) ** 2 + 0.1234567890123 * p["a"] / 0.3333333333333333
        ),
    ),
    # fuzz F4: inside an axis= call the caller's own sum(V) (a scalar) had become sum(V, axis=0), silently
    "whole_array_reductions_inside_axis_calls": (
        """
        dims: {D: 3, K: 2}
        inputs: {x: [D]}
        params:
          W: {shape: [K, D], init: normal(0, 0.5)}
          V: {shape: [K, D], init: normal(0, 0.5)}
        loss: sum(sum(W * sum(V), axis=0) * x) + sum(logsumexp(W * mean(V), axis=1)) + sum(sum(W * mse(V, W), axis=0))
        """,
        lambda p, x: (
            np.sum(np.sum(p["W"] * np.sum(p["V"]), axis=0) * x)
            + np.sum(np.log(np.sum(np.exp(p["W"] * np.mean(p["V"])), axis=1)))
            + np.sum(p["W"] * np.mean((p["V"] - p["W"]) ** 2))
        ),
    ),
    # fuzz F1: a where() inside a product inside a where() condition was folded out of the product's Sum, its
    # index left unbound (compile error, or silently the index of an earlier loop: loss 0.7617 for 0.7642)
    "where_of_product_of_where": (
        """
        dims: {D: 3, K: 2}
        inputs: {x: [D], y: [K]}
        params:
          W: {shape: [K, D], init: normal(0, 0.5)}
          b: {shape: [D], init: normal(0, 0.5)}
          v: {shape: [K], init: normal(0, 0.5)}
        loss: >-
          softmax_cross_entropy(where((W @ where(x > 0, x, b)) > 0, v, 2*v), v)
          + where((where(b > 0, x, b) @ b) > 0, v @ v, 3.0) + y @ v
        """,
        lambda p, x, y: (
            _sce(np.where(p["W"] @ np.where(x > 0, x, p["b"]) > 0, p["v"], 2 * p["v"]), p["v"])
            + (p["v"] @ p["v"] if np.where(p["b"] > 0, x, p["b"]) @ p["b"] > 0 else 3.0)
            + y @ p["v"]
        ),
    ),
    # fuzz F2: Max of an identically-zero reduction inside a product raised SymPy's "not comparable" (traceback)
    "max_of_zero_reduction_in_product": (
        """
        dims: {H: 4, K: 2}
        inputs: {x: [H]}
        params:
          W: {shape: [H, K], init: normal(0, 0.5)}
          b: {shape: [H], init: normal(0, 0.5)}
        loss: x @ Max(b, sum(0*W, axis=-1)) + sum(W.T @ Max(b, sum(W - W, axis=-1)))
        """,
        lambda p, x: x @ np.maximum(p["b"], 0.0) + np.sum(p["W"].T @ np.maximum(p["b"], 0.0)),
    ),
    # fuzz F3: log_softmax of a matrix constant along the axis was read as a reduction and lost that axis
    "log_softmax_of_a_constant_keeps_its_shape": (
        """
        dims: {K: 2, H: 4}
        inputs: {x: [H]}
        params:
          W: {shape: [K, H], init: normal(0, 0.5)}
        loss: sum(Piecewise((W, W > 0), (log_softmax(W - W, axis=0), True)) @ x)
        """,
        lambda p, x: np.sum(np.where(p["W"] > 0, p["W"], -np.log(2.0)) @ x),
    ),
    # fuzz G6: a user function reducing its argument, stored as a statement: the reduction's index kept the
    # statement's own name (the renaming took that very name again), so the adjoint came out as 3/4 h_bar
    "user_function_reducing_its_argument": (
        """
        dims: {D: 3, H: 4}
        inputs: {x: [D]}
        params:
          W: {shape: [H, D], init: normal(0, 0.5)}
          b: {shape: [H], init: normal(0, 0.5)}
        functions: {"f(z)": "z - mean(z)", "g(z)": "z * sum(z)"}
        forward:
          - h: f(W @ x) + f(b)
          - k: g(sigmoid(b))
        loss: sum(h**3) + sum(k * x[0])
        """,
        lambda p, x: (
            np.sum(((p["W"] @ x) - np.mean(p["W"] @ x) + p["b"] - np.mean(p["b"])) ** 3)
            + np.sum(_sig(p["b"]) * np.sum(_sig(p["b"])) * x[0])
        ),
    ),
    # fuzz G4: a product over a prefix of a longer axis (a declared shape, or a Sum bound short of the axis) was
    # matched to one BLAS call on the whole operand: `gemm: incompatible shapes` on every call
    "product_over_a_prefix_of_a_longer_axis": (
        """
        dims: {M: 3, N: 4}
        inputs: {x: [N]}
        params:
          W: {shape: [N, N], init: normal(0, 0.5)}
        forward:
          - s[m]:
              shape: [M]
              expr: tanh(sum(W[m, n] * x[n], n))
          - t: Sum(x[n] * Sum(W[m, n] * x[m], (m, 0, N - 1)), (n, 0, M - 1))
        loss: sum(s) + t**2
        """,
        lambda p, x: np.sum(np.tanh(p["W"][:3] @ x)) + (x[:3] @ (x @ p["W"])[:3]) ** 2,
    ),
    # fuzz G5: a Sum's index read only in a condition (a count mask) was "undeclared name 'i'"
    "sum_index_read_only_in_a_condition": (
        """
        dims: {N: 4}
        inputs: {x: [N]}
        params:
          w: {shape: [N], init: normal(0, 0.5)}
        forward:
          - a[k]: Sum(where(i > k, w[k]**2, w[k]), (i, 0, 2))
        loss: sum(tanh(a)) + x @ w
        """,
        lambda p, x: (
            np.sum(np.tanh([sum(p["w"][k] ** 2 if i > k else p["w"][k] for i in range(3)) for k in range(4)]))
            + x @ p["w"]
        ),
    ),
    # fuzz G2/G3: bounds that read other indices of the same or an enclosing Sum: an inner bound reading the
    # outer index ("cannot infer the range of index _q"), a limit reading an earlier limit of the same Sum
    # ("free indices"), a Sum rebinding the statement's index in its own bound ("nested too deeply")
    "sum_bounds_reading_other_indices": (
        """
        dims: {N: 4}
        inputs: {x: [N]}
        params:
          w: {shape: [N], init: normal(0, 0.5)}
        forward:
          - c[i]: Sum(w[i], (i, 0, i))
        loss: Sum(Sum(w[q], (q, 0, p)), (p, 0, 2))**2 + Sum(w[i]*w[j]*x[j], (i, 0, 3), (j, 0, i)) + sum(c**2)
        """,
        lambda p, x: (
            sum(sum(p["w"][q] for q in range(pp + 1)) for pp in range(3)) ** 2
            + sum(p["w"][i] * p["w"][j] * x[j] for i in range(4) for j in range(i + 1))
            + np.sum(np.cumsum(p["w"]) ** 2)
        ),
    ),
    # fuzz G1: a Sum's explicit bounds are its index's range; plain reads of arrays of other lengths inside it
    # read a part of them ("index j ranges over 3 elsewhere but over 5 in x[...]" before)
    "explicit_sum_bounds_over_arrays_of_other_lengths": (
        """
        dims: {N: 5, M: 3}
        inputs: {x: [N]}
        params:
          w: {shape: [M], init: normal(0, 0.5)}
          X: {shape: [N, M], init: normal(0, 0.5)}
        forward:
          - z: Sum(w[j] * x[j], (j, 0, M - 1))
          - s[n]:
              shape: [M]
              expr: Sum(where(j >= n, w[j]*X[j, n], 0), (j, 0, 2))
        loss: z**2 + sum(tanh(s))
        """,
        lambda p, x: (
            (p["w"] @ x[:3]) ** 2
            + np.sum(np.tanh([sum(p["w"][j] * p["X"][j, n] for j in range(n, 3)) for n in range(3)]))
        ),
    ),
    # random fuzz seed 159: z - mean(z) stored as a vector was generated as `for i: for i:` (50% off)
    "abs_of_standardize": (
        """
        dims: {K: 3}
        inputs: {x: [K]}
        params:
          w: {shape: [K], init: normal(0, 0.5)}
          u: {shape: [K], init: normal(0, 0.5)}
        forward:
          - z: tanh(w*x + u)
        loss: sum(abs(standardize(z, 0.5)))
        """,
        lambda p, x: np.sum(
            np.abs(
                (np.tanh(p["w"] * x + p["u"]) - np.mean(np.tanh(p["w"] * x + p["u"])))
                / np.sqrt(np.var(np.tanh(p["w"] * x + p["u"])) + 0.5)
            )
        ),
    ),
}


def _sce(z, y):
    m = z.max()
    return m + np.log(np.sum(np.exp(z - m))) - np.sum(y * z)


def _spec(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(text))
    return str(path)


def _reference_loss(ref, params, batch) -> float:
    names = list(batch)
    per = [ref(params, *[batch[n][b] for n in names]) for b in range(B)]
    return float(np.mean(per))


@pytest.mark.parametrize("case", sorted(CASES))
def test_nested_forms_match_numpy_reference(tmp_path, monkeypatch, case):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    text, ref = CASES[case]
    m = symgrad.load(_spec(tmp_path, case, text))
    rng = np.random.default_rng(1)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in m.init_params(seed=3).items()}
    batch = {name: rng.normal(size=(B, *shape)) for name, shape, _ in m.INPUTS}
    loss, grad = m.loss_and_grad(params, batch)
    want = _reference_loss(ref, params, batch)
    assert loss == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert_gradient(grad, lambda q: _reference_loss(ref, q, batch), params, atol=1e-8)


def test_two_nested_hoists_get_distinct_names(tmp_path):
    prog = build_program(_spec(tmp_path, "logreg_nested", CASES["logreg_nested"][0]))
    names = [st.name for st in prog.statements]
    assert len(names) == len(set(names))
    assert len(set(prog.adjoint.values())) == len(prog.adjoint)
    spec_names = {"x", "y", "w", "b", "D"}
    assert not (set(prog.adjoint.values()) | set(names)) & spec_names


def test_same_reduction_with_renamed_free_index_is_stored_once(tmp_path):
    prog = build_program(_spec(tmp_path, "same", CASES["same_reduction_other_free_index"][0]))
    hidden = [st for st in prog.statements if st.hidden]
    assert len(hidden) == 1, [st.name for st in hidden]


@pytest.mark.parametrize(
    "body",
    [
        "params: {np: {shape: [], init: 0.0}}\nloss: np**2",
        "params: {range: {shape: [], init: 0.0}}\nloss: range**2",
        "inputs: {math: []}\nparams: {w: {shape: [], init: 0.0}}\nloss: (w - math)**2",
        "constants: {float: 1.0}\nparams: {w: {shape: [], init: 0.0}}\nloss: (w - float)**2",
    ],
)
def test_names_generated_code_reads_are_refused(tmp_path, body):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\n{body}\n")
    with pytest.raises(SpecError, match="generated code uses"):
        build_program(str(path))


@pytest.mark.parametrize("loss", ["sum(w[_b]*w[_b], _b)", "_B*w[0]", "sum(w*_t0)"])
def test_private_names_are_refused_in_expressions(tmp_path, loss):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ndims: {{D: 2}}\nparams: {{w: {{shape: [D], init: 0.0}}}}\nloss: {loss}\n")
    with pytest.raises(SpecError, match="must not start with '_'"):
        build_program(str(path))


def _generated_sources():
    from symgrad.backends.cuda.codegen import render_cuda_module

    root = Path(__file__).parent.parent
    for f in sorted((root / "generated").glob("*.py")):
        yield f.name, f.read_text()
    for spec in sorted((root / "specs").glob("*.yaml")):
        if cpu_only(spec):
            continue  # recurrences and batch statistics: CPU only
        yield f"{spec.stem}_cuda", render_cuda_module(str(spec))


def test_generated_modules_read_only_reserved_globals():
    """Every global a generated kernel reads (CPU and CUDA) is in names.RESERVED, so no spec name shadows one."""
    for fname, text in _generated_sources():
        tree = ast.parse(text)
        defined = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        defined |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        defined |= {
            a.asname or a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        defined |= {
            a.arg
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef)
            for a in n.args.args + n.args.kwonlyargs + [n.args.vararg, n.args.kwarg]
            if a is not None
        }
        for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(fn):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in defined:
                    assert node.id.startswith("_") or node.id in RESERVED, f"{fname}: {fn.name} reads {node.id}"


def test_focal_loss_is_finite_where_p_rounds_to_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", str(tmp_path / "cache"))
    path = _spec(
        tmp_path,
        "focal",
        """
        dims: {D: 2}
        inputs: {x: [D], y: []}
        constants: {gamma: 2.0}
        params:
          w: {shape: [D], init: 1.0}
        forward:
          - z: w @ x
          - p: sigmoid(z)
        loss: -y*(1 - p)**gamma*log_sigmoid(z) - (1 - y)*p**gamma*log_sigmoid(-z)
        """,
    )
    m = symgrad.load(path)
    params = {"w": np.array([1.0, 1.0])}
    for z in (40.0, 800.0, -800.0):
        batch = {"x": np.array([[z / 2, z / 2]]), "y": np.array([1.0])}
        loss, grad = m.loss_and_grad(params, batch)
        assert np.isfinite(loss) and np.all(np.isfinite(grad["w"])), (z, loss, grad)


HOST_NAMES = [
    "n",
    "i",
    "t0",
    "kind",
    "total",
    "theta_d",
    "grad_d",
    "state_d",
    "gscale",
    "clip_norm",
    "losses",
    "lrs",
    "state",
    "out",
    "scale",
    "sq",
    "status",
    "hyper",
    "dt",
    "flat",
    "views",
    "key",
    "ws",
    "acc",
]


def test_spec_names_never_collide_with_names_generated_functions_bind(tmp_path):
    """Inputs named like every non-private name the CUDA host code once used (`n`, `total`, `theta_d`, ...):
    no generated function (CPU or CUDA) rebinds one of its spec-name parameters, and both modules compile."""
    from symgrad.backends.cpu.codegen import render as render_module
    from symgrad.backends.cuda.codegen import render_cuda_module

    inputs = ", ".join(f"{n}: [D]" for n in HOST_NAMES)
    total = " + ".join(f"sum({n} * w)" for n in HOST_NAMES)
    path = tmp_path / "hostile.yaml"
    path.write_text(
        f"name: hostile\ndims: {{D: 3}}\ninputs: {{{inputs}}}\nparams: {{w: {{shape: [D], init: 0.5}}}}\n"
        f"loss: ({total})**2\n"
    )
    for text in (render_module(str(path)), render_cuda_module(str(path))):
        compile(text, "hostile.py", "exec")
        for fn in [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)]:
            params = {a.arg for a in fn.args.args} & set(HOST_NAMES)
            stores = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            assert not params & stores, f"{fn.name} rebinds {sorted(params & stores)}"


def test_an_index_with_no_range_is_named_as_the_spec_writes_it(tmp_path):
    """`c[i]: Sum(w[k], (k, 0, i))` gives i no range; the refusal named the renamed summation index `_k`."""
    spec = _spec(
        tmp_path,
        "noinf",
        """
        dims: {N: 4}
        params:
          w: {shape: [N], init: normal(0, 0.5)}
        forward:
          - c[i]: Sum(w[k], (k, 0, i))
        loss: sum(c**2)
        """,
    )
    with pytest.raises(SpecError, match=r"cannot infer the range of index i in w\[\.\.\.\]: use it plainly"):
        build_program(spec)
