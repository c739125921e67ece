"""`symgrad derive --render`: the derivation as a PNG (matplotlib mathtext) or a standalone HTML page.

The HTML page embeds each equation as inline SVG drawn by matplotlib, so it opens without a network.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

from symgrad.derive import Derivation
from symgrad.display import derivation_lines
from symgrad.loader import write_atomic

TITLES = {"forward": "Forward (one sample)", "backward": "Backward: adjoints (v̄ = ∂ℓ/∂v)",
          "gradient": "Gradients of the objective"}


def _mathtext(line: str) -> str:
    """mathtext knows most of LaTeX's maths but not these few macros."""
    return (line.replace(r"\mathbb{1}", r"\mathbf{1}").replace(r"\operatorname", r"\mathrm")
            .replace(r"\mathrel{+}=", "+=").replace(r"\text{for }", r"\mathrm{for}\ ").replace(r"\ell", "l"))


def render_file(d: Derivation, wrt: list[str] | None, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    lines = derivation_lines(d, "latex", wrt)
    if out.endswith(".png"):
        _png(lines, out, d.program.spec.name)
    else:
        _html(lines, out, d.program.spec.name)


def _png(lines, out: str, name: str) -> None:
    import matplotlib.pyplot as plt

    rows = []
    current = None
    for section, text in lines:
        if section != current:
            rows.append(("title", TITLES[section]))
            current = section
        rows.append(("math", text))
    height = 0.62 * len(rows) + 0.8
    width = max(8.0, min(28.0, 0.085 * max(len(t) for _, t in rows)))
    fig = plt.figure(figsize=(width, height))
    fig.text(0.01, 1 - 0.3 / height, f"symgrad derive: {name}", fontsize=13, weight="bold", va="top")
    for n, (kind, text) in enumerate(rows):
        y = 1 - (0.8 + 0.62 * n) / height
        if kind == "title":
            fig.text(0.01, y, text, fontsize=11, weight="bold", va="top")
        else:
            fig.text(0.03, y, f"${_mathtext(text)}$", fontsize=11, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    write_atomic(Path(out), buf.getvalue())


def _svg(text: str) -> str:
    from matplotlib import mathtext

    buf = io.BytesIO()
    mathtext.math_to_image(f"${_mathtext(text)}$", buf, format="svg", dpi=100)
    svg = buf.getvalue().decode()
    return svg[svg.index("<svg"):]


def _html(lines, out: str, name: str) -> None:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>symgrad derive: {html.escape(name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em} .eq{margin:.4em 0} pre{color:#555}</style></head><body>",
             f"<h1>symgrad derive: {html.escape(name)}</h1>"]
    current = None
    for section, text in lines:
        if section != current:
            parts.append(f"<h2>{html.escape(TITLES[section])}</h2>")
            current = section
        parts.append(f"<div class='eq'>{_svg(text)}<pre>{html.escape(text)}</pre></div>")
    parts.append("</body></html>")
    write_atomic(Path(out), "\n".join(parts))
