"""Pictures of explanations: proponent / opponent grids, reconstruction scatter, mislabel curves.

matplotlib is optional (``pip install "skrep[plot]"``) and imported only when a plot is drawn.
Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot: they render with
the Agg backend on machines without a display and never change the user's pyplot state or
backend. Pass ``ax=`` to draw into an existing pyplot or notebook figure instead.

Examples
--------
>>> import numpy as np
>>> from skrep.plotting import mislabel_curve
>>> checked, found = mislabel_curve(np.array([0.9, 0.1, 0.5, 0.2]), np.array([True, False, False, True]))
>>> found.tolist()
[0.0, 0.5, 0.5, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .explanation import Explanation

__all__ = ["mislabel_curve", "plot_explanation", "plot_mislabel_curves", "plot_reconstruction"]

_PRO, _OPP, _FLIPPED = "#1b7837", "#b2182b", "#d95f02"


def _new_figure(figsize: tuple[float, float]) -> Any:
    """A pyplot-free Figure (rendered by Agg when saved)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError('skrep.plotting needs matplotlib: pip install "skrep[plot]"') from e
    return Figure(figsize=figsize, layout="constrained")


def _new_axes(ax: Any, figsize: tuple[float, float]) -> Any:
    """``ax`` itself, or the axes of a new figure."""
    return ax if ax is not None else _new_figure(figsize).add_subplot()


def mislabel_curve(scores: Any, flipped: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of flipped labels found against fraction of the training set checked.

    Training points are checked in decreasing order of ``scores`` (e.g. an explainer's
    ``self_influence()``); checking in random order finds, on average, ``found == checked``.

    Parameters
    ----------
    scores : array-like of shape (n_train,)
        Suspicion of each training point, highest first.
    flipped : array-like of bool, shape (n_train,)
        Which training labels are known to be wrong.

    Returns
    -------
    checked, found : ndarray of shape (n_train + 1,)
        Both start at 0 and end at 1.

    Examples
    --------
    >>> checked, found = mislabel_curve([3.0, 1.0, 2.0], [False, False, True])
    >>> checked.round(2).tolist(), found.tolist()
    ([0.0, 0.33, 0.67, 1.0], [0.0, 0.0, 1.0, 1.0])
    """
    scores = np.asarray(scores, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    if scores.shape != flipped.shape or scores.ndim != 1:
        raise ValueError(f"scores and flipped must be 1-D of one length; got {scores.shape} and {flipped.shape}.")
    if not flipped.any():
        raise ValueError("flipped marks no training point: there is nothing to find.")
    order = np.argsort(-scores, kind="stable")
    found = np.concatenate([[0.0], np.cumsum(flipped[order]) / flipped.sum()])
    checked = np.arange(len(scores) + 1) / len(scores)
    return checked, found


def plot_mislabel_curves(scores: Mapping[str, Any], flipped: Any, *, ax: Any = None) -> Any:
    """One :func:`mislabel_curve` per ranking, with random checking as the baseline.

    Parameters
    ----------
    scores : mapping of name -> array-like of shape (n_train,)
        Suspicion rankings, e.g. ``{"TracIn": tracin.self_influence()}``.
    flipped : array-like of bool, shape (n_train,)
    ax : matplotlib Axes or None
        Where to draw; None makes a new figure.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> flipped = rng.random(100) < 0.1
    >>> ax = plot_mislabel_curves({"noisy oracle": flipped + rng.random(100)}, flipped)
    >>> [line.get_label() for line in ax.get_lines()]
    ['noisy oracle', 'random']
    """
    ax = _new_axes(ax, (5, 4))
    for name, s in scores.items():
        checked, found = mislabel_curve(s, flipped)
        ax.plot(checked, found, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="random")
    ax.set(
        xlabel="fraction of training set checked",
        ylabel="fraction of flipped labels found",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Finding flipped labels by self-influence",
    )
    ax.legend(loc="lower right")
    return ax


def plot_reconstruction(
    decomposed: Any, output: Any, *, center_rows: bool = True, label: str | None = None, ax: Any = None
) -> Any:
    """Scatter of decomposed outputs against the model's own, with their Pearson correlation.

    Parameters
    ----------
    decomposed, output : array-like of shape (n, k)
        What :meth:`~skrep.explainers.base.BaseExplainer.reconstruct` returns: the sum of the
        training points' values plus the prior for every class, and the model's logits.
    center_rows : bool, default=True
        Subtract each row's mean first, as ``score`` does for softmax models (a constant shift of
        a row of logits changes no prediction). Use False for one-output models.
    label : str or None
        Title, e.g. the method's name.
    ax : matplotlib Axes or None

    Returns
    -------
    matplotlib Axes
        Its title ends with the Pearson correlation r.

    Examples
    --------
    >>> logits = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.0]])
    >>> ax = plot_reconstruction(logits + 0.01, logits, label="LJE")
    >>> ax.get_title()
    'LJE: Pearson r = 1.0000'
    """
    a = np.asarray(decomposed, dtype=np.float64)
    b = np.asarray(output, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"decomposed and output must have one shape; got {a.shape} and {b.shape}.")
    if center_rows and a.ndim == 2:
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
    r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    ax = _new_axes(ax, (4, 4))
    ax.scatter(b.ravel(), a.ravel(), s=4, alpha=0.4, linewidths=0)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    what = " (row-centered)" if center_rows else ""
    ax.set(xlabel=f"model logit{what}", ylabel=f"sum of training-point values + prior{what}")
    ax.set_title(f"{label + ': ' if label else ''}Pearson r = {r:.4f}")
    return ax


def plot_explanation(
    explanation: Explanation,
    test: int = 0,
    k: int = 5,
    *,
    images: Any = None,
    labels: Any = None,
    flipped: Any = None,
    test_image: Any = None,
) -> Any:
    """The top-k proponents and opponents of one test point.

    As images (a 2 x k grid, after the test point's own image if given) when ``images`` is
    given, else as a bar chart of their values.

    Parameters
    ----------
    explanation : Explanation
    test : int, default=0
        Which explained test point.
    k : int, default=5
    images : array-like of shape (n_train, h, w) or (n_train, h, w, 3), or None
        The training points as images.
    labels : array-like of shape (n_train,) or None
        Training labels, shown next to each point.
    flipped : array-like of bool, shape (n_train,), or None
        Training labels known to be wrong, marked with ``*`` in orange.
    test_image : array-like of shape (h, w) or (h, w, 3), or None
        The explained test point, drawn first (with ``images``).

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> from skrep import Explanation
    >>> E = Explanation(values=np.array([[0.5, -1.0, 2.0, 0.1]]), n_train=4, target=np.array([1]))
    >>> fig = plot_explanation(E, k=2, images=np.zeros((4, 8, 8)), labels=[1, 0, 1, 1])
    >>> len(fig.axes)
    4
    >>> plot_explanation(E, k=2).axes[0].get_xlabel()
    'value (> 0 supports the explained output)'
    """
    if not 0 <= test < explanation.n_test:
        raise ValueError(f"test must index one of the {explanation.n_test} explained points; got {test}.")
    (pi, pv), (oi, ov) = explanation.proponents(k), explanation.opponents(k)
    rows = {"proponents": (pi[test], pv[test]), "opponents": (oi[test], ov[test])}
    labels = None if labels is None else np.asarray(labels)
    flipped = np.zeros(explanation.n_train, bool) if flipped is None else np.asarray(flipped, bool)

    def caption(i: int, v: float) -> str:
        label = "" if labels is None else f" label {labels[i]}{'*' if flipped[i] else ''}"
        return f"#{i}{label}\n{v:+.3g}"

    title = f"{explanation.method or 'explanation'}: test point {test}, explained {explanation.target[test]}"
    if images is None:
        ax = _new_figure((6, 0.7 * len(pi[test]) + 1)).add_subplot()
        idx = np.concatenate([rows["proponents"][0], rows["opponents"][0][::-1]])
        val = np.concatenate([rows["proponents"][1], rows["opponents"][1][::-1]])
        pos = np.arange(len(idx))[::-1]
        ax.barh(pos, val, color=np.where(val > 0, _PRO, _OPP))
        ax.set_yticks(pos, [caption(i, v).replace("\n", ": ") for i, v in zip(idx, val, strict=True)])
        ax.axvline(0, color="black", lw=0.8)
        ax.set(xlabel="value (> 0 supports the explained output)", title=title)
        return ax.figure
    images = np.asarray(images)
    k = len(pi[test])
    first = 0 if test_image is None else 1
    fig = _new_figure((1.3 * (k + first), 3.4))
    grid = fig.add_gridspec(2, k + first)
    if test_image is not None:
        ax = fig.add_subplot(grid[:, 0])
        ax.imshow(np.asarray(test_image), cmap="gray_r")
        ax.set(xticks=[], yticks=[], title="test point")
    for r, (name, (idx, val)) in enumerate(rows.items()):
        for j, (i, v) in enumerate(zip(idx.tolist(), val.tolist(), strict=True)):
            ax = fig.add_subplot(grid[r, first + j])
            ax.imshow(images[i], cmap="gray_r")
            ax.set(xticks=[], yticks=[])
            ax.set_title(caption(i, v), fontsize=8, color=_FLIPPED if flipped[i] else "black")
            if j == 0:
                ax.set_ylabel(name, color=_PRO if r == 0 else _OPP)
    fig.suptitle(title, fontsize=9)
    return fig
