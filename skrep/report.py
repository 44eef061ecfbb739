"""Self-contained HTML reports: the ``skrep demo`` report and tables for ``skrep explain``.

A report is one file: PNG images are inlined as base64 ``data:`` URIs and the style sheet is
embedded, so it opens anywhere, offline, and can be mailed or attached to an issue. Every string
that does not come from skrep itself is escaped. Pictures need matplotlib
(``pip install "skrep[plot]"``); tables do not.
"""

from __future__ import annotations

import base64
import html
import io
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import plotting
from ._version import __version__

if TYPE_CHECKING:
    from .demo import DemoResult, MethodResult

__all__ = ["Html", "environment", "figure_uri", "html_page", "html_table", "image_uri", "write_demo_report"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0; }
figure.point { display: inline-block; text-align: center; margin: 0 0.25rem; font-size: 0.75rem; }
figure.point img { width: 48px; height: 48px; image-rendering: pixelated; border: 2px solid #ccc; }
figure.point.test img { width: 72px; height: 72px; border-color: #555; }
figure.point.flipped img { border-color: #d95f02; } figure.point.flipped figcaption { color: #d95f02; }
.pos { color: #1b7837; } .neg { color: #b2182b; } .note { color: #555; font-size: 0.9rem; }
"""


class Html(str):
    """A string that is already HTML: :func:`html_table` inserts it without escaping."""


def html_page(title: str, body: str) -> str:
    """A complete HTML document with the embedded style sheet.

    Examples
    --------
    >>> html_page("a < b", "<p>hi</p>").count("a &lt; b")
    2
    """
    t = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n{body}\n</body>\n</html>\n"
    )


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, table_id: str | None = None) -> str:
    """An HTML table; cells are escaped unless they are :class:`Html`, numbers are right-aligned.

    Examples
    --------
    >>> html_table(["name", "value"], [["<x>", 1.5]])
    '<table><tr><th>name</th><th>value</th></tr><tr><td>&lt;x&gt;</td><td class="num">1.5</td></tr></table>'
    """

    def cell(v: Any) -> str:
        if isinstance(v, Html):
            return f"<td>{v}</td>"
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
            return f'<td class="num">{html.escape(str(v))}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return f"<table{ident}><tr>{head}</tr>{body}</table>"


def figure_uri(fig: Any, dpi: int = 100) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_uri(image: Any, cmap: str = "gray_r") -> str:
    """A 2-D array (or RGB image) as a PNG ``data:`` URI at its own resolution (needs matplotlib)."""
    try:
        from matplotlib.image import imsave
    except ImportError as e:
        raise ImportError('skrep reports need matplotlib: pip install "skrep[plot]"') from e
    buf = io.BytesIO()
    imsave(buf, np.asarray(image), cmap=cmap, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def environment() -> dict[str, str]:
    """Versions of Python, the platform and the packages skrep ran with.

    Examples
    --------
    >>> environment()["skrep"] == __version__
    True
    """
    env = {"skrep": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("numpy", "scipy", "scikit-learn", "torch", "xgboost", "matplotlib"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = "not installed"
    return env


def _point(uri: str, caption: str, classes: str, row: int | None = None) -> Html:
    data = "" if row is None else f' data-train-row="{row}"'
    return Html(
        f'<figure class="point {classes}"{data}><img src="{uri}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _figure(fig: Any, figure_id: str, caption: str) -> str:
    return (
        f'<figure id="{figure_id}"><img src="{figure_uri(fig)}" alt="{html.escape(caption)}">'
        f'<figcaption class="note">{html.escape(caption)}</figcaption></figure>'
    )


def _training_points(result: DemoResult, idx: np.ndarray, values: np.ndarray) -> Html:
    """One image per training point, its label marked when it was flipped."""
    data = result.data
    assert data.images_train is not None  # load_digits_data always keeps the images
    cells = []
    for i, v in zip(idx.tolist(), values.tolist(), strict=True):
        label = f"label {data.y_train[i]}"
        if data.flipped[i]:
            label += f" (flipped, true {data.y_train_clean[i]})"
        flipped = " flipped" if data.flipped[i] else ""
        cells.append(_point(image_uri(data.images_train[i]), f"#{i} {label} {v:+.3g}", f"train{flipped}", i))
    return Html("".join(cells))


def _case(result: DemoResult, j: int) -> str:
    """A shown test digit, then each method's proponents and opponents of its prediction."""
    data = result.data
    assert data.images_test is not None
    t = int(result.shown[j])
    caption = f"test digit #{t}: true {data.y_test[t]}, predicted {result.predicted[t]}"
    rows = []
    for m in result.methods:
        E = m.explanation
        pi, pv = E.proponents(E.k or 1)
        oi, ov = E.opponents(E.k or 1)
        adds_up = "" if E.reconstruction is None else f", values + prior {E.reconstruction[j]:.3f}"
        what = m.explains if E.output is None else f"{m.explains}: model {E.output[j]:.3f}{adds_up}"
        rows.append([m.name, what, _training_points(result, pi[j], pv[j]), _training_points(result, oi[j], ov[j])])
    table = html_table(["method", "explains", "proponents (strongest first)", "opponents (strongest first)"], rows)
    return f'<section class="case">{_point(image_uri(data.images_test[t]), caption, "test")}{table}</section>'


def _reconstruction_figure(methods: list[MethodResult]) -> Any:
    decomposing = [m for m in methods if m.reconstruction is not None]
    fig = plotting._new_figure((4.2 * len(decomposing), 4.2))
    for ax, m in zip(fig.subplots(1, len(decomposing), squeeze=False)[0], decomposing, strict=True):
        assert m.reconstruction is not None
        plotting.plot_reconstruction(*m.reconstruction, label=m.name, ax=ax)
    return fig


def write_demo_report(result: DemoResult, path: str | Path) -> Path:
    """Write the HTML report of :func:`skrep.demo.run_demo` to ``path``; returns its absolute path."""
    data, methods = result.data, result.methods
    n, n_flipped = len(data.y_train), int(data.flipped.sum())
    k = methods[0].explanation.k
    intro = (
        f"<p>An MLP 64-128-10 was trained for {result.epochs} epochs (Adam, weight decay {result.weight_decay}) on "
        f"sklearn's digits, {n} training images of which <b>{n_flipped} ({n_flipped / n:.0%}) carry a wrong "
        f"label</b>. Test accuracy: {result.accuracy:.3f}. Each method below explains the model's predictions "
        "by its training points.</p>"
        '<p><b>Sign convention.</b> A value <span class="pos">&gt; 0</span> means the training point '
        '<i>supports</i> what is explained (a proponent); <span class="neg">&lt; 0</span> that it opposes it (an '
        "opponent). Representer methods decompose the logit of the predicted class into one share per training "
        "point; influence functions and TracIn explain the loss at the predicted label. Training points whose "
        'label was flipped are framed in <span style="color:#d95f02">orange</span>.</p>'
    )
    summary = html_table(
        ["method", "explains", "fidelity: Pearson with the model's logits", "flipped found checking 10%", "AUC"],
        [
            [
                m.name,
                m.explains,
                "-" if m.fidelity is None else round(m.fidelity, 4),
                f"{m.found_at_10pct:.0%}",
                round(m.auc, 3),
            ]
            for m in methods
        ],
        table_id="summary",
    )
    cases = "".join(_case(result, j) for j in range(len(result.shown)))
    curves = plotting.plot_mislabel_curves({m.name: m.self_influence for m in methods}, data.flipped).figure
    steps = ["fit", "explain", "self-influence", "reconstruction"]
    timing_rows: list[list[Any]] = [[f"training ({result.epochs} epochs)", *[""] * len(steps), result.train_seconds]]
    for m in methods:
        timing_rows.append([m.name, *(m.seconds.get(s, "-") for s in steps), sum(m.seconds.values())])
    timing = html_table(
        ["step", *steps, "total"],
        ([round(v, 2) if isinstance(v, float) else v for v in row] for row in timing_rows),
        table_id="timing",
    )
    body = (
        intro
        + "<h2>Summary</h2>"
        + summary
        + f"<h2>Who supports each prediction</h2><p class='note'>The top {k} proponents and opponents of "
        f"{len(result.shown)} test digits, by each method.</p>"
        + cases
        + "<h2>Do the values add up?</h2>"
        + _figure(
            _reconstruction_figure(methods),
            "reconstruction",
            "Sum of the training points' values (plus the prior) against the model's own logit, every class of "
            "every test digit, rows centered (a shift of a row changes no prediction). Representer points "
            "decompose a refit of the head; LJE the given head, exactly only where training has reached a "
            "stationary point, which a network stopped after a few epochs of Adam has not.",
        )
        + "<h2>Finding the flipped labels</h2>"
        + _figure(
            curves,
            "mislabel-curve",
            "Checking training points in decreasing order of each method's self-influence: fraction of the "
            f"{n_flipped} flipped labels found against fraction of the training set checked; the diagonal is random "
            "checking.",
        )
        + f"<h2>Timing (seconds, {len(result.shown)} test points, top {k})</h2>"
        + timing
        + "<h2>Versions</h2>"
        + html_table(["package", "version"], environment().items(), table_id="versions")
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page("skrep demo: a digits network explained by its training points", body), "utf-8")
    return path.resolve()
