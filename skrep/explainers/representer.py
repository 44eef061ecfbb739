"""RepresenterPoints: representer point selection with an L2 refit of the head (Yeh et al. 2018).

Theorem 3.1 of the paper: if theta* is a stationary point of
``(1/n) sum_i L(f_i theta, t_i) + lam ||theta||^2`` then
``theta* = sum_i f_i alpha_i^T`` with ``alpha_i = -1/(2 lam n) dL/dz_i``, so every logit of the
refit head splits over training points: ``z_c(x_t) = sum_i alpha_ic <f_i, f_t>``.

As in the paper, the head is refit on the model's own outputs (t_i = softmax / sigmoid of the
given logits, or the outputs themselves for regression), so the refit imitates the given model;
the bias is a constant feature of the head and penalized with it, which keeps the decomposition
exact. The refit is solved to a stationary point by Newton-CG (see ``skrep.kernels.head``).
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_choice, check_number
from ..kernels import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_DENSE_BYTES, Factored
from ..kernels.head import HeadObjective, newton_solve
from ..kernels.leaves import class_features, with_ones
from .base import BaseExplainer
from .sensitivity import SensitivityMapsMixin

__all__ = ["RepresenterPoints"]


class RepresenterPoints(SensitivityMapsMixin, BaseExplainer):
    """Representer points with an L2-regularized head refit (RPS-L2, Yeh et al. 2018).

    ``values[t, i] = alpha_ic <f_i, f_t>`` for the explained class c, where f = [phi, 1] and
    ``alpha_i = -1/(2 lam n) dL/dz_i`` at the refit head. Positive: training point i excites
    class c for test point t (a proponent); negative: it inhibits it.

    Parameters
    ----------
    model : nn.Module, sklearn linear model, Pipeline ending in one, or a skrep adapter
        The trained model.
    lam : float, default=3e-3
        L2 strength of the refit, ``(1/n) sum L + lam ||theta||^2``. Smaller is more faithful to
        the model, larger is better conditioned; tune it with ``GridSearchCV`` on ``score``.
    refit_on : {'model', 'labels'}, default='model'
        Targets of the refit. 'model': the model's own outputs (softmax / sigmoid probabilities,
        or the outputs for regression), so the refit head imitates the given model and the
        values explain *it*; labels are then used only by ``self_influence``. 'labels': the
        training labels, the paper's "explainable model" of its dataset-debugging study, whose
        values also say how hard each point's own label pulls.
    target : None or label, default=None
        Class explained; None for each test point's predicted class.
    max_iter : int, default=100
        Newton steps for the refit.
    tol : float, default=1e-10
        Stop when the largest entry of the refit objective's gradient is at most ``tol``.
    device, batch_size, block_bytes, max_dense_bytes, n_jobs, random_state, verbose
        See :class:`~skrep.explainers.base.BaseExplainer`.

    Attributes
    ----------
    alpha_ : Tensor of shape (n_train, k)
        Representer weights.
    head_ : Tensor of shape (d + 1, k)
        The refit head (last row: bias), float64.
    grad_norm_ : float
        Largest gradient entry of the refit objective at ``head_``.
    n_iter_ : int
        Newton steps taken.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.linear_model import LogisticRegression
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16
    >>> model = LogisticRegression(max_iter=1000).fit(X[:500], y[:500])
    >>> rps = RepresenterPoints(model).fit(X[:500], y[:500])
    >>> E = rps.explain(X[500:505], top_k=3)
    >>> E.proponents(3)[0].shape
    (5, 3)
    >>> rps.score(X[500:600]) > 0.9
    True
    """

    _method = "representer"

    def __init__(
        self,
        model: Any,
        lam: float = 3e-3,
        refit_on: str = "model",
        target: Any = None,
        max_iter: int = 100,
        tol: float = 1e-10,
        device: str = "auto",
        batch_size: int = 256,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        n_jobs: int | None = None,
        random_state: Any = None,
        verbose: int = 0,
    ):
        self._store_params(locals())

    def _check_params(self) -> None:
        super()._check_params()
        check_number(self.lam, "lam")
        check_number(self.max_iter, "max_iter", integer=True)
        check_number(self.tol, "tol")
        check_choice(self.refit_on, "refit_on", ("model", "labels"))

    def _features(self, phi: torch.Tensor) -> torch.Tensor:
        return with_ones(phi.to(self.dtype_))

    def _fit_train(self, f: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, X: Any) -> Factored:
        loss = self.adapter_.loss
        n, k = len(f), logits.shape[1]
        f64 = f.double()
        targets = loss.link(logits.double()) if self.refit_on == "model" else loss.targets(y, k, torch.float64)
        # (1/n) sum L + lam ||theta||^2 is HeadObjective with l2 = 2 lam on every entry; with a
        # mask the stationary head is mask * sum_i f_i alpha_i^T, and each class meets its own features
        self.mask_ = self._head_mask(f.shape[1])
        obj = HeadObjective(f64, targets, loss, l2=2.0 * self.lam, mask=self.mask_, fast_features=f)
        theta, self.grad_norm_, self.n_iter_ = newton_solve(
            obj,
            torch.zeros(f.shape[1], k, dtype=torch.float64),
            tol=self.tol,
            max_iter=self.max_iter,
            what="representer head refit",
        )
        alpha = loss.grad(f64 @ theta, targets) / (-2.0 * self.lam * n)
        self.head_ = theta
        self.alpha_ = alpha.to(self.dtype_)
        return Factored(self.alpha_, f)

    def _test_side(self, f: torch.Tensor, c: torch.Tensor, X: Any = None):
        sel = self.adapter_.loss.selector(c, self.alpha_.shape[1], f.dtype)
        return Factored(sel, class_features(f, self.mask_, c)), None, None
