"""BoostingTracIn: TracIn over the boosting rounds of a gradient-boosted tree ensemble.

A boosted ensemble is trained in rounds; round r grows one tree per margin column c and gives
each of its leaves l the shrunk Newton step (see :class:`~skrep.adapters.trees.BoostingStep`)::

    v_l = -eta G_l / (H_l + lambda),   G_l = sum_{j in l} g_j^r,   H_l = sum_{j in l} h_j^r

with g^r, h^r the loss's gradient and curvature in margin c before round r. Removing training
point i from that round moves the leaf by the derivative of the step in i's weight::

    dv_l = (eta g_i^r + v_l h_i^r) / (H_l + lambda)

and changes the loss at a test point t in the same leaf by ``g_t^r dv_l`` to first order, with
g_t^r the test loss's gradient in margin c before round r. TracIn (Pruthi et al. 2020) sums these
over the training run, here every tree::

    value(t, i) = sum_trees [leaf(t) = leaf(i)] g_t^r (eta g_i^r + v_l h_i^r) / (H_l + lambda)

Positive: removing i's contribution to the rounds would raise the test loss (a proponent).
This is what tree-influence calls BoostIn (Brophy et al. 2023), whose leaf derivative
multiplies ``v_l h_i`` by eta a second time.

Both sides are leaf indicators weighted per tree, :class:`~skrep.kernels.leaves.LeafMatrix` with
``values``, so scoring is the same co-occurrence kernel as the other tree methods. ``fit`` replays
the rounds from the trees themselves (the margins before round r are sums of the earlier trees'
leaves) and refuses a model whose leaf values the replay does not reproduce: one trained on other
rows or labels, with sample weights, row subsampling or clipped steps.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_number
from ..adapters.trees import BoostingStep, TreeEnsembleAdapter
from ..kernels import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_DENSE_BYTES, Factored
from ..kernels.leaves import LeafMatrix
from .base import BaseExplainer

__all__ = ["BoostingTracIn"]

_ROWS = 16384  # rows of per-tree margins replayed at once: (rows, n_trees) float64


class BoostingTracIn(BaseExplainer):
    """TracIn over boosting rounds: training points' influence on test losses through the trees they shaped.

    ``value(t, i) = sum_trees [leaf(t) = leaf(i)] g_t (eta g_i + v h_i) / (H + lambda)``, each
    gradient taken at the margins before the tree's round (see the module docstring). Positive: a
    proponent (removing it would raise the test loss). Works on XGBoost (binary:logistic,
    multi:softprob / softmax, reg:squarederror) and sklearn gradient boosting trained on all rows
    without sample weights; the replay of the training is checked against the trees' leaf values.
    ``self_influence()`` is the diagonal, ``sum_trees g_i (eta g_i + v h_i) / (H + lambda)`` at each
    point's own label: large for points the rounds kept pulling toward their own label, the
    signature of a mislabelled example (BoostIn's self-influence).

    Parameters
    ----------
    model : XGBClassifier, XGBRegressor, xgboost.Booster, GradientBoostingClassifier or GradientBoostingRegressor
        The trained ensemble.
    replay_tol : float, default=1e-3
        Largest difference allowed between a leaf value replayed from the training set and the
        model's own, relative to the largest leaf value. ``fit`` raises beyond it.
    target, device, batch_size, block_bytes, max_dense_bytes, n_jobs, verbose
        See :class:`~skrep.explainers.base.BaseExplainer`. ``target`` fixes the label at which
        the test loss is explained (default: ``y`` given to explain, else the prediction).

    Attributes
    ----------
    step_ : BoostingStep
        The leaf rule replayed (learning rate, L2 penalty, Hessian scale).
    replay_error_ : float
        Largest difference between replayed and actual leaf values, relative to the largest leaf.

    Examples
    --------
    >>> import xgboost
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(300, 5, random_state=0)
    >>> model = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)
    >>> tracin = BoostingTracIn(model).fit(X, y)
    >>> tracin.explain(X[:2], y[:2], top_k=3).proponents(3)[0].shape
    (2, 3)
    >>> tracin.self_influence().shape
    (300,)
    """

    _method = "boosting_tracin"
    _explains_loss = True

    def __init__(
        self,
        model: Any,
        replay_tol: float = 1e-3,
        target: Any = None,
        device: str = "auto",
        batch_size: int = 256,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        n_jobs: int | None = None,
        verbose: int = 0,
    ):
        self._store_params(locals())

    def _check_params(self) -> None:
        super()._check_params()
        check_number(self.replay_tol, "replay_tol")

    def _make_adapter(self) -> Any:
        adapter = super()._make_adapter()
        if not isinstance(adapter, TreeEnsembleAdapter):
            raise TypeError(
                f"BoostingTracIn explains gradient-boosted tree ensembles (XGBoost, sklearn GradientBoosting); got "
                f"{type(self.model).__name__}. Use TracIn with training checkpoints for a network."
            )
        self.step_ = adapter.boosting_step()
        return adapter

    # ---- the replay ------------------------------------------------------------------------------
    def _leaf_values(self) -> torch.Tensor:
        """Each leaf's value in its tree's margin column, and 0 for the inactive id: (n_leaves + 1,)."""
        w = self.adapter_.weight.double()
        return torch.cat([w.sum(1), w.new_zeros(1)])  # each leaf has one non-zero column

    def _round_derivatives(self, index: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss gradient g and curvature h, per sample and tree, at the margins before the tree's round.

        index: (n, n_trees) leaf ids; targets: (n, k) as the loss takes them. Both outputs (n, n_trees), float64.
        """
        loss, bias = self.adapter_.loss, self.adapter_.bias.double()
        k = len(bias)
        leaf_values = self._leaf_values()
        n, n_trees = index.shape
        g = torch.empty(n, n_trees, dtype=torch.float64)
        h = torch.empty(n, n_trees, dtype=torch.float64)
        for s in range(0, n, _ROWS):
            adds = leaf_values[index[s : s + _ROWS]].reshape(-1, n_trees // k, k)  # (rows, rounds, k)
            before = bias + adds.cumsum(1) - adds  # margins before each round
            t = targets[s : s + _ROWS, None, :]
            if loss.is_classification:
                p = torch.softmax(before, -1) if loss.name == "softmax" else torch.sigmoid(before)
                g[s : s + _ROWS] = (p - t).reshape(len(adds), n_trees)
                # XGBoost's floor on the Hessian (1e-16) keeps empty-curvature leaves finite
                h[s : s + _ROWS] = (self.step_.hessian_scale * p * (1 - p)).clamp_min(1e-16).reshape(len(adds), n_trees)
            else:
                g[s : s + _ROWS] = (before - t).reshape(len(adds), n_trees)
                h[s : s + _ROWS] = 1.0
        return g, h

    def _targets_of(self, c: torch.Tensor, n: int) -> torch.Tensor:
        k = len(self.adapter_.bias)
        return self.adapter_.loss.targets(c, k, torch.float64).reshape(n, k)

    def _fit_train(self, f: Any, logits: torch.Tensor, y: torch.Tensor, X: Any) -> Factored:
        step: BoostingStep = self.step_
        index = f.index
        g, h = self._round_derivatives(index, self._targets_of(y, len(index)))
        n_slots = f.n_leaves + 1
        G = torch.zeros(n_slots, dtype=torch.float64).index_add_(0, index.reshape(-1), g.reshape(-1))
        H = torch.zeros(n_slots, dtype=torch.float64).index_add_(0, index.reshape(-1), h.reshape(-1))
        denom = H + step.reg_lambda
        replayed = torch.where(denom > 0, -step.learning_rate * G / denom.clamp_min(1e-300), torch.zeros_like(G))
        actual = self._leaf_values()
        err = (replayed - actual)[:-1].abs()
        scale = float(actual.abs().max()) or 1.0
        self.replay_error_ = float(err.max()) / scale if len(err) else 0.0
        if not self.replay_error_ <= self.replay_tol:
            leaf = int(err.argmax())
            where = torch.nonzero(index == leaf)
            tree = int(where[0, 1]) if len(where) else None
            raise ValueError(
                f"Replaying the boosting rounds on this training set does not reproduce the model's leaves: leaf "
                f"{leaf}{'' if tree is None else f' (tree {tree})'} has value {float(actual[leaf]):.6g}, the replay "
                f"gives {float(replayed[leaf]):.6g} (largest difference {self.replay_error_:.3g} of the largest "
                f"leaf; replay_tol={self.replay_tol:g}). Fit BoostingTracIn on exactly the rows and labels the "
                "model was trained on, for a model trained without sample weights."
            )
        d = denom[index]
        derivative = torch.where(d > 0, (step.learning_rate * g + actual[index] * h) / d.clamp_min(1e-300), 0.0)
        return self._embedding(f, derivative)

    def _embedding(self, f: Any, values: torch.Tensor) -> Factored:
        """Rows ``1 (x) leaves``: the leaf indicators of f weighted per tree by ``values`` (n, n_trees)."""
        ones = torch.ones(len(f), 1, dtype=self.dtype_)
        weighted: Any = LeafMatrix(f.index, f.n_leaves, values=values.to(self.dtype_), dtype=self.dtype_)
        return Factored(ones, weighted)

    def _test_side(self, f: Any, c: torch.Tensor, X: Any = None) -> tuple[Factored, None, None]:
        g, _ = self._round_derivatives(f.index, self._targets_of(c, len(f)))
        return self._embedding(f, g), None, None
