"""XGBoostAdapter: an XGBoost tree ensemble as an exact linear head on leaf indicators.

phi(x) is the one-hot of the leaf each tree sends x to, as XGBoost itself finds it
(``predict(pred_leaf=True)``: missing values and categorical splits follow the model's own
rules); weight holds the leaf values; bias is the base margin from the saved configuration,
which XGBoost 2+ estimates from the labels (never assumed 0), checked against the model's own
``predict(output_margin=True)``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.exceptions import NotFittedError

from ..losses import get_loss
from .base import check_features
from .trees import BoostingStep, TreeEnsembleAdapter

__all__ = ["XGBoostAdapter", "is_xgboost_model"]

_LOSSES = {
    "binary:logistic": "logistic",
    "binary:logitraw": "logistic",
    "multi:softprob": "softmax",
    "multi:softmax": "softmax",
    "reg:squarederror": "squared",
}


def is_xgboost_model(model: Any) -> bool:
    """Whether ``model`` is an XGBoost Booster or scikit-learn wrapper."""
    module = type(model).__module__ or ""
    return module.startswith("xgboost")


class XGBoostAdapter(TreeEnsembleAdapter):
    """See a fitted XGBoost tree ensemble as ``margin = phi(x) @ weight + bias``.

    Supported: ``xgboost.Booster``, ``XGBClassifier`` and ``XGBRegressor`` with the gbtree
    booster (random-forest style ``num_parallel_tree`` included) and the objectives
    binary:logistic / binary:logitraw (logistic loss on the margin), multi:softprob /
    multi:softmax (softmax; each tree feeds one class, which ``mask`` records) and
    reg:squarederror. A scikit-learn wrapper fitted with early stopping is read up to its
    ``best_iteration``, as its ``predict`` does.

    Parameters
    ----------
    model : xgboost.Booster, XGBClassifier or XGBRegressor
        A fitted model. It is only read.

    Attributes
    ----------
    n_leaves_ : int
        Columns of phi: the leaves of all trees.
    n_trees_ : int

    Examples
    --------
    >>> import numpy as np, xgboost
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(200, 5, random_state=0)
    >>> model = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)
    >>> adapter = XGBoostAdapter(model)
    >>> phi, margin = adapter.forward(X)
    >>> bool(np.allclose((phi.double() @ adapter.weight + adapter.bias).numpy(), margin.numpy(), atol=1e-4))
    True
    """

    def __init__(self, model: Any):
        import xgboost

        self.model = model
        if isinstance(model, xgboost.XGBModel):
            if not hasattr(model, "_Booster"):
                raise NotFittedError(f"This {type(model).__name__} is not fitted yet: fit it before explaining it.")
            booster = model.get_booster()
            best = getattr(model, "best_iteration", None)
            if best is not None and best + 1 < booster.num_boosted_rounds():
                booster = booster[: best + 1]  # what the wrapper's predict uses
        elif isinstance(model, xgboost.Booster):
            booster = model
        else:
            raise TypeError(
                f"XGBoostAdapter takes an xgboost Booster, XGBClassifier or XGBRegressor; got {type(model).__name__}."
            )
        self.booster = booster
        config = json.loads(booster.save_config())["learner"]
        objective = config["objective"]["name"]
        booster_name = config["gradient_booster"]["name"]
        if booster_name != "gbtree":
            raise ValueError(
                f"booster={booster_name!r} is not supported: skrep explains gbtree ensembles "
                "(dart rescales trees at prediction time; gblinear has no trees)."
            )
        if objective not in _LOSSES:
            raise ValueError(
                f"objective={objective!r} is not supported; skrep explains {', '.join(_LOSSES)} (a loss "
                "whose gradient and Hessian in the margin skrep knows)."
            )
        params = config["learner_model_param"]
        if int(params.get("num_target", "1")) > 1:
            raise ValueError("Multi-target XGBoost models are not supported: explain one target per model.")
        tree_param = config["gradient_booster"]["tree_train_param"]
        self._reg_alpha = float(tree_param.get("alpha", tree_param.get("reg_alpha", 0.0)))
        self._tree_param = tree_param
        self._objective = config["objective"]
        self._parallel_trees = int(config["gradient_booster"].get("gbtree_model_param", {}).get("num_parallel_tree", 1))
        self._loss = get_loss(_LOSSES[objective])
        n_class = int(params.get("num_class", "0"))
        k = n_class if self._loss.name == "softmax" else 1
        if self._loss.is_classification:
            classes = getattr(model, "classes_", None)
            self.classes_ = np.asarray(classes) if classes is not None else np.arange(max(k, 2))
        else:
            self.classes_ = None
        self.n_features_in_ = booster.num_features()
        self._feature_names = booster.feature_names
        self._read_trees(booster, k)
        base = np.asarray(json.loads(params["base_score"].replace("E", "e")), dtype=np.float64).reshape(-1)
        if objective == "binary:logistic":  # stated as a probability
            base = np.log(base / (1.0 - base))
        # a sample with every feature missing follows the default branches: a probe needing no data
        self._check_bias(np.broadcast_to(base, (k,)), np.full((1, self.n_features_in_), np.nan))

    def _read_trees(self, booster: Any, k: int) -> None:
        model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]
        leaves, values = [], []
        for tree in model["trees"]:
            if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
                raise ValueError("Vector-leaf trees (multi_strategy='multi_output_tree') are not supported.")
            left = np.asarray(tree["left_children"])
            ids = np.flatnonzero(left == -1)
            leaves.append(ids)
            values.append(np.asarray(tree["split_conditions"], dtype=np.float64)[ids])
        # iteration_indptr[r] is the first tree of round r
        sizes = np.diff(np.asarray(model["iteration_indptr"], dtype=np.int64)).astype(np.int64)
        rounds = np.repeat(np.arange(len(sizes)), sizes)
        self._set_trees(leaves, values, np.asarray(model["tree_info"], dtype=np.int64), k, rounds)

    def penalty_l2(self, n_samples: int) -> float | None:
        """None: the trained leaves minimize no penalized objective of their own.

        ``reg_lambda`` penalizes each round's step before shrinkage, not the final leaf values, and
        boosting drives the ensemble toward a minimizer of the unpenalized training loss; LJE and
        influence functions then take ``l2=0`` unless given one. ``reg_alpha`` (an L1 penalty)
        is refused.
        """
        if self._reg_alpha:
            raise ValueError(f"This model has reg_alpha={self._reg_alpha:g}, an L1 penalty with no Hessian; pass l2=.")
        return None

    def _replay_problems(self) -> list[str]:
        tp, problems = self._tree_param, []
        if float(tp.get("subsample", 1)) < 1:
            problems.append(f"subsample={float(tp['subsample']):g} (the rows each round drew are not recorded)")
        if float(tp.get("max_delta_step", 0)) > 0:
            problems.append(f"max_delta_step={float(tp['max_delta_step']):g} (clipped leaf steps)")
        if self._reg_alpha:
            problems.append(f"reg_alpha={self._reg_alpha:g} (an L1 penalty on the steps)")
        if self._parallel_trees > 1:
            problems.append(f"num_parallel_tree={self._parallel_trees} (a forest per round)")
        spw = float(self._objective.get("reg_loss_param", {}).get("scale_pos_weight", 1))
        if spw != 1:
            problems.append(f"scale_pos_weight={spw:g} (reweighted gradients)")
        return problems

    def _step(self) -> BoostingStep:
        # XGBoost's softmax takes 2 p (1 - p) as each column's Hessian (multiclass_obj.cu)
        return BoostingStep(
            learning_rate=float(self._tree_param["eta"]),
            reg_lambda=float(self._tree_param["lambda"]),
            hessian_scale=2.0 if self._loss.name == "softmax" else 1.0,
        )

    def _check_X(self, X: Any) -> Any:
        if hasattr(X, "columns") and hasattr(X, "dtypes"):  # a DataFrame: XGBoost reads its dtypes and names
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} columns but the model was fitted with {self.n_features_in_}.")
            return X
        return check_features(X, self.n_features_in_, dtype=np.float32, allow_nan=True)

    def _dmatrix(self, X: Any) -> Any:
        import xgboost

        try:
            if hasattr(X, "columns"):
                return xgboost.DMatrix(X, enable_categorical=True)
            return xgboost.DMatrix(X, feature_names=self._feature_names)
        except (ValueError, TypeError) as e:
            raise ValueError(f"X cannot be read by this XGBoost model: {e}") from None

    def _predict(self, X: Any, **kw: Any) -> np.ndarray:
        import xgboost

        try:
            return self.booster.predict(self._dmatrix(X), validate_features=True, **kw)
        except (ValueError, xgboost.core.XGBoostError) as e:
            raise ValueError(f"X does not match this XGBoost model: {str(e).splitlines()[0]}") from None

    def _leaf_nodes(self, X: Any) -> np.ndarray:
        return self._predict(X, pred_leaf=True).reshape(len(X), -1)

    def _margin(self, X: Any) -> np.ndarray:
        return self._predict(X, output_margin=True)
