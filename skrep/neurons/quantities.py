"""Quantities of interest (QoI): the scalar of the model's output an influence explains.

Any callable mapping the model's output (a batch of logits, ``(n, k)``) to one value per sample
``(n,)`` is a quantity of interest; :class:`ClassQoI` and :class:`ComparativeQoI` are the two of
Leino et al. 2018 (sections 3.1 and 3.2).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ClassQoI", "ComparativeQoI"]


def check_class(c: Any, name: str) -> int:
    """``c`` as an int when it is a class index; a ValueError naming ``name`` otherwise."""
    if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0:
        raise ValueError(f"{name} must be a class index (a non-negative int); got {c!r}.")
    return int(c)


def _column(out: torch.Tensor, c: int, qoi: Any) -> torch.Tensor:
    if out.ndim != 2 or c >= out.shape[1]:
        raise ValueError(
            f"{qoi!r} reads output column {c}, but the model returns shape {tuple(out.shape)}; "
            "pass a class index below the number of outputs."
        )
    return out[:, c]


class ClassQoI:
    """The model's output (logit) for class ``c``: explains why a point is (not) of that class.

    Parameters
    ----------
    c : int
        Output column (class index).

    Examples
    --------
    >>> import torch
    >>> ClassQoI(1)(torch.tensor([[0.0, 2.0], [1.0, -1.0]]))
    tensor([ 2., -1.])
    """

    def __init__(self, c: int):
        self.c = check_class(c, "c")

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        """``out[:, c]``."""
        return _column(out, self.c, self)

    def __repr__(self) -> str:
        return f"ClassQoI({self.c})"


class ComparativeQoI:
    """``logit[c1] - logit[c2]``: why class ``c1`` rather than ``c2`` (Leino et al. 2018, 3.2).

    Parameters
    ----------
    c1, c2 : int
        The class explained and the class it is contrasted with.

    Examples
    --------
    >>> import torch
    >>> ComparativeQoI(1, 0)(torch.tensor([[0.0, 2.0], [1.0, -1.0]]))
    tensor([ 2., -2.])
    """

    def __init__(self, c1: int, c2: int):
        self.c1 = check_class(c1, "c1")
        self.c2 = check_class(c2, "c2")
        if self.c1 == self.c2:
            raise ValueError(f"ComparativeQoI needs two different classes; got c1 = c2 = {self.c1}.")

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        """``out[:, c1] - out[:, c2]``."""
        return _column(out, self.c1, self) - _column(out, self.c2, self)

    def __repr__(self) -> str:
        return f"ComparativeQoI({self.c1}, {self.c2})"


def check_qoi(qoi: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``qoi`` when callable; a TypeError otherwise."""
    if not callable(qoi):
        raise TypeError(
            f"qoi must be a quantity of interest: ClassQoI(c), ComparativeQoI(c1, c2) or a callable "
            f"mapping the model output to one value per sample; got {type(qoi).__name__}."
        )
    return qoi


def qoi_values(qoi: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``qoi(out)``, checked to be one real value per sample."""
    q = qoi(out)
    n = len(out)
    if not isinstance(q, torch.Tensor) or q.shape != (n,) or not q.is_floating_point():
        got = f"shape {tuple(q.shape)}, dtype {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(
            f"The quantity of interest {qoi!r} must return a float tensor of shape ({n},), one value per "
            f"sample; it returned {got}. Reduce it per sample, e.g. lambda out: out[:, 3]."
        )
    return q
