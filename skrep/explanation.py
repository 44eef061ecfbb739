"""Explanation: training-point values for test points, in dense or top-k form."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Explanation"]


class Explanation:
    """What an explainer returns for a set of test points.

    Like shap's ``Explanation``, the values add up: for methods that decompose an output
    (representer points), ``values.sum(1) + prior == reconstruction``, and ``reconstruction``
    is close to ``output``, the model's own output for the explained target.

    Sign convention: ``values[t, i] > 0`` means training point i supports the explained output
    of test point t (a proponent); ``< 0`` an opponent.

    Parameters
    ----------
    values : ndarray of shape (n_test, n_train) or None
        Dense values; None in top-k form.
    top : dict or None
        Top-k form: ``pro_index``, ``pro_value``, ``opp_index``, ``opp_value``, each (n_test, k),
        strongest first.
    n_train : int
    target : ndarray of shape (n_test,)
        The class label (as the model names its classes) or output index explained for each
        test point.
    reconstruction : ndarray of shape (n_test,) or None
        The sum over all training points plus the prior, accumulated in float64 (available in
        top-k form too).
    prior : ndarray of shape (n_test,) or None
        The share of the output that no training point owns (e.g. a regularizer's); 0 if None.
    output : ndarray of shape (n_test,) or None
        What is explained, as the model computes it: the logit of the target class for methods
        that decompose an output, the loss at the label for methods that explain a loss
        (influence functions, TracIn).
    method : str

    Examples
    --------
    >>> import numpy as np
    >>> e = Explanation(values=np.array([[0.5, -1.0, 2.0]]), n_train=3, target=np.array([0]))
    >>> e.proponents(1)
    (array([[2]]), array([[2.]]))
    >>> e.opponents(1)
    (array([[1]]), array([[-1.]]))
    """

    def __init__(
        self,
        *,
        values: np.ndarray | None = None,
        top: dict[str, np.ndarray] | None = None,
        n_train: int,
        target: np.ndarray,
        reconstruction: np.ndarray | None = None,
        prior: np.ndarray | None = None,
        output: np.ndarray | None = None,
        method: str = "",
    ):
        if (values is None) == (top is None):
            raise ValueError("An Explanation holds either dense values or a top-k form, exactly one.")
        self.values = values
        self.top = top
        self.n_train = int(n_train)
        self.target = np.asarray(target)
        n = len(self.target)
        self.prior = np.zeros(n) if prior is None else np.asarray(prior, dtype=np.float64)
        if reconstruction is None and values is not None:
            reconstruction = values.sum(1, dtype=np.float64) + self.prior
        self.reconstruction = reconstruction
        self.output = output
        self.method = method

    @property
    def n_test(self) -> int:
        """Number of explained test points."""
        return len(self.target)

    @property
    def k(self) -> int | None:
        """How many proponents and opponents the top-k form keeps (None when dense)."""
        return None if self.top is None else self.top["pro_index"].shape[1]

    def _ranked(self, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        k = min(int(k), self.n_train)
        if self.values is not None:
            v = self.values if largest else -self.values
            part = np.argpartition(-v, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(v, part, 1), axis=1, kind="stable")
            idx = np.take_along_axis(part, order, 1)
            return idx, np.take_along_axis(self.values, idx, 1)
        top = self.top
        assert top is not None  # one of the two forms is always present (checked in __init__)
        kept = top["pro_index"].shape[1]
        if k > kept:
            raise ValueError(f"This explanation kept only the top {kept}; explain again with top_k={k}.")
        key = "pro" if largest else "opp"
        return top[f"{key}_index"][:, :k], top[f"{key}_value"][:, :k]

    def proponents(self, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Indices and values (each (n_test, k)) of the k largest values, largest first."""
        return self._ranked(k, largest=True)

    def opponents(self, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Indices and values (each (n_test, k)) of the k smallest values, most negative first."""
        return self._ranked(k, largest=False)

    def to_frame(self, k: int | None = None, train_labels: Any = None) -> Any:
        """A long pandas DataFrame: one row per (test point, kind, rank).

        Columns: ``test``, ``kind`` ('proponent' / 'opponent'), ``rank`` (0 = strongest),
        ``train_index``, ``value`` and, when ``train_labels`` is given, ``train_label``.
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_frame needs pandas: pip install pandas") from e
        k = self.k if k is None and self.k is not None else (k or 10)
        parts = []
        for kind, (idx, val) in (("proponent", self.proponents(k)), ("opponent", self.opponents(k))):
            n, kk = idx.shape
            frame = pd.DataFrame(
                {
                    "test": np.repeat(np.arange(n), kk),
                    "kind": kind,
                    "rank": np.tile(np.arange(kk), n),
                    "train_index": idx.ravel(),
                    "value": val.ravel(),
                }
            )
            if train_labels is not None:
                frame["train_label"] = np.asarray(train_labels)[idx.ravel()]
            parts.append(frame)
        return pd.concat(parts, ignore_index=True).sort_values(
            ["test", "kind", "rank"], ignore_index=True, ascending=[True, False, True]
        )

    def plot(self, test: int = 0, k: int = 5, **kwargs: Any) -> Any:
        """Draw the top-k proponents and opponents of one test point (needs matplotlib).

        Images when ``images=`` (the training points as images) is given, else a bar chart of
        the values; see :func:`skrep.plotting.plot_explanation` for ``labels=`` and ``flipped=``.

        Returns
        -------
        matplotlib Figure

        Examples
        --------
        >>> e = Explanation(values=np.array([[0.5, -1.0, 2.0]]), n_train=3, target=np.array([0]))
        >>> fig = e.plot(k=1, labels=["a", "b", "a"])
        >>> fig.axes[0].get_title()
        'explanation: test point 0, explained 0'
        """
        from .plotting import plot_explanation

        return plot_explanation(self, test, k, **kwargs)

    def __repr__(self) -> str:
        form = "dense" if self.values is not None else f"top-{self.k}"
        return f"Explanation(method={self.method!r}, n_test={self.n_test}, n_train={self.n_train}, {form})"
