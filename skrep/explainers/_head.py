"""What the head methods that use the model's own training objective (LJE, influence) share."""

from __future__ import annotations

from typing import Any

import torch

from ..adapters import LastLayer
from ..kernels.leaves import with_ones


class HeadObjectiveMixin:
    """The trained head, its features with a bias column, and the model's own L2 penalty.

    For explainers with ``l2`` ('auto' or a number) and ``penalize_bias`` parameters.
    """

    adapter_: LastLayer
    dtype_: torch.dtype
    l2: Any
    penalize_bias: bool

    def _with_bias_column(self, phi: torch.Tensor) -> torch.Tensor:
        """F = [phi, 1] when the head has a bias (a free parameter), else phi."""
        phi = phi.to(self.dtype_)
        return with_ones(phi) if self.adapter_.has_bias else phi

    def _head_theta(self) -> torch.Tensor:
        """The trained head as (d', k) float64, the bias as its last row when it is a parameter."""
        adapter = self.adapter_
        theta = adapter.weight.double().cpu()
        if adapter.has_bias:
            theta = torch.cat([theta, adapter.bias.double().cpu().reshape(1, -1)])
        return theta

    def _resolve_l2(self, n: int) -> float:
        """The penalty of ``mean loss + l2/2 ||w||^2``: read from the model for 'auto' (0 if it has none)."""
        if self.l2 == "auto":
            known = self.adapter_.penalty_l2(n)
            return 0.0 if known is None else float(known)
        return float(self.l2)

    def _penalty_rows(self, d: int) -> torch.Tensor:
        """(d', 1): 1 for penalized rows of theta; the bias row is 0 unless penalize_bias."""
        penalty = torch.ones(d, 1, dtype=torch.float64)
        if self.adapter_.has_bias and not self.penalize_bias:
            penalty[-1] = 0.0
        return penalty
