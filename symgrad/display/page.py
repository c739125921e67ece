"""`symgrad derive --render`: the derivation as a standalone HTML page (MathML) or a PNG (matplotlib mathtext).

The HTML page is typeset by the browser itself: each equation's LaTeX is converted to MathML by `latex2mathml`
(browsers render MathML natively, so the page opens offline, with no script and no font download). A long
equation is cut at its top-level `+`/`-` into pieces that wrap like words, and the LaTeX source of every line is
folded away in a `<details>` element beneath it.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from pathlib import Path

TITLES = {
    "forward": "Forward (one sample)",
    "backward": "Backward: adjoints (v̄ = ∂ℓ/∂v)",
    "gradient": "Gradients of the objective",
}
NOTES = {
    "forward": "The spec's statements for one sample, with the hidden reductions symgrad stores.",
    "backward": "Reverse mode, in dependency order: every adjoint is defined before a line reads it.",
    "gradient": "𝖻 runs over the mini-batch ℬ; the objective is the mean (or sum) over it of the per-sample value.",
}

CSS = """
body{font-family:Georgia,'Times New Roman',serif;max-width:60em;margin:2em auto;padding:0 1em;color:#111;
     line-height:1.5}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
p.note{color:#555;font-size:.9em;margin:.2em 0 .8em}
.eq{margin:.5em 0 .7em;padding-left:2em;text-indent:-2em;font-size:1.15em}
.eq .piece{display:inline-block;text-indent:0;margin-right:.25em}
details{margin:.1em 0 0 0;text-indent:0;font-size:.75em;color:#555}
details summary{cursor:pointer} details pre{white-space:pre-wrap;word-break:break-all;margin:.2em 0}
math{font-size:1em;font-family:"Latin Modern Math","STIX Two Math","Cambria Math","DejaVu Math TeX Gyre",math}
mi.name{font-style:italic} .overline{border-top:.07em solid currentColor;padding-top:.08em}
@media print{details{display:none}}
"""


def render_file(lines: list[tuple[str, str]], name: str, out: str) -> None:
    """Write `out` (.html or .png) atomically from the display's (section, LaTeX) lines."""
    if out.endswith(".png"):
        _png(lines, out, name)
    else:
        _write_text(out, html_body(lines, name, standalone=True))


def _write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    _publish(tmp, path)


# ---------------------------------------------------------------------------------------------- splitting


def split_terms(line: str) -> list[str]:
    """Cut a LaTeX equation after its `=` (or `+=`) and at each top-level ` + ` / ` - ` (outside braces and
    `\\left...\\right`), so that each piece is valid LaTeX on its own."""
    pieces, depth, start, k = [], 0, 0, 0
    seen_eq = False
    while k < len(line):
        if line.startswith(r"\left", k):
            depth += 1
            k += 5
            continue
        if line.startswith(r"\right", k):
            depth -= 1
            k += 6
            continue
        c = line[k]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and not seen_eq and line.startswith(" = ", k):
            pieces.append(line[start : k + 2])
            start, seen_eq = k + 3, True
            k += 3
            continue
        elif depth == 0 and not seen_eq and line.startswith(r" \mathrel{+}= ", k):
            pieces.append(line[start : k + 13])
            start, seen_eq = k + 14, True
            k += 14
            continue
        elif depth == 0 and seen_eq and (line.startswith(" + ", k) or line.startswith(" - ", k)) and k > start:
            pieces.append(line[start:k])
            start = k + 1
        elif depth == 0 and seen_eq and line.startswith(r"\quad", k):
            pieces.append(line[start:k])
            start = k
            break  # the loop ranges of a `+=` line stay in one piece
        k += 1
    pieces.append(line[start:])
    return [p.strip() for p in pieces if p.strip()]


# ---------------------------------------------------------------------------------------------- HTML


_ITALIC_RUN = re.compile(r'(?:<mi mathvariant="italic">[^<]</mi>){2,}')


def _mathml(latex: str) -> str:
    """latex2mathml's output, touched up for browsers: a multi-letter name (`\\mathit{logvar}`) is one identifier,
    not six letters; `\\overline` stretches over all of it; operator names are upright identifiers; sums and
    fractions are in display style (limits under and over the sum)."""
    from latex2mathml.converter import convert

    out = convert(latex, display="block").replace('display="block"', 'display="inline" displaystyle="true"', 1)
    out = _ITALIC_RUN.sub(lambda m: '<mi class="name">' + "".join(re.findall(r">([^<])<", m.group(0))) + "</mi>", out)
    out = _css_overlines(out).replace("<mo><mrow><mo>&#x0002B;</mo></mrow></mo><mo>&#x0003D;</mo>", "<mo>+=</mo>")
    return re.sub(r"<mo>([A-Za-z]{2,})</mo>", r"<mi>\1</mi>", out)


_OVERLINE = '<mo accent="true">&#x02015;</mo></mover>'


def _css_overlines(mathml: str) -> str:
    """`\\overline{logvar}` as a rule drawn by CSS over the whole name: browsers stretch a MathML accent only with a
    MATH font, which many systems lack."""
    while _OVERLINE in mathml:
        end = mathml.index(_OVERLINE)
        depth, k = 0, end
        while True:  # the <mover ...> that this accent closes (inner ones, e.g. a hat, may carry attributes)
            k = max(mathml.rfind("<mover", 0, k), mathml.rfind("</mover>", 0, k))
            if k < 0 or (not mathml.startswith("</mover>", k) and depth == 0):
                break
            depth += 1 if mathml.startswith("</mover>", k) else -1
        if k < 0:  # not found (cannot happen for latex2mathml's output): keep the accent, stop
            return mathml.replace(_OVERLINE, '<mo accent="true" stretchy="true">&#x0203E;</mo></mover>')
        start = mathml.index(">", k) + 1
        mathml = mathml[:k] + f'<mrow class="overline">{mathml[start:end]}</mrow>' + mathml[end + len(_OVERLINE) :]
    return mathml


def _scoped_css() -> str:
    """CSS for Jupyter: the equation rules only, under `.symgrad-derive` (the notebook keeps its own page style)."""
    keep = [r for r in CSS.replace("\n", "").split("}") if r.strip() and not r.strip().startswith(("body", "@media"))]
    return "".join(".symgrad-derive " + r.strip() + "}" for r in keep)


def html_body(lines: list[tuple[str, str]], name: str, standalone: bool = True) -> str:
    """The page (standalone) or a fragment for Jupyter's `_repr_html_`: sections, MathML equations, LaTeX folded."""
    parts = []
    if standalone:
        parts += [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>symgrad derive: {html.escape(name)}</title>",
            f"<style>{CSS}</style></head><body>",
        ]
    else:  # a notebook cell: the same look, scoped to this fragment
        parts.append(f"<div class='symgrad-derive'><style>{_scoped_css()}</style>")
    parts.append(f"<h1>symgrad derive: {html.escape(name)}</h1>")
    current = None
    for section, text in lines:
        if section != current:
            if current is not None:
                parts.append("</section>")
            parts.append(f"<section class='{section}'><h2>{html.escape(TITLES[section])}</h2>")
            parts.append(f"<p class='note'>{html.escape(NOTES[section])}</p>")
            current = section
        # `{}` before a piece's leading + or - keeps it a binary operator, spaced as in the unbroken line
        pieces = "".join(
            f"<span class='piece'>{_mathml('{}' + p if p[:1] in '+-' and n else p)}</span>"
            for n, p in enumerate(split_terms(text))
        )
        parts.append(
            f"<div class='eq'>{pieces}<details><summary>LaTeX</summary><pre>{html.escape(text)}</pre></details></div>"
        )
    if current is not None:
        parts.append("</section>")
    parts.append("</body></html>" if standalone else "</div>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- PNG


def _paren_nested_subscripts(s: str) -> str:
    """mathtext draws `{s_{h}}_{i}` as `s_{hi}`: write `(s_{h})_{i}` so the array and its index stay apart."""
    out, k = [], 0
    while k < len(s):
        if s[k] == "{":
            depth, j = 0, k
            while j < len(s):
                depth += {"{": 1, "}": -1}.get(s[j], 0)
                if depth == 0:
                    break
                j += 1
            inner = _paren_nested_subscripts(s[k + 1 : j])
            if "_" in s[k + 1 : j] and s.startswith("_", j + 1):
                out.append(f"({inner})")
            else:
                out.append("{" + inner + "}")
            k = j + 1
            continue
        out.append(s[k])
        k += 1
    return "".join(out)


def _mathtext(line: str) -> str:
    """mathtext knows most of LaTeX's maths but not these few macros."""
    line = (
        line.replace(r"\mathbb{1}", r"\mathbf{1}")
        .replace(r"\operatorname", r"\mathrm")
        .replace(r"\mathrel{+}=", "+=")
        .replace(r"\text{for }", r"\mathrm{for}\ ")
        .replace(r"\ell", "l")
    )
    return _paren_nested_subscripts(line)


def _png(lines: list[tuple[str, str]], out: str, name: str, width_in: float = 10.0) -> None:
    """Rows measured as mathtext draws them: a line wider than the page wraps at a top-level `+`/`-`, and each
    row is as tall as its maths (sums and fractions included), so nothing overlaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi, fontsize, indent = 110, 12, 0.3
    scratch = plt.figure(figsize=(width_in, 2), dpi=dpi)
    # the canvas is Agg's (matplotlib.use above), which has get_renderer; the stubs type it as FigureCanvasBase
    renderer = scratch.canvas.get_renderer()  # type: ignore[attr-defined]

    def size(text: str, **kw) -> tuple[float, float]:
        t = scratch.text(0, 0, text, fontsize=fontsize, **kw)
        box = t.get_window_extent(renderer)
        t.remove()
        return box.width / dpi, box.height / dpi

    rows: list[tuple[str, str, float]] = [("head", f"symgrad derive: {name}", size(name, weight="bold")[1] * 1.2)]
    current = None
    limit = width_in - 2 * indent
    for section, text in lines:
        if section != current:
            rows.append(("title", TITLES[section], size(TITLES[section], weight="bold")[1]))
            current = section
        row = ""
        for piece in split_terms(text):
            trial = f"{row} {piece}" if row else piece
            if row and size(f"${_mathtext(trial)}$")[0] > limit:
                rows.append(("math", row, size(f"${_mathtext(row)}$")[1]))
                row = r"\qquad " + piece
            else:
                row = trial
        rows.append(("math", row, size(f"${_mathtext(row)}$")[1]))
    plt.close(scratch)
    gap = 0.16
    height = sum(h + gap for _, _, h in rows) + 2 * gap + 0.4 * sum(k == "title" for k, _, _ in rows)
    fig = plt.figure(figsize=(width_in, height), dpi=dpi)
    y = height - gap
    for kind, text, h in rows:
        if kind == "title":
            y -= 0.4
        x = indent if kind == "math" else 0.1
        label = f"${_mathtext(text)}$" if kind == "math" else text
        fig.text(
            x / width_in,
            y / height,
            label,
            fontsize=fontsize + (3 if kind == "head" else 0),
            va="top",
            weight="normal" if kind == "math" else "bold",
        )
        y -= h + gap
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.25)
        _publish(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def _publish(tmp: str, path: str) -> None:
    """Give the temp file the permissions a normally created file has, then rename it into place."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)
