"""What the tree-ensemble adapters share: leaf ids -> a linear head on leaf indicators.

A boosted ensemble's raw output is ``margin_c(x) = base_c + sum_{trees t of class c} value_t[leaf_t(x)]``:
exactly ``phi(x) @ weight + bias`` with phi(x) the one-hot of every tree's leaf (a
:class:`~skrep.kernels.leaves.LeafMatrix`), ``weight[leaf, c]`` the leaf's value in its tree's class
column and ``bias`` the base margin. With several classes each tree feeds one class, so ``mask``
marks the one free entry of each leaf's row. Subclasses read the trees of one library
(:mod:`skrep.adapters.xgboost`, :mod:`skrep.adapters.gradient_boosting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..kernels.leaves import LeafMatrix
from ..losses import Loss

__all__ = ["BoostingStep", "TreeEnsembleAdapter"]


@dataclass(frozen=True)
class BoostingStep:
    """How each boosting round set its trees' leaf values, for replaying the training.

    A round fits one tree per margin column; the leaf l of that tree gets the shrunk Newton step
    ``value_l = -learning_rate * G_l / (H_l + reg_lambda)``, with G_l and H_l the sums over the
    training points in the leaf of the loss's gradient and of ``hessian_scale`` times its
    per-column curvature (``p (1 - p)``; 1 for the squared error), at the margins before the round.
    """

    learning_rate: float
    reg_lambda: float
    hessian_scale: float


class TreeEnsembleAdapter:
    """Base of the tree adapters (not used directly).

    A subclass calls :meth:`_set_trees` once, and implements ``_check_X(X)``, ``_leaf_nodes(X)``
    ((n, n_trees) node ids) and ``_margin(X)`` ((n, k) raw output of the model itself).
    """

    has_bias = True  # the base margin: a constant feature, free for every class
    device = torch.device("cpu")
    dtype = torch.float32
    classes_: np.ndarray | None
    n_features_in_: int
    _loss: Loss

    def _set_trees(
        self,
        leaves: list[np.ndarray],
        values: list[np.ndarray],
        tree_class: np.ndarray,
        k: int,
        tree_round: np.ndarray,
    ) -> None:
        """Number every leaf of every tree globally and build the head.

        Parameters
        ----------
        leaves : per tree, the node ids of its leaves
        values : per tree, the leaves' values (as they enter the margin)
        tree_class : (n_trees,) the class (margin column) each tree adds to
        k : number of margin columns
        tree_round : (n_trees,) the boosting round that grew each tree
        """
        sizes = [len(v) for v in leaves]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        n_nodes = max((int(v.max()) + 1 for v in leaves if len(v)), default=1)
        lookup = np.full((len(leaves), n_nodes), -1, dtype=np.int64)
        weight = np.zeros((offsets[-1], k))
        mask = np.zeros((offsets[-1], k))
        for t, (ids, vals) in enumerate(zip(leaves, values, strict=True)):
            cols = np.arange(offsets[t], offsets[t + 1])
            lookup[t, ids] = cols
            weight[cols, tree_class[t]] = vals
            mask[cols, tree_class[t]] = 1.0
        self._lookup = torch.as_tensor(lookup)
        self.n_leaves_ = int(offsets[-1])
        self.n_trees_ = len(leaves)
        self._weight = torch.as_tensor(weight)
        self._mask = torch.as_tensor(mask) if k > 1 else None
        self.tree_class_ = np.asarray(tree_class, dtype=np.int64)
        self.tree_round_ = np.asarray(tree_round, dtype=np.int64)

    @property
    def weight(self) -> torch.Tensor:
        return self._weight

    @property
    def bias(self) -> torch.Tensor:
        return self._bias

    @property
    def mask(self) -> torch.Tensor | None:
        return self._mask

    @property
    def loss(self) -> Loss:
        return self._loss

    def leaf_matrix(self, nodes: np.ndarray) -> LeafMatrix:
        """The leaf indicators of samples whose trees reached ``nodes`` (n, n_trees)."""
        ids = torch.as_tensor(np.asarray(nodes, dtype=np.int64))
        cols = self._lookup[torch.arange(self.n_trees_), ids]
        if bool((cols < 0).any()):
            raise RuntimeError("A sample reached a node that is not a leaf; the model changed since it was read.")
        return LeafMatrix(cols, self.n_leaves_, dtype=self.dtype)

    def forward(self, X: Any, return_labels: bool = False) -> Any:
        X = self._check_X(X)
        phi = self.leaf_matrix(self._leaf_nodes(X))
        out = torch.as_tensor(np.asarray(self._margin(X), dtype=np.float64).reshape(len(phi), -1))
        return (phi, out, None) if return_labels else (phi, out)

    def features(self, X: Any) -> LeafMatrix:
        return self.leaf_matrix(self._leaf_nodes(self._check_X(X)))

    def logits(self, X: Any) -> torch.Tensor:
        return self.forward(X)[1]

    def penalty_l2(self, n_samples: int) -> float | None:
        raise NotImplementedError

    def boosting_step(self) -> BoostingStep:
        """The rule each round set its leaves by; ValueError when this model's training cannot be replayed.

        Replaying needs one tree per margin column and round, in round order, each leaf a plain
        shrunk Newton step on every training point (no row subsampling, clipping or L1 penalty).
        """
        k = 1 if self._mask is None else self._mask.shape[1]
        rounds = len(self.tree_class_) // k
        regular = (
            len(self.tree_class_) == rounds * k
            and np.array_equal(self.tree_class_, np.tile(np.arange(k), rounds))
            and np.array_equal(self.tree_round_, np.repeat(np.arange(rounds), k))
        )
        problems = self._replay_problems() + ([] if regular else ["rounds that do not grow one tree per class"])
        if problems:
            raise ValueError(
                f"The boosting rounds of this model cannot be replayed: it was trained with {'; '.join(problems)}. "
                "Explain it with RepresenterPoints, RepresenterLJE or InfluenceFunctions instead, which need "
                "only the trained trees."
            )
        return self._step()

    def _replay_problems(self) -> list[str]:
        raise NotImplementedError

    def _step(self) -> BoostingStep:
        raise NotImplementedError

    def _check_X(self, X: Any) -> Any:
        raise NotImplementedError

    def _leaf_nodes(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def _margin(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def _check_bias(self, stated: np.ndarray, probe: Any) -> None:
        """Set the bias from what the model states, after checking it against the model's own output."""
        leaf_sum = (self.features(probe).double() @ self._weight).numpy()
        found = np.asarray(self._margin(self._check_X(probe)), dtype=np.float64).reshape(len(leaf_sum), -1) - leaf_sum
        scale = max(1.0, float(np.abs(found).max()))
        if not np.allclose(found, stated.reshape(1, -1), rtol=0, atol=1e-4 * scale):
            raise ValueError(
                f"The {type(self).__name__} could not reproduce this model's output: its stated base margin "
                f"{np.round(stated, 6).tolist()} differs from the model's own ({np.round(found[0], 6).tolist()}). "
                "Please report this model's configuration."
            )
        self._bias = torch.as_tensor(stated.astype(np.float64).reshape(-1))
