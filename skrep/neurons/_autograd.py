"""Running a network for its gradients: eval mode with autograd on, and the rows of a batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def evaluating(module: nn.Module, grad: bool = True) -> Iterator[None]:
    """Eval mode (so samples of a batch are independent) with autograd on or off; restores the flag."""
    was_training = module.training
    module.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        module.train(was_training)


def n_rows(x: Any) -> int:
    """Samples in a model-ready batch (a tensor or a dict of tensors)."""
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)


def rows(x: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a model-ready batch."""
    if isinstance(x, Mapping):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def check_float_input(x: Any, what: str) -> torch.Tensor:
    """``x`` when it is a floating tensor; a TypeError naming ``what`` needs it otherwise."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = "a dict of tensors" if isinstance(x, Mapping) else f"a tensor of dtype {getattr(x, 'dtype', type(x))}"
        raise TypeError(
            f"{what} needs floating-point model inputs (it moves or differentiates them); got {kind}. "
            "Token ids can be neither; for a token model use PointDoI, on a slice at or after the embedding."
        )
    return x
