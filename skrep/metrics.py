"""Quality metrics for explanations, measured against the model itself (shared/DESIGN.md section 7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.base import clone
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.utils import _safe_indexing

from .adapters import encode_labels, make_adapter
from .neurons.experts import expert_precision_recall

__all__ = [
    "deletion_curve",
    "expert_precision_recall",
    "label_fix_accuracy",
    "loo_correlation",
    "mislabel_detection",
]


def _test_losses(model: Any, X: Any, y: Any) -> np.ndarray:
    adapter = make_adapter(model)
    logits = adapter.logits(X).double()
    labels = encode_labels(np.asarray(y), adapter.classes_)
    loss = adapter.loss
    return loss.value(logits, loss.targets(labels, logits.shape[1], torch.float64)).numpy()


def loo_correlation(
    explainer: Any, X_test: Any, y_test: Any, indices: Sequence[int], retrain: Callable[[np.ndarray], Any]
) -> dict[str, Any]:
    """Predicted against actual leave-one-out change of test losses, by really retraining.

    Parameters
    ----------
    explainer : a fitted explainer whose values estimate a change of test loss (influence functions)
    X_test, y_test : test points and labels
    indices : training points to remove, one at a time
    retrain : callable
        ``retrain(keep)`` with a boolean mask over the training set returns the model refit on
        the kept points (warm-starting from the trained model keeps it fast and in the same basin).

    Returns
    -------
    dict with ``pearson``, ``spearman`` (over all test x removed pairs), ``predicted`` and ``actual``
    (each (n_test, len(indices))).
    """
    idx = np.asarray(indices)
    predicted = explainer.explain(X_test, y_test).values[:, idx].astype(np.float64)
    base = _test_losses(explainer.model, X_test, y_test)
    actual = np.empty_like(predicted)
    for j, i in enumerate(idx):
        keep = np.ones(explainer.n_train_, dtype=bool)
        keep[i] = False
        actual[:, j] = _test_losses(retrain(keep), X_test, y_test) - base
    return {
        "pearson": float(pearsonr(predicted.ravel(), actual.ravel())[0]),
        "spearman": float(spearmanr(predicted.ravel(), actual.ravel())[0]),
        "predicted": predicted,
        "actual": actual,
    }


def _check_scores(scores: Any, n: int | None = None, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} must be a 1-d array of finite numbers, one per training point.")
    if n is not None and len(scores) != n:
        raise ValueError(f"{name} has {len(scores)} entries but there are {n} training points; pass one per point.")
    return scores


def _check_fractions(fractions: Sequence[float], name: str) -> list[float]:
    out = [float(f) for f in fractions]
    if not out or any(not 0 <= f <= 1 for f in out):
        raise ValueError(f"{name} must be fractions of the training set in [0, 1]; got {list(fractions)!r}.")
    return out


def _order(scores: np.ndarray) -> np.ndarray:
    """Training points from most to least suspicious; ties keep index order."""
    return np.argsort(-scores, kind="stable")


def mislabel_detection(
    scores: Any, is_mislabeled: Any, checked: Sequence[float] = (0.05, 0.1, 0.2, 0.4)
) -> dict[str, Any]:
    """How many wrong labels a person finds by checking the points with the highest scores first.

    Parameters
    ----------
    scores : array-like of shape (n_train,)
        Suspicion of each training point (higher: checked first), e.g. ``self_influence()``.
    is_mislabeled : array-like of bool, shape (n_train,)
        Which labels are wrong.
    checked : sequence of float, default=(0.05, 0.1, 0.2, 0.4)
        Shares of the training set checked.

    Returns
    -------
    dict
        ``recall``: {fraction checked: share of the wrong labels found}; ``auc``: ROC AUC of the
        scores for telling wrong labels from right ones; ``n_mislabeled``.

    Notes
    -----
    Checking ``m = round(f n)`` points: when points with equal scores straddle the cut, each of
    them counts with the chance of being among the checked ones (the expected recall under a
    random order of ties), as the AUC counts ties.

    Examples
    --------
    >>> out = mislabel_detection([0.9, 0.1, 0.8, 0.2], [True, False, False, True], checked=(0.25, 0.5))
    >>> out["recall"], out["auc"]
    ({0.25: 0.5, 0.5: 0.5}, 0.75)
    """
    scores = _check_scores(scores)
    wrong = np.asarray(is_mislabeled)
    if wrong.shape != scores.shape or wrong.dtype != bool:
        raise ValueError(f"is_mislabeled must be a boolean array with one entry per score ({len(scores)}).")
    if not wrong.any() or wrong.all():
        raise ValueError("is_mislabeled must hold both wrong and right labels; recall and AUC are undefined otherwise.")
    recall = {}
    for f in _check_fractions(checked, "checked"):
        m = int(round(f * len(scores)))
        if m == 0:
            recall[f] = 0.0
            continue
        cut = np.sort(scores)[::-1][m - 1]
        above, tied = scores > cut, scores == cut
        found = wrong[above].sum() + (m - above.sum()) * wrong[tied].mean()
        recall[f] = float(found / wrong.sum())
    return {"recall": recall, "auc": float(roc_auc_score(wrong, scores)), "n_mislabeled": int(wrong.sum())}


def label_fix_accuracy(
    estimator: Any,
    X_train: Any,
    y_noisy: Any,
    y_true: Any,
    X_test: Any,
    y_test: Any,
    scores: Any,
    checked: Sequence[float] = (0.1, 0.2, 0.4),
) -> dict[float, float]:
    """Test accuracy after a person checks the top-scored training labels and fixes the wrong ones.

    The protocol of the RPS-LJE paper (Sui et al. 2021, section 5): check the share ``f`` of the
    training points with the highest scores, replace their labels by the true ones, retrain (a
    clone of) ``estimator`` and measure its accuracy on the test set.

    Parameters
    ----------
    estimator : sklearn classifier
        Unfitted; cloned and fitted once per share checked (fix its ``random_state`` to compare
        rankings on equal terms).
    X_train : array-like
    y_noisy, y_true : array-like of shape (n_train,)
        The labels trained on and the correct ones.
    X_test, y_test : array-like
    scores : array-like of shape (n_train,)
        Suspicion (higher: checked first); ties are checked in index order.
    checked : sequence of float, default=(0.1, 0.2, 0.4)
        Shares checked; 0 gives the accuracy without fixing anything.

    Returns
    -------
    dict
        {share checked: test accuracy}.

    Examples
    --------
    >>> from sklearn.dummy import DummyClassifier
    >>> X = [[0]] * 5
    >>> acc = label_fix_accuracy(
    ...     DummyClassifier(), X, [1, 1, 1, 0, 0], [0, 0, 1, 0, 0], [[0]] * 2, [0, 0], [3, 2, 0, 0, 1], checked=(0, 0.4)
    ... )
    >>> acc
    {0.0: 0.0, 0.4: 1.0}
    """
    y_noisy, y_true = np.asarray(y_noisy), np.asarray(y_true)
    if y_noisy.shape != y_true.shape or y_noisy.ndim != 1:
        raise ValueError(
            f"y_noisy and y_true must be 1-d and of equal length; got shapes {y_noisy.shape} and {y_true.shape}."
        )
    order = _order(_check_scores(scores, len(y_noisy)))
    out = {}
    for f in _check_fractions(checked, "checked"):
        fixed = y_noisy.copy()
        top = order[: int(round(f * len(order)))]
        fixed[top] = y_true[top]
        model = clone(estimator).fit(X_train, fixed)
        out[f] = float(accuracy_score(y_test, model.predict(X_test)))
    return out


def deletion_curve(
    estimator: Any,
    X_train: Any,
    y_train: Any,
    X_test: Any,
    y_test: Any,
    scores: Any,
    n_removed: Sequence[int] = (0, 10, 50, 100),
    metric: str | Callable[[Any, Any, Any], float] = "accuracy",
) -> dict[str, np.ndarray]:
    """Test performance after removing the top-scored training points and retraining.

    With ``scores`` the proponent values of the training points for a test set (e.g. the
    column sums of ``explain(X_test).values``), a faithful explanation makes accuracy fall (and
    test loss rise) faster than random scores do.

    Parameters
    ----------
    estimator : sklearn estimator
        Unfitted; cloned and fitted once per entry of ``n_removed``.
    X_train, y_train : training data
    X_test, y_test : test data
    scores : array-like of shape (n_train,)
        Points are removed from the highest score down (ties in index order).
    n_removed : sequence of int, default=(0, 10, 50, 100)
        How many points to remove, each count from the full training set.
    metric : 'accuracy', 'log_loss' or callable, default='accuracy'
        A callable gets ``(fitted_model, X_test, y_test)`` and returns a number.

    Returns
    -------
    dict
        ``n_removed`` and the metric's values (key: the metric's name, 'score' for a callable),
        both arrays.

    Examples
    --------
    >>> from sklearn.dummy import DummyClassifier
    >>> X = [[0]] * 5
    >>> curve = deletion_curve(DummyClassifier(), X, [1, 1, 1, 0, 0], [[0]], [1], [5, 4, 0, 0, 0], n_removed=[0, 2])
    >>> curve["accuracy"].tolist()
    [1.0, 0.0]
    """
    y_train = np.asarray(y_train)
    order = _order(_check_scores(scores, len(y_train)))
    counts = np.asarray(n_removed)
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or counts.min() < 0 or counts.max() >= len(order):
        raise ValueError(
            f"n_removed must be counts in [0, {len(order)}) (fewer than the training points); got {list(n_removed)!r}."
        )
    if callable(metric):
        name, measure = "score", metric
    elif metric == "accuracy":
        name, measure = metric, lambda m, X, y: accuracy_score(y, m.predict(X))
    elif metric == "log_loss":
        name, measure = metric, lambda m, X, y: log_loss(y, m.predict_proba(X), labels=m.classes_)
    else:
        raise ValueError(f"metric must be 'accuracy', 'log_loss' or a callable (model, X, y); got {metric!r}.")
    values = []
    for k in counts:
        keep = np.sort(order[k:])
        model = clone(estimator).fit(_safe_indexing(X_train, keep), y_train[keep])
        values.append(float(measure(model, X_test, y_test)))
    return {"n_removed": counts, name: np.asarray(values)}
