"""One table of primitives (STYLE.md 1) and the library of layers and losses.

A primitive is a SymPy function with its derivative rule (`fdiff`), its LaTeX, and its printed name per backend
(the printers look the name up in `PRIMITIVES`). Derivatives of everything else come from `sympy.diff`; a function
with no rule leaves an unevaluated `Derivative`, which the derive stage turns into an error, never a zero.

Library layers and losses are definitions in the spec language itself (`LIBRARY`), expanded where they are called,
so their gradients are derived like any user's expression and no derivative is written by hand.
"""

from __future__ import annotations

import sympy
from sympy.concrete.expr_with_limits import ExprWithLimits


class sigmoid(sympy.Function):  # noqa: N801  (SymPy's own functions are lower case)
    """Logistic function. Its derivative is written with its own value, so backward reuses the stored forward."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_is_real(self):
        return self.args[0].is_real

    def _latex(self, printer, exp=None):
        body = rf"\sigma\left({printer._print(self.args[0])}\right)"
        return rf"{body}^{{{exp}}}" if exp else body


class step(sympy.Function):  # noqa: N801
    """Indicator of x > 0: relu's derivative (the subgradient 0 at the kink, as every framework uses)."""

    def fdiff(self, argindex=1):
        return sympy.S.Zero

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        body = rf"\mathbb{{1}}\left[{printer._print(self.args[0])} > 0\right]"
        return rf"{body}^{{{exp}}}" if exp else body


class relu(sympy.Function):  # noqa: N801
    def fdiff(self, argindex=1):
        return step(self.args[0])

    def _eval_is_real(self):
        return self.args[0].is_real

    def _latex(self, printer, exp=None):
        body = rf"\operatorname{{relu}}\left({printer._print(self.args[0])}\right)"
        return rf"{body}^{{{exp}}}" if exp else body


class softplus(sympy.Function):  # noqa: N801
    """log(1 + e^x), printed in the stable form max(x, 0) + log1p(e^-|x|)."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_is_real(self):
        return self.args[0].is_real

    def _latex(self, printer, exp=None):
        body = rf"\operatorname{{softplus}}\left({printer._print(self.args[0])}\right)"
        return rf"{body}^{{{exp}}}" if exp else body


class log_sigmoid(sympy.Function):  # noqa: N801
    """log σ(x) = -softplus(-x): finite for x = -1e4 where log(sigmoid(x)) is -inf."""

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])

    def _eval_is_real(self):
        return self.args[0].is_real

    def _latex(self, printer, exp=None):
        body = rf"\log\sigma\left({printer._print(self.args[0])}\right)"
        return rf"{body}^{{{exp}}}" if exp else body


class LogSumExp(ExprWithLimits):
    """log Σ_j exp(f): a reduction like Sum, evaluated max-shifted. Its derivative, exp(f - value), uses the stored
    value, which is what makes softmax cross-entropy's gradient softmax(z) - y with no overflow."""

    def _latex(self, printer):
        limits = ", ".join(printer._print(lim[0]) for lim in self.limits)
        return rf"\log\sum_{{{limits}}} e^{{{printer._print(self.function)}}}"

    def _sympystr(self, printer):
        limits = ", ".join(printer._print(lim[0]) for lim in self.limits)
        return f"logsumexp({printer._print(self.function)}, {limits})"


# Elementwise functions a spec may call by name -> SymPy callable.
ELEMENTWISE = {
    "exp": sympy.exp,
    "log": sympy.log,
    "sqrt": sympy.sqrt,
    "abs": sympy.Abs,
    "Abs": sympy.Abs,
    "tanh": sympy.tanh,
    "sigmoid": sigmoid,
    "relu": relu,
    "softplus": softplus,
    "log_sigmoid": log_sigmoid,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "Max": sympy.Max,
    "Min": sympy.Min,
}

# Library layers and losses: (parameters, body in the spec language). Reductions inside (sum, logsumexp) run over
# the positional axes of their argument, so these work on whole arrays and elementwise ones on anything.
LIBRARY: dict[str, tuple[tuple[str, ...], str]] = {
    "logsumexp": (("z",), "_logsumexp(z)"),
    "softmax": (("z",), "exp(z - logsumexp(z))"),
    "log_softmax": (("z",), "z - logsumexp(z)"),
    # y is a distribution over classes (one-hot for hard labels): -sum(y * log_softmax(z)).
    "softmax_cross_entropy": (("z", "y"), "logsumexp(z) - sum(y * z)"),
    "bce": (("p", "y"), "-(y * log(p) + (1 - y) * log(1 - p))"),
    "bce_with_logits": (("z", "y"), "softplus(z) - y * z"),
    "mse": (("yhat", "y"), "mean((yhat - y)**2)"),
    "gaussian_kl": (("mu", "logvar"), "-sum(1 + logvar - mu**2 - exp(logvar)) / 2"),
    # Normalisation statistics (per row with axis=-1: LayerNorm is standardize(x, eps, axis=-1) * g + b).
    "var": (("z",), "mean((z - mean(z))**2)"),
    "standardize": (("z", "eps"), "(z - mean(z)) / sqrt(var(z) + eps)"),
}

# How each primitive is printed for the CPU backend: helper functions in symgrad.mathfns (stable forms).
PRIMITIVES = {
    "sigmoid": "sigmoid",
    "relu": "relu",
    "step": "step",
    "softplus": "softplus",
    "log_sigmoid": "log_sigmoid",
    "Heaviside": "heaviside",
    "sign": "sign",
}

INITS = ("zeros", "ones", "normal", "uniform", "glorot_uniform", "he_normal")
