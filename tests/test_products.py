"""Issue 16: a spec's speed must not depend on how its statements are split. A product nested inside one
statement (`Wo @ tanh(Wd @ z + bd) + bo`) lowers to the same BLAS calls as the two-statement form."""

from __future__ import annotations

import re
import textwrap

from symgrad.backends.cpu.codegen import render as render_module

HEAD = """
dims: {Z: 4, H: 5, D: 6}
inputs: {z: [Z], x: [D]}
params:
  Wd: {shape: [H, Z], init: normal(0, 0.5)}
  bd: {shape: [H], init: 0.1}
  Wo: {shape: [D, H], init: normal(0, 0.5)}
  bo: {shape: [D], init: 0.0}
"""

ONE = (
    HEAD
    + """
forward:
  - logit: Wo @ tanh(Wd @ z + bd) + bo
loss: sum(bce_with_logits(logit, x))
"""
)

TWO = (
    HEAD
    + """
forward:
  - h: tanh(Wd @ z + bd)
  - logit: Wo @ h + bo
loss: sum(bce_with_logits(logit, x))
"""
)


def _module(tmp_path, name, text):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\n" + textwrap.dedent(text))
    return render_module(str(p))


def test_nested_product_uses_blas_like_split_form(tmp_path):
    one, two = _module(tmp_path, "one", ONE), _module(tmp_path, "two", TWO)
    blas = re.compile(r"_mf\.gemm(?:_acc)?\(")
    assert len(blas.findall(one)) == len(blas.findall(two)) >= 5  # 2 forward, 3 backward
    # no scalar reduction loop beyond the split form's (the loss's own sum over i)
    assert one.count("_acc =") == two.count("_acc =")
    assert one.count("tanh(") == two.count("tanh(")  # the activation is computed once per element
