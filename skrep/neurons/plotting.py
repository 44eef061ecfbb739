"""Image grids of inputs and attribution maps (matplotlib is imported only when a grid is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..plotting import _new_figure

__all__ = ["plot_image_grid"]


def _image(a: Any, image_shape: tuple[int, ...] | None, signed: bool) -> np.ndarray:
    """A 2-D (or H x W x 3) array to draw; channels of an attribution map are summed."""
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    if image_shape is not None:
        a = a.reshape(image_shape)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # channels first (torch) -> last (matplotlib)
    if a.ndim == 3 and (signed or a.shape[-1] == 1):
        a = a.sum(-1)
    if a.ndim == 3 and not signed:
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if a.ndim not in (2, 3):
        raise ValueError(
            f"An image must be 2-D (H, W) or 3-D with channels; got shape {a.shape}. Pass image_shape= "
            "to reshape flat inputs, e.g. (8, 8) for sklearn's digits."
        )
    return a


def plot_image_grid(
    rows: Sequence[Sequence[Any]],
    *,
    titles: Sequence[Sequence[str | None]] | None = None,
    signed: Any = True,
    image_shape: tuple[int, ...] | None = None,
    path: Any = None,
    cell_size: float = 1.6,
) -> Any:
    """Draw a grid of images and attribution maps; optionally save it.

    Parameters
    ----------
    rows : sequence of sequences of arrays (or None for an empty cell)
        One image per cell: (H, W), (C, H, W), (H, W, C), or flat with ``image_shape``.
    titles : same nesting as ``rows``, of str or None, optional
    signed : bool, or the same nesting of bools, default=True
        Signed cells (attribution maps) are drawn with a blue-white-red colormap centred at zero
        and symmetric limits, channels summed; unsigned cells (inputs) in grey or colour.
    image_shape : tuple of int, optional
        Reshape every cell to this shape first.
    path : str or path-like, optional
        Save the figure there (the format follows the extension, e.g. ``.png``).
    cell_size : float, default=1.6
        Inches per cell.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> img, attribution = np.random.rand(8, 8), np.random.randn(8, 8)
    >>> fig = plot_image_grid([[img, attribution]], signed=[[False, True]], titles=[["input", "map"]])
    >>> len(fig.axes)
    2
    """
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("rows must hold at least one image.")
    fig = _new_figure((cell_size * n_cols, cell_size * n_rows * 1.1))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_axis_off()
            cell = row[j] if j < len(row) else None
            if cell is None:
                continue
            is_signed = bool(signed if isinstance(signed, bool) else signed[i][j])
            a = _image(cell, image_shape, is_signed)
            if is_signed:
                lim = float(np.abs(a).max()) or 1.0
                ax.imshow(a, cmap="bwr", vmin=-lim, vmax=lim)
            else:
                ax.imshow(a, cmap="gray_r" if a.ndim == 2 else None)
            title = titles[i][j] if titles is not None and j < len(titles[i]) else None
            if title:
                ax.set_title(title, fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
