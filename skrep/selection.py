"""RepresenterSelector: keep the training points that carry a model's predictions (prototypes, coresets)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import check_is_fitted

from ._validation import check_choice, check_number
from .cleaning import _check_data, _fitted_explainer
from .explainers import BaseExplainer

__all__ = ["RepresenterSelector"]

# rows of training points explained at once: bounds the (rows, n_train) value block in memory
_BLOCK_VALUES = 2**22


class RepresenterSelector(BaseEstimator):
    """Keep the ``n_points`` most representative (or most suspicious) training points.

    ``fit_resample(X, y)`` returns the selected rows, so the selector is a step of
    imbalanced-learn's ``Pipeline`` (a prototype set or a coreset for the next step), or a way to
    hand the most suspicious points to a person.

    Parameters
    ----------
    explainer : BaseExplainer or None, default=None
        An unfitted explainer (a clone is fitted). Its ``model`` is the trained model to explain,
        or None when ``estimator`` is given. None: ``InfluenceFunctions(None, damping=1e-3)``.
    estimator : estimator or None, default=None
        A model fitted on the data given to ``fit``, then explained. None: the explainer's model.
    n_points : int or float, default=0.1
        Points to keep: a count, or a share of the training set when a float in (0, 1].
    strategy : {'proponents', 'self_influence'}, default='proponents'
        'proponents': the points that support the model's predictions on the rest of the
        training set most, each scored by its net value ``sum_t values[t, i]`` over the training
        points t != i, where row t explains the model's prediction at t (its predicted class's
        logit for RPS and LJE, the loss at the predicted label for influence functions and
        TracIn): the representer points of the model. A mislabelled point opposes its correctly
        labelled neighbours and scores low. Costs one pass of ``explain`` over the training set
        (n_train^2 values, in blocks). 'self_influence': the points the model leans on most to
        fit their own label, the most suspicious ones (to hand to a person).
    stratify : bool, default=True
        Keep points in every class in proportion to its size (at least one per class when
        ``n_points`` allows); False: the top points overall. Ignored for regression models.

    Attributes
    ----------
    explainer_ : BaseExplainer
    scores_ : ndarray of shape (n_samples,)
        The ranking score of each training point (higher: kept first).
    sample_indices_ : ndarray of int
        Selected rows, best first within each class.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Column names, where X is a DataFrame.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skrep import RepresenterPoints
    >>> X, y = load_iris(return_X_y=True)
    >>> selector = RepresenterSelector(RepresenterPoints(None), estimator=LogisticRegression(max_iter=1000), n_points=9)
    >>> X_proto, y_proto = selector.fit_resample(X, y)
    >>> X_proto.shape, sorted(y_proto.tolist())
    ((9, 4), [0, 0, 0, 1, 1, 1, 2, 2, 2])
    """

    def __init__(
        self,
        explainer: BaseExplainer | None = None,
        estimator: Any = None,
        n_points: float = 0.1,
        strategy: str = "proponents",
        stratify: bool = True,
    ):
        self.explainer = explainer
        self.estimator = estimator
        self.n_points = n_points
        self.strategy = strategy
        self.stratify = stratify

    def fit(self, X: Any, y: Any) -> RepresenterSelector:
        """Explain the model and select the points.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training inputs, in the layout the model takes.
        y : array-like of shape (n_samples,)
            Training labels.

        Returns
        -------
        self
        """
        check_choice(self.strategy, "strategy", ("proponents", "self_influence"))
        check_choice(self.stratify, "stratify", (True, False))
        X, y = _check_data(self, X, y)
        n_keep = _n_keep(self.n_points, len(y))
        self.explainer_ = _fitted_explainer(self.explainer, self.estimator, X, y)
        if self.strategy == "self_influence":
            self.scores_ = self.explainer_.self_influence()
        else:
            self.scores_ = _support(self.explainer_, X)
        classification = self.explainer_.adapter_.loss.is_classification
        groups = y if self.stratify and classification else np.zeros(len(y))
        self.sample_indices_ = _stratified_top(self.scores_, groups, n_keep)
        return self

    def fit_resample(self, X: Any, y: Any) -> tuple[Any, np.ndarray]:
        """Fit, then return the selected rows of X and their labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,)

        Returns
        -------
        X_resampled : the selected rows (same container type as X)
        y_resampled : ndarray, their labels
        """
        self.fit(X, y)
        return _safe_indexing(X, self.sample_indices_), np.asarray(y)[self.sample_indices_]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.allow_nan = False
        return tags


def _n_keep(n_points: Any, n: int) -> int:
    if isinstance(n_points, numbers.Integral) and not isinstance(n_points, bool):
        check_number(n_points, "n_points", integer=True)
        if int(n_points) > n:
            raise ValueError(f"n_points={n_points} is more than the {n} training points; pass at most {n}.")
        return int(n_points)
    check_number(n_points, "n_points", max_val=1, include_boundaries="right")
    return max(1, int(round(n_points * n)))


def _support(explainer: BaseExplainer, X: Any) -> np.ndarray:
    """sum_t values[t, i] over training points t != i, each row explaining the model's prediction at t."""
    check_is_fitted(explainer, "train_embedding_")
    n = explainer.n_train_
    total = np.zeros(n)
    rows = max(1, _BLOCK_VALUES // n)
    for s in range(0, n, rows):
        idx = np.arange(s, min(s + rows, n))
        values = np.array(explainer.explain(_safe_indexing(X, idx)).values, dtype=np.float64)
        values[np.arange(len(idx)), idx] = 0.0  # a point's value for itself is its self-influence
        total += values.sum(0)
    return total


def _stratified_top(scores: np.ndarray, groups: np.ndarray, n_keep: int) -> np.ndarray:
    """Indices of the ``n_keep`` best points, each group's share proportional to its size.

    Shares are rounded by largest remainder, every group gets at least one point when
    ``n_keep`` reaches the number of groups, and no group more than it has.
    """
    labels, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
    quota = counts * n_keep / len(scores)
    share = np.floor(quota).astype(int)
    if n_keep >= len(labels):
        share = np.maximum(share, 1)
    # hand out what is left by largest remainder, then take back from the largest shares
    order = np.argsort(-(quota - share), kind="stable")
    while share.sum() < n_keep:
        for g in order[share[order] < counts[order]][: n_keep - share.sum()]:
            share[g] += 1
    while share.sum() > n_keep:
        share[np.argmax(share)] -= 1
    picked = []
    for g in range(len(labels)):
        members = np.flatnonzero(codes == g)
        picked.append(members[np.argsort(-scores[members], kind="stable")[: share[g]]])
    return np.concatenate(picked)
