"""The library of layers and losses, and the reduction `LogSumExp`.

Primitives (elementwise functions with their derivative, LaTeX and numeric forms) are rows of the one table in
`symgrad.lang.primitives`; their names are re-exported here for the modules that import them from the library.
Derivatives of everything else come from `sympy.diff`; a function with no rule leaves an unevaluated `Derivative`,
which the derive stage turns into an error, never a zero.

Library layers and losses are definitions in the spec language itself (`LIBRARY`), expanded where they are called,
so their gradients are derived like any user's expression and no derivative is written by hand.
"""

from __future__ import annotations

import sympy
from sympy.concrete.expr_with_limits import ExprWithLimits, _process_limits

from symgrad.lang.primitives import (  # noqa: F401  (re-exported: derive, lower and graph import them from here)
    ELEMENTWISE,
    log_sigmoid,
    relu,
    sigmoid,
    softplus,
    step,
)


def _limits_without_fold(cls, function, symbols, assumptions):
    """What ExprWithLimits.__new__ does, minus its piecewise_fold: SymPy folds a Piecewise whose values read the
    outer variable out through an inner Sum whose variable its condition reads, so that variable escapes its Sum
    (`W @ Piecewise((m, m > 3), (w, True))` inside a logsumexp became `Piecewise((...), m[j] > 3)` with j unbound;
    found by the differential fuzz). Nested calls of the same class are still merged into one."""
    if not isinstance(function, sympy.Basic):  # a Python number (Sum(0, ...) from SymPy's own algebra)
        function = sympy.Integer(function) if isinstance(function, int) else sympy.Float(function)
    limits, orientation = _process_limits(*symbols, discrete=True)
    while type(function) is cls:
        limits = list(function.limits) + limits
        function = function.function
    obj = sympy.Expr.__new__(cls, **assumptions)
    obj._args = (orientation * function, *limits)
    obj.is_commutative = function.is_commutative
    return obj


class Sum(sympy.Sum):
    """sympy.Sum built without piecewise_fold (see _limits_without_fold); everything else is SymPy's Sum, and
    `isinstance(x, sympy.Sum)` holds. A sum of zeros is 0: left as `Sum(0, ...)`, a number SymPy cannot order,
    `Max(b, sum(0*W, axis=-1))` raised "not comparable" wherever it was rebuilt (fuzz F2)."""

    def __new__(cls, function, *symbols, **assumptions):
        if function == 0:
            return sympy.S.Zero
        return _limits_without_fold(cls, function, symbols, assumptions)


class LogSumExp(ExprWithLimits):
    """log Σ_j exp(f): a reduction like Sum, evaluated max-shifted. Its derivative, exp(f - value), uses the stored
    value, which is what makes softmax cross-entropy's gradient softmax(z) - y with no overflow."""

    def __new__(cls, function, *symbols, **assumptions):
        return _limits_without_fold(cls, function, symbols, assumptions)

    # A log of a finite sum of exps of reals is real and finite. Without these SymPy answers "unknown", and an
    # enclosing exp or tanh then asks as_real_imag() and Mod of the whole argument: exponential in the nesting
    # (a 60-character loss took 18 s to parse; fuzz E5).
    def _eval_is_extended_real(self):
        return self.function.is_extended_real

    def _eval_is_finite(self):
        return self.function.is_finite

    def _latex(self, printer):
        limits = ", ".join(printer._print(lim[0]) for lim in self.limits)
        return rf"\log\sum_{{{limits}}} e^{{{printer._print(self.function)}}}"

    def _sympystr(self, printer):
        limits = ", ".join(printer._print(lim[0]) for lim in self.limits)
        return f"logsumexp({printer._print(self.function)}, {limits})"


# The mini-batch's size (a run-time value: `_B` in generated kernels, |B| on the page). It starts with "_", which
# no spec name can.
BATCH_SIZE = sympy.Symbol("_B", integer=True, positive=True)


class BatchSum(sympy.Function):
    """Σ over the samples of the mini-batch of a per-sample expression: batch statistics (BatchNorm's mean and
    variance). Its value is one per mini-batch (not batched); its adjoint reaches every sample, which is the
    coupling between samples that a batch statistic brings into the gradient. Under MPI each rank's statistics are
    its own mini-batch's (PyTorch DDP without SyncBatchNorm)."""

    nargs = 1

    def _latex(self, printer, exp=None):
        body = rf"\sum_{{\mathsf{{b}} \in \mathcal{{B}}}} {printer.parenthesize(self.args[0], 1000)}"
        return rf"\left({body}\right)^{{{exp}}}" if exp else body

    def _eval_is_extended_real(self):  # as LogSumExp's: a known real keeps SymPy's assumption queries short
        return self.args[0].is_extended_real

    def _eval_is_finite(self):
        return self.args[0].is_finite

    def _sympystr(self, printer):
        return f"batch_sum({printer._print(self.args[0])})"

    def fdiff(self, argindex=1):  # pragma: no cover - derive differentiates the summand, never this node
        raise TypeError("BatchSum is differentiated through its statement, not by sympy.diff")


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

INITS = ("zeros", "ones", "normal", "uniform", "glorot_uniform", "he_normal")
