"""Losses of a linear head, as functions of the logits.

Every head method needs the same three things of the loss a model was trained with: its value,
its gradient with respect to the logits and its Hessian with respect to the logits (applied to a
vector, so no (n, k, k) tensor is formed). Targets may be hard labels (class indices) or soft
targets (probabilities, e.g. a model's own outputs, as RPS-L2 uses).

Conventions
-----------
- ``softmax``: k >= 2 logits, cross-entropy ``-sum_c y_c log softmax(z)_c``.
- ``logistic``: one margin z per sample (k = 1), ``-y log s(z) - (1 - y) log s(-z)``; class 1 is
  the positive class, the logit of class 0 is ``-z``.
- ``squared``: k >= 1 real outputs, ``0.5 * ||z - y||^2`` (the 1/2 keeps the Hessian the identity).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["Loss", "SoftmaxLoss", "LogisticLoss", "SquaredLoss", "get_loss"]


class Loss:
    """A loss of the logits ``z`` (n, k) against targets; subclasses define the math."""

    name: str = ""
    is_classification: bool = True

    def targets(self, y: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
        """Float targets (n, k) from labels (n,) or from soft targets already (n, k)."""
        raise NotImplementedError

    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (n,) for float targets ``t`` from :meth:`targets`."""
        raise NotImplementedError

    def grad(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dL/dz (n, k)."""
        raise NotImplementedError

    def curvature(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The per-sample Hessian of L in z at ``z``, as a map v (n, k) -> H v (n, k).

        For these three losses it does not depend on the targets. What depends on z only is
        computed once, so repeated products (CG) cost a few elementwise operations each.
        """
        raise NotImplementedError

    def hvp(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-sample Hessian of L in z applied to v: (n, k) -> (n, k)."""
        return self.curvature(z)(v)

    def link(self, z: torch.Tensor) -> torch.Tensor:
        """The model's prediction in target space (probabilities or the outputs themselves)."""
        raise NotImplementedError

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted class index (n,) for classification losses."""
        raise NotImplementedError

    def selector(self, c: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
        """Row vectors a (n, k) with ``<a, z>`` = the explained output for class/output ``c``."""
        return F.one_hot(c.long(), k).to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class SoftmaxLoss(Loss):
    """Cross-entropy of softmax(z) against class labels or probabilities."""

    name = "softmax"

    def targets(self, y, k, dtype):
        if y.ndim == 2:
            return y.to(dtype)
        return F.one_hot(y.long(), k).to(dtype)

    def value(self, z, t):
        return -(t * torch.log_softmax(z, dim=1)).sum(1)

    def grad(self, z, t):
        return torch.softmax(z, dim=1) - t

    def curvature(self, z):
        s = torch.softmax(z, dim=1)

        def apply(v):
            sv = s * v
            return sv - s * sv.sum(-1, keepdim=True)

        return apply

    def link(self, z):
        return torch.softmax(z, dim=1)

    def predict(self, z):
        return z.argmax(1)


class LogisticLoss(Loss):
    """Binary cross-entropy of sigmoid(z) for one margin per sample."""

    name = "logistic"

    def targets(self, y, k, dtype):
        return y.reshape(-1, 1).to(dtype)

    def value(self, z, t):
        # softplus form: stable for large |z|
        return (F.softplus(z) - t * z).sum(1)

    def grad(self, z, t):
        return torch.sigmoid(z) - t

    def curvature(self, z):
        p = torch.sigmoid(z)
        w = p * (1 - p)
        return lambda v: w * v

    def link(self, z):
        return torch.sigmoid(z)

    def predict(self, z):
        return (z[:, 0] > 0).long()

    def selector(self, c, k, dtype):
        # the logit of class 0 is -z, so explaining class 0 flips the sign
        return (2.0 * c.to(dtype) - 1.0).reshape(-1, 1)


class SquaredLoss(Loss):
    """Half the squared error of real outputs."""

    name = "squared"
    is_classification = False

    def targets(self, y, k, dtype):
        return y.reshape(len(y), -1).to(dtype)

    def value(self, z, t):
        return 0.5 * ((z - t) ** 2).sum(1)

    def grad(self, z, t):
        return z - t

    def curvature(self, z):
        return lambda v: v

    def link(self, z):
        return z


_LOSSES = {cls.name: cls for cls in (SoftmaxLoss, LogisticLoss, SquaredLoss)}


def get_loss(loss: str | Loss) -> Loss:
    """Return the :class:`Loss` named ``loss`` ('softmax', 'logistic' or 'squared')."""
    if isinstance(loss, Loss):
        return loss
    if loss not in _LOSSES:
        raise ValueError(f"loss={loss!r} is not supported; use one of {sorted(_LOSSES)}.")
    return _LOSSES[loss]()
