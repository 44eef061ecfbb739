"""LinearAdapter: sklearn linear models (optionally at the end of a Pipeline), phi(x) = x."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ..losses import Loss, get_loss
from .base import check_features

__all__ = ["LinearAdapter", "SUPPORTED_LINEAR"]

SUPPORTED_LINEAR = (LogisticRegression, SGDClassifier, Ridge, LinearRegression)


class LinearAdapter:
    """See a fitted sklearn linear model as a linear head on its own inputs.

    Supported: ``LogisticRegression`` (binary: logistic loss; multiclass: softmax),
    ``SGDClassifier(loss='log_loss')`` (binary), ``Ridge`` and ``LinearRegression`` (squared
    loss, one or several targets). A ``Pipeline`` whose last step is one of these is accepted:
    phi(x) is the output of the preceding steps.

    Parameters
    ----------
    model : estimator or Pipeline
        A fitted model. It is only read.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> X, y = load_iris(return_X_y=True)
    >>> adapter = LinearAdapter(LogisticRegression(max_iter=500).fit(X, y))
    >>> adapter.loss.name, tuple(adapter.weight.shape)
    ('softmax', (4, 3))
    """

    mask = None

    def __init__(self, model: BaseEstimator):
        self.model = model
        self.estimator, self.transform = fitted_final_step(model, SUPPORTED_LINEAR, "LinearAdapter", "coef_")
        est = self.estimator
        coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
        self.classes_ = getattr(est, "classes_", None)
        if isinstance(est, SGDClassifier):
            if est.loss != "log_loss":
                raise ValueError(
                    f"SGDClassifier(loss={est.loss!r}) is not twice differentiable; refit it with "
                    "loss='log_loss', which skrep explains."
                )
            if coef.shape[0] > 1:
                raise ValueError(
                    "A multiclass SGDClassifier is one-vs-rest: its head has no softmax loss. "
                    "Use LogisticRegression for a multinomial model."
                )
        if self.classes_ is not None:
            self._loss = get_loss("logistic" if coef.shape[0] == 1 else "softmax")
        else:
            self._loss = get_loss("squared")
        intercept = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64), (coef.shape[0],))
        self.weight = torch.as_tensor(coef.T.copy())
        self.bias = torch.as_tensor(intercept.copy())
        self.has_bias = bool(getattr(est, "fit_intercept", True))
        self.n_features_in_ = coef.shape[1]

    @property
    def loss(self) -> Loss:
        return self._loss

    @property
    def n_outputs(self) -> int:
        return self.weight.shape[1]

    device = torch.device("cpu")
    dtype = torch.float64

    def penalty_l2(self, n_samples: int) -> float | None:
        """The model's L2 strength in skrep's units; a ValueError when its objective has another form."""
        est = self.estimator
        name = type(est).__name__
        if getattr(est, "class_weight", None) is not None:
            raise ValueError(
                f"{name}(class_weight=...) weighs samples unequally: its objective is not a mean loss "
                "plus an L2 penalty. Pass l2= explicitly to use an approximation."
            )
        if isinstance(est, LogisticRegression):
            C = getattr(est, "C_", [getattr(est, "C", None)])[0] if hasattr(est, "C_") else est.C
            if getattr(est, "l1_ratio", 0.0) not in (0, 0.0, None) or est.penalty not in ("l2", "deprecated"):
                raise ValueError(f"{name} has an L1 / elastic-net penalty, which has no Hessian; pass l2= explicitly.")
            if est.solver == "liblinear" and est.fit_intercept:
                raise ValueError(
                    f"{name}(solver='liblinear') penalizes the intercept through intercept_scaling; "
                    "refit with another solver or pass l2= and penalize_bias=True."
                )
            return 0.0 if np.isinf(C) else 1.0 / (float(C) * n_samples)
        if isinstance(est, Ridge):
            if np.ndim(est.alpha) != 0:
                raise ValueError(f"{name} has one alpha per target; skrep's l2 is one number. Pass l2= explicitly.")
            return float(est.alpha) / n_samples
        if isinstance(est, SGDClassifier):
            if est.penalty != "l2":
                raise ValueError(f"SGDClassifier(penalty={est.penalty!r}) is not an L2 penalty; pass l2= explicitly.")
            return float(est.alpha)
        return 0.0

    def _inputs(self, X: Any) -> np.ndarray:
        return check_features(X, self.n_features_in_, self.transform)

    def forward(self, X: Any, return_labels: bool = False) -> Any:
        X = self._inputs(X)
        phi = torch.as_tensor(X)
        out = torch.as_tensor(
            np.asarray(
                self.estimator.decision_function(X)
                if hasattr(self.estimator, "decision_function")
                else self.estimator.predict(X),
                dtype=np.float64,
            )
        )
        out = out.reshape(len(X), -1)
        return (phi, out, None) if return_labels else (phi, out)

    def features(self, X: Any) -> torch.Tensor:
        return torch.as_tensor(self._inputs(X))

    def logits(self, X: Any) -> torch.Tensor:
        return self.forward(X)[1]


def fitted_final_step(model: Any, supported: tuple[type, ...], adapter: str, fitted: str) -> tuple[Any, Any]:
    """``(estimator, transform)``: the model (or a Pipeline's last step) and the steps before it.

    Refuses an estimator of a type ``adapter`` does not support, or one without the fitted
    attribute ``fitted``.
    """
    est, transform = model, None
    if isinstance(model, Pipeline):
        est, transform = model.steps[-1][1], (None if len(model.steps) == 1 else model[:-1])
    if not isinstance(est, supported):
        raise TypeError(
            f"{adapter} supports {', '.join(c.__name__ for c in supported)} "
            f"(optionally as the last step of a Pipeline); got {type(est).__name__}."
        )
    check_is_fitted(est, fitted, msg=f"This {type(est).__name__} is not fitted yet: fit it before explaining it.")
    return est, transform
