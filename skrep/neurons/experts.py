"""Class experts: a network compressed to a few neurons of one slice (Leino et al. 2018, 3.3.1).

The slice compression keeps the chosen neurons and zeroes the others; read as a binary classifier
for class c it answers "is x of class c?" by ``p_c > sum_{j != c} p_j`` (the paper's projection
``f^c = (f|_c, sum_{j != c} f|_j)`` of the softmax). An *expert* is a compression whose binary
classifier has a better recall for c than the original model's, at about the same precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters import TorchAdapter
from ._autograd import evaluating
from .quantities import check_class
from .slices import Slice

__all__ = ["ClassExpert", "binary_logits", "expert_precision_recall"]


def binary_logits(out: torch.Tensor, c: int) -> torch.Tensor:
    """Logits ``(n, 2)`` of "not c" and "c" from a model's logits ``(n, k)``.

    Their softmax is ``(sum_{j != c} p_j, p_c)``: column 1 wins exactly when ``p_c > 1/2``.

    Examples
    --------
    >>> import torch
    >>> binary_logits(torch.log(torch.tensor([[0.2, 0.5, 0.3]])), 1).softmax(1)
    tensor([[0.5000, 0.5000]])
    """
    if out.ndim != 2 or out.shape[1] < 2 or c >= out.shape[1]:
        raise ValueError(
            f"A class expert reads softmax logits (n, k >= 2) and class {c}; the model returns "
            f"shape {tuple(out.shape)}."
        )
    others = torch.cat([out[:, :c], out[:, c + 1 :]], 1).logsumexp(1)
    return torch.stack([others, out[:, c]], 1)


class ClassExpert(nn.Module):
    """The model with only the masked neurons of a slice kept, as a binary classifier for one class.

    The wrapped model is shared, not copied: its weights are the expert's, and the mask acts only
    inside the expert's forward pass (a hook removed afterwards), so the model itself is unchanged.

    Parameters
    ----------
    model : nn.Module
        The trained network (logits out).
    slice : Slice
        Where the neurons are.
    mask : array-like of bool, shape (n_neurons,)
        True for the neurons kept; the others are set to zero.
    target : int
        The class the expert recognizes.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> expert = ClassExpert(net, Slice("1"), [True] * 3 + [False] * 5, target=2)
    >>> expert(torch.randn(5, 4)).shape  # logits of (not 2, 2)
    torch.Size([5, 2])
    """

    mask: torch.Tensor  # a buffer: moves with .to(device)

    def __init__(self, model: nn.Module, slice: Slice, mask: Any, target: int):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module; got {type(model).__name__}.")
        if not isinstance(slice, Slice):
            raise TypeError(f"slice must be a Slice(module_name); got {type(slice).__name__}.")
        keep = np.asarray(mask)
        if keep.ndim != 1 or keep.dtype != np.bool_:
            raise ValueError(f"mask must be a 1-D boolean array, one entry per neuron; got {keep.dtype} {keep.shape}.")
        self.model = model
        self.slice = slice
        self.target = check_class(target, "target")
        self.register_buffer("mask", torch.from_numpy(keep.copy()))
        self._bound = slice.bind(model)

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        n = self._bound.neurons(t.detach()).shape[1]
        if n != len(self.mask):
            raise ValueError(f"mask has {len(self.mask)} entries but {self._bound.where} has {n} neurons.")
        return t * self._bound.expand(self.mask.to(t), t)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Binary logits ``(n, 2)`` of the compressed model: (not target, target)."""
        with self._bound.capture(edit=self._keep):
            out = self.model(*args, **kwargs)
        return binary_logits(out, self.target)


def expert_precision_recall(expert: ClassExpert, X: Any, y: Any, batch_size: int = 256) -> dict[str, float]:
    """Precision and recall for the expert's class, of the expert and of the original model.

    Both are read as binary classifiers "x is of class c" by ``p_c > 1/2`` (see :func:`binary_logits`).

    Parameters
    ----------
    expert : ClassExpert
        From :meth:`NeuronInfluence.compress <skrep.neurons.NeuronInfluence.compress>`.
    X : array-like, tensor or DataLoader
        Evaluation inputs (held-out data).
    y : array-like of shape (n_samples,)
        Their labels (class indices).
    batch_size : int, default=256

    Returns
    -------
    dict
        ``precision``, ``recall`` (the expert) and ``precision_original``, ``recall_original``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> expert = ClassExpert(net, Slice("1"), np.ones(8, bool), target=0)
    >>> r = expert_precision_recall(expert, np.random.randn(20, 4), np.arange(20) % 3)
    >>> r["recall"] == r["recall_original"]  # nothing masked: the same classifier
    True
    """
    if not isinstance(expert, ClassExpert):
        raise TypeError(f"expert must be a ClassExpert (NeuronInfluence.compress); got {type(expert).__name__}.")
    adapter = TorchAdapter(expert.model, batch_size=batch_size)
    compressed, original = [], []
    with evaluating(expert, grad=False):
        for x, _ in adapter.batches(X):
            compressed.append(expert(**x) if isinstance(x, Mapping) else expert(x))
            original.append(binary_logits(adapter._run(x), expert.target))
    y_arr = np.asarray(y)
    if y_arr.shape != (sum(len(b) for b in compressed),):
        raise ValueError(f"y must hold one label per point of X; got shape {y_arr.shape}.")
    truth = y_arr == expert.target
    out = {}
    for suffix, batches in (("", compressed), ("_original", original)):
        predicted = (torch.cat(batches).argmax(1) == 1).cpu().numpy()
        hits = int((predicted & truth).sum())
        # sklearn's zero_division=0 convention: no positive prediction (or label) scores 0
        out["precision" + suffix] = hits / max(int(predicted.sum()), 1)
        out["recall" + suffix] = hits / max(int(truth.sum()), 1)
    return out
