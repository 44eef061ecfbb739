"""GradientBoostingAdapter: sklearn's gradient boosting as an exact linear head on leaf indicators.

Read through the public API only: ``apply`` gives each tree's leaf, ``tree_.value`` the leaf
values (scaled here by the learning rate, as the model adds them), and the constant raw
prediction of the init estimator is the bias.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.utils.validation import check_is_fitted

from ..losses import get_loss
from .base import check_features
from .trees import BoostingStep, TreeEnsembleAdapter

__all__ = ["GradientBoostingAdapter"]


class GradientBoostingAdapter(TreeEnsembleAdapter):
    """See a fitted ``GradientBoostingClassifier`` / ``GradientBoostingRegressor`` as a linear head.

    Supported losses: 'log_loss' (binary: logistic on the margin; multiclass: softmax, one tree
    per class and stage, recorded in ``mask``) and 'squared_error'. The init estimator must give
    a constant raw prediction (the default, or ``init='zero'``).

    Parameters
    ----------
    model : GradientBoostingClassifier or GradientBoostingRegressor
        A fitted model. It is only read.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import make_regression
    >>> from sklearn.ensemble import GradientBoostingRegressor
    >>> X, y = make_regression(200, 4, random_state=0)
    >>> model = GradientBoostingRegressor(n_estimators=30, random_state=0).fit(X, y)
    >>> adapter = GradientBoostingAdapter(model)
    >>> phi = adapter.features(X)
    >>> bool(np.allclose((phi.double() @ adapter.weight + adapter.bias).numpy()[:, 0], model.predict(X)))
    True
    """

    def __init__(self, model: Any):
        if not isinstance(model, (GradientBoostingClassifier, GradientBoostingRegressor)):
            raise TypeError(
                f"GradientBoostingAdapter takes GradientBoostingClassifier or GradientBoostingRegressor; got "
                f"{type(model).__name__}. (HistGradientBoosting models do not expose their trees' leaves.)"
            )
        check_is_fitted(model, "estimators_", msg=f"This {type(model).__name__} is not fitted yet: fit it first.")
        self.model = model
        expected = "log_loss" if isinstance(model, GradientBoostingClassifier) else "squared_error"
        if model.loss != expected:
            raise ValueError(
                f"loss={model.loss!r} is not supported for {type(model).__name__}; skrep explains loss={expected!r}."
            )
        init = model.init_
        if not (init == "zero" or isinstance(init, (DummyClassifier, DummyRegressor))):
            raise ValueError(
                f"init={type(init).__name__} gives a raw prediction that varies with x, which is not a linear "
                "head on the trees' leaves; refit with the default init or init='zero'."
            )
        stages, k = model.estimators_.shape
        if isinstance(model, GradientBoostingClassifier):
            self.classes_ = np.asarray(model.classes_)
            self._loss = get_loss("logistic" if k == 1 else "softmax")
        else:
            self.classes_ = None
            self._loss = get_loss("squared")
        self.n_features_in_ = int(model.n_features_in_)
        leaves, values = [], []
        for tree in model.estimators_.ravel():  # stage-major, class within stage: apply's order
            t = tree.tree_
            ids = np.flatnonzero(t.children_left == -1)
            leaves.append(ids)
            values.append(model.learning_rate * t.value[ids, 0, 0])
        self._set_trees(leaves, values, np.tile(np.arange(k), stages), k, np.repeat(np.arange(stages), k))
        # the init's raw prediction is constant: read it at one point, check it at another
        zero = np.zeros((1, self.n_features_in_))
        stated = (
            np.asarray(self._margin(zero), dtype=np.float64).reshape(-1)
            - ((self.features(zero).double() @ self._weight).numpy()[0])
        )
        self._check_bias(stated, np.ones((1, self.n_features_in_)))

    def penalty_l2(self, n_samples: int) -> float | None:
        """None: sklearn's gradient boosting puts no penalty on leaf values."""
        return None

    def _replay_problems(self) -> list[str]:
        if self.model.subsample < 1:
            return [f"subsample={self.model.subsample:g} (the rows each stage drew are not recorded)"]
        return []

    def _step(self) -> BoostingStep:
        # the multinomial leaf update scales its Newton step by (K - 1) / K (Friedman 2001, algorithm 6)
        k = len(self.classes_) if self.classes_ is not None else 1
        return BoostingStep(
            learning_rate=float(self.model.learning_rate),
            reg_lambda=0.0,
            hessian_scale=k / (k - 1) if k > 2 else 1.0,
        )

    def _check_X(self, X: Any) -> np.ndarray:
        return check_features(X, self.n_features_in_, dtype=np.float32, allow_nan=True)

    def _leaf_nodes(self, X: np.ndarray) -> np.ndarray:
        try:
            return self.model.apply(X).reshape(len(X), -1)
        except ValueError as e:
            raise ValueError(f"X does not suit this {type(self.model).__name__}: {e}") from None

    def _margin(self, X: np.ndarray) -> np.ndarray:
        if isinstance(self.model, GradientBoostingRegressor):
            return self.model.predict(X)
        return self.model.decision_function(X)
