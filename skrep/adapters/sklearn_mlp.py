"""SKLearnMLPAdapter: a fitted sklearn ``MLPClassifier`` (optionally at the end of a Pipeline).

phi(x) is the last hidden layer's activation, recomputed from ``coefs_`` / ``intercepts_`` with
the model's own activation function; the head is the last layer's weights and intercepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.neural_network import MLPClassifier
from sklearn.neural_network._base import ACTIVATIONS

from ..losses import Loss, get_loss
from .base import check_features
from .linear import fitted_final_step

__all__ = ["SKLearnMLPAdapter", "SUPPORTED_MLP"]

SUPPORTED_MLP = (MLPClassifier,)


class SKLearnMLPAdapter:
    """See a fitted ``MLPClassifier`` as a linear head on its last hidden layer.

    Multiclass models have a softmax head (k = n_classes logits), binary ones a logistic head
    (one margin, the logit of ``classes_[1]``), as sklearn's ``out_activation_`` says. Multilabel
    models (several independent sigmoids) are refused. Features and logits are computed in
    float64, so ``features(X) @ weight + bias`` equals ``logits(X)`` exactly and
    ``softmax(logits(X))`` equals ``predict_proba(X)`` up to the model's own float precision.

    Parameters
    ----------
    model : MLPClassifier or Pipeline ending in one
        A fitted model. It is only read.

    Notes
    -----
    sklearn minimizes ``mean loss + alpha / (2 m) * sum ||W||^2`` over every batch of m samples
    (see ``_backprop`` in ``sklearn/neural_network/_multilayer_perceptron.py``). So
    ``penalty_l2(n)`` is ``alpha / n`` for ``solver='lbfgs'`` (one batch of all n samples) and
    ``alpha / batch_size`` for 'sgd' and 'adam' (``batch_size='auto'`` is ``min(200, n)``), the
    expected penalty per step; the intercepts are not penalized.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.neural_network import MLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2000, random_state=0).fit(X, y)
    >>> adapter = SKLearnMLPAdapter(mlp)
    >>> adapter.loss.name, tuple(adapter.weight.shape)
    ('softmax', (8, 3))
    """

    mask = None
    has_bias = True
    device = torch.device("cpu")
    dtype = torch.float64

    def __init__(self, model: Any):
        self.model = model
        self.estimator, self.transform = fitted_final_step(model, SUPPORTED_MLP, "SKLearnMLPAdapter", "coefs_")
        est = self.estimator
        if est.out_activation_ == "softmax":
            self._loss = get_loss("softmax")
        elif est.out_activation_ == "logistic" and len(est.classes_) == 2 and est.n_outputs_ == 1:
            self._loss = get_loss("logistic")
        else:
            raise ValueError(
                "A multilabel MLPClassifier has one independent sigmoid per label, not a softmax or a "
                "single logistic head; skrep explains binary and multiclass MLPClassifier models."
            )
        self.classes_ = np.asarray(est.classes_)
        self._hidden = [
            (np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64))
            for W, b in zip(est.coefs_[:-1], est.intercepts_[:-1], strict=True)
        ]
        self.weight = torch.as_tensor(np.asarray(est.coefs_[-1], dtype=np.float64).copy())
        self.bias = torch.as_tensor(np.asarray(est.intercepts_[-1], dtype=np.float64).copy())
        self.n_features_in_ = est.coefs_[0].shape[0]

    @property
    def loss(self) -> Loss:
        return self._loss

    @property
    def n_outputs(self) -> int:
        return self.weight.shape[1]

    def penalty_l2(self, n_samples: int) -> float | None:
        """The L2 strength: alpha over the samples of one gradient step (see the class notes)."""
        est = self.estimator
        if est.solver == "lbfgs":
            return float(est.alpha) / n_samples
        m = min(200, n_samples) if est.batch_size == "auto" else int(np.clip(est.batch_size, 1, n_samples))
        return float(est.alpha) / m

    def _inputs(self, X: Any) -> np.ndarray:
        return check_features(X, self.n_features_in_, self.transform)

    def features(self, X: Any) -> torch.Tensor:
        a = self._inputs(X)
        activation = ACTIVATIONS[self.estimator.activation]
        for W, b in self._hidden:
            a = a @ W + b
            activation(a)  # in place, as sklearn's own forward pass
        return torch.as_tensor(a)

    def forward(self, X: Any, return_labels: bool = False) -> Any:
        phi = self.features(X)
        out = phi @ self.weight + self.bias
        return (phi, out, None) if return_labels else (phi, out)

    def logits(self, X: Any) -> torch.Tensor:
        return self.forward(X)[1]
