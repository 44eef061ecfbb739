"""Quality metrics for explanations, measured against the model itself (shared/DESIGN.md section 7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from .adapters import encode_labels, make_adapter

__all__ = ["loo_correlation"]


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
