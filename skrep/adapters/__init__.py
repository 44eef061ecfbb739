"""Adapters: every model seen as ``logits = phi(x) @ weight + bias`` (the LastLayer protocol)."""

from __future__ import annotations

from typing import Any

from .base import LastLayer, encode_labels
from .linear import SUPPORTED_LINEAR, LinearAdapter
from .torch import TorchAdapter

__all__ = ["LastLayer", "LinearAdapter", "TorchAdapter", "encode_labels", "make_adapter"]


def make_adapter(model: Any, **kwargs: Any) -> LastLayer:
    """Return the adapter for ``model`` (an adapter is returned as it is).

    Parameters
    ----------
    model : nn.Module, sklearn linear model or Pipeline ending in one, or an adapter
    **kwargs
        Passed to the adapter (e.g. ``last_layer=`` or ``batch_size=`` for torch models).

    Examples
    --------
    >>> import torch
    >>> make_adapter(torch.nn.Linear(3, 2)).__class__.__name__
    'TorchAdapter'
    """
    if isinstance(model, (TorchAdapter, LinearAdapter)):
        return model
    import torch.nn

    if isinstance(model, torch.nn.Module):
        return TorchAdapter(model, **kwargs)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if isinstance(final, SUPPORTED_LINEAR):
        if kwargs:
            raise TypeError(f"LinearAdapter takes no options; got {sorted(kwargs)}.")
        return LinearAdapter(model)
    if isinstance(model, LastLayer):
        return model
    module = getattr(model, "module_", None)  # skorch's NeuralNet keeps the fitted module here
    if isinstance(module, torch.nn.Module):
        return TorchAdapter(module, **kwargs)
    raise TypeError(
        f"skrep cannot explain a {type(model).__module__}.{type(model).__name__}. Supported: a torch "
        f"nn.Module ending in nn.Linear, sklearn {', '.join(c.__name__ for c in SUPPORTED_LINEAR)} "
        "(alone or at the end of a Pipeline), or an object implementing skrep.adapters.LastLayer."
    )
