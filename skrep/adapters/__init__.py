"""Adapters: every model seen as ``logits = phi(x) @ weight + bias`` (the LastLayer protocol)."""

from __future__ import annotations

from typing import Any

from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

from .base import LastLayer, encode_labels
from .gradient_boosting import GradientBoostingAdapter
from .linear import SUPPORTED_LINEAR, LinearAdapter
from .sklearn_mlp import SUPPORTED_MLP, SKLearnMLPAdapter
from .torch import TorchAdapter
from .trees import TreeEnsembleAdapter
from .xgboost import XGBoostAdapter, is_xgboost_model

__all__ = [
    "GradientBoostingAdapter",
    "LastLayer",
    "LinearAdapter",
    "SKLearnMLPAdapter",
    "TorchAdapter",
    "TreeEnsembleAdapter",
    "XGBoostAdapter",
    "encode_labels",
    "make_adapter",
]


def make_adapter(model: Any, **kwargs: Any) -> LastLayer:
    """Return the adapter for ``model`` (an adapter is returned as it is).

    Parameters
    ----------
    model : nn.Module, sklearn linear model or MLPClassifier (or Pipeline ending in one), XGBoost
        Booster / XGBClassifier / XGBRegressor, sklearn GradientBoostingClassifier / Regressor, or an adapter
    **kwargs
        Passed to the adapter (e.g. ``last_layer=`` or ``batch_size=`` for torch models).

    Examples
    --------
    >>> import torch
    >>> make_adapter(torch.nn.Linear(3, 2)).__class__.__name__
    'TorchAdapter'
    """
    if isinstance(model, (TorchAdapter, LinearAdapter, SKLearnMLPAdapter, TreeEnsembleAdapter)):
        return model
    import torch.nn

    if isinstance(model, torch.nn.Module):
        return TorchAdapter(model, **kwargs)
    if is_xgboost_model(model):
        return XGBoostAdapter(model)
    if isinstance(model, (GradientBoostingClassifier, GradientBoostingRegressor)):
        return GradientBoostingAdapter(model)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if isinstance(final, SUPPORTED_LINEAR):
        if kwargs:
            raise TypeError(f"LinearAdapter takes no options; got {sorted(kwargs)}: pass the model alone.")
        return LinearAdapter(model)
    if isinstance(final, SUPPORTED_MLP):
        if kwargs:
            raise TypeError(f"SKLearnMLPAdapter takes no options; got {sorted(kwargs)}: pass the model alone.")
        return SKLearnMLPAdapter(model)
    if isinstance(model, LastLayer):
        return model
    module = getattr(model, "module_", None)  # skorch's NeuralNet keeps the fitted module here
    if isinstance(module, torch.nn.Module):
        return TorchAdapter(module, **kwargs)
    raise TypeError(
        f"skrep cannot explain a {type(model).__module__}.{type(model).__name__}. Supported: a torch "
        f"nn.Module ending in nn.Linear, sklearn {', '.join(c.__name__ for c in SUPPORTED_LINEAR)} or "
        "MLPClassifier (alone or at the end of a Pipeline), an XGBoost gbtree model, sklearn "
        "GradientBoostingClassifier / Regressor, or an object implementing skrep.adapters.LastLayer."
    )
