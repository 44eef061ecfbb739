"""Sensitivity-map decomposition (Yeh et al. 2018, section 4.4).

A representer decomposition writes the explained logit as a sum over training points of terms
that are linear in the test point's head features, ``z_c(x_t) = sum_i <v_i, f(x_t)> (+ prior)``,
so its input gradient (the sensitivity map) splits the same way::

    d z_c / d x_t = sum_i J(x_t)^T v_i[:d],     J = d phi / d x_t,

one map per training point: ``alpha_ic d<f_i, f_t>/dx_t`` for RPS (``v_i = alpha_ic f_i``) and
``d<W_i[:, c], f_t>/dx_t`` for LJE. The bias entry of f is a constant and has no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ..adapters import LastLayer, TorchAdapter
from ..adapters.torch import _as_tensor
from ..kernels import Dense, Embedding, Factored, Sum, pair_block
from ..neurons import GaussianDoI, PointDoI, Slice
from ..neurons._autograd import check_float_input, evaluating
from ..neurons.distributions import doi_rng

__all__ = ["SensitivityMapsMixin"]


class SensitivityMapsMixin:
    """``sensitivity_maps`` for explainers whose values are linear in the test features (RPS, LJE).

    The value of training point i for a test point, as a function of its features f_t, is read
    off the explainer's own test side: evaluated at the unit vectors it gives the direction
    ``v_i = d value_i / d f_t``, so every solver and storage form of the method is covered. That
    costs nothing for RPS and LJE's explicit solver; with LJE's CG solver it costs d + 1 CG solves
    per explained class (as many as explaining d + 1 test points).
    """

    adapter_: LastLayer
    train_embedding_: Embedding
    n_train_: int
    dtype_: torch.dtype
    batch_size: int
    _sample_shape_: tuple[int, ...] | None
    _targets: Callable[..., torch.Tensor]
    _test_side: Callable[..., tuple[Embedding, torch.Tensor | None, torch.Tensor | None]]

    def sensitivity_maps(
        self, x_t: Any, indices: Any, smoothgrad: GaussianDoI | None = None, *, target: Any = None
    ) -> np.ndarray:
        """Per-training-point sensitivity maps of the explained logit at test inputs.

        Parameters
        ----------
        x_t : array-like or tensor
            One test input (the shape of a training sample) or a batch of them.
        indices : array-like of int, shape (m,) or (n_test, m)
            Training points whose maps are wanted: the same for every test input, or one row per
            test input (e.g. ``Explanation.proponents(4)[0]``).
        smoothgrad : GaussianDoI or None, default=None
            Average each map over Gaussian noise around the test input (SmoothGrad, as in the
            paper), e.g. ``GaussianDoI(sigma=0.15 * (X.max() - X.min()), n_samples=50)``.
        target : None or label, keyword-only
            Class whose logit is decomposed; None: the explainer's ``target`` (default the
            predicted class).

        Returns
        -------
        ndarray of shape (n_test, m, *input_shape), or (m, *input_shape) for one test input
            Summed over every training point, the maps give the input gradient of the decomposed
            logit ``sum_i values[t, i]`` (for LJE with a penalty, ``Explanation.prior`` is the part
            no training point owns and is not in the sum).

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skrep import RepresenterPoints
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
        >>> rps = RepresenterPoints(net).fit(X, np.arange(60) % 3)
        >>> rps.sensitivity_maps(X[0], [0, 1, 2, 3]).shape
        (4, 4)
        """
        check_is_fitted(self, "train_embedding_")
        adapter = self.adapter_
        if not isinstance(adapter, TorchAdapter):
            raise TypeError(
                "sensitivity_maps differentiates a torch model's features with respect to its input; "
                f"this explainer wraps a {type(adapter).__name__}."
            )
        if smoothgrad is None:
            doi: PointDoI | GaussianDoI = PointDoI()
        elif isinstance(smoothgrad, GaussianDoI):
            doi = smoothgrad
        else:
            raise TypeError(
                f"smoothgrad must be None or a GaussianDoI(sigma, n_samples); got {type(smoothgrad).__name__}."
            )
        x, single = self._test_inputs(x_t, adapter)
        idx = self._indices(indices, len(x))
        c = self._targets(adapter.logits(x), target, len(x))
        d = adapter.weight.shape[0]
        sides = {int(k): self._unit_side(int(k)) for k in torch.unique(c)}
        head = Slice(adapter.head_name, at="input").bind(adapter.module)
        rng = doi_rng(doi)
        maps = []
        with evaluating(adapter.module):
            for t in range(len(x)):
                test, offset = sides[int(c[t])]
                values = pair_block(test, _take(self.train_embedding_, idx[t]))  # (d', m)
                if offset is not None:
                    values = values + offset[:, None]
                directions = values[:d].T.to(adapter.device, adapter.dtype)  # (m, d): d value_i / d phi_t

                def vjp(xs: torch.Tensor, V: torch.Tensor = directions) -> torch.Tensor:
                    return self._input_gradients(adapter, head, xs, V)

                maps.append(doi.expectation(vjp, x[t : t + 1].to(adapter.device), rng, self.batch_size)[0])
        out = torch.stack(maps).cpu().numpy()
        return out[0] if single else out

    def _test_inputs(self, x_t: Any, adapter: TorchAdapter) -> tuple[torch.Tensor, bool]:
        x = check_float_input(_as_tensor(x_t, adapter.dtype), "sensitivity_maps")
        shape = self._sample_shape_
        if shape is not None and tuple(x.shape) == shape:
            return x[None], True
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"x_t must be one test input of shape {shape} or a batch (n, *{shape}); got shape {tuple(x.shape)}."
            )
        return x, False

    def _indices(self, indices: Any, n: int) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim == 1:
            idx = np.tile(idx, (n, 1))
        if idx.ndim != 2 or len(idx) != n or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"indices must be training-point indices, shape (m,) or one row per test input ({n}, m); "
                f"got {idx.dtype} of shape {idx.shape}."
            )
        if idx.min() < 0 or idx.max() >= self.n_train_:
            raise ValueError(
                f"indices must lie in [0, {self.n_train_}), the training points; got {idx.min()}..{idx.max()}."
            )
        return idx

    def _unit_side(self, c: int) -> tuple[Embedding, torch.Tensor | None]:
        """The test side at the unit feature vectors: paired with training row i it gives ``v_i``."""
        if isinstance(self.train_embedding_, Sum):
            raise TypeError("sensitivity_maps needs a single (not summed) training embedding.")
        d_full = self.train_embedding_.shape[1]
        eye = torch.eye(d_full, dtype=self.dtype_)
        test, offset, _ = self._test_side(eye, torch.full((d_full,), c, dtype=torch.long))
        return test, offset

    def _input_gradients(self, adapter: TorchAdapter, head: Any, xs: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``J(x)^T V[i]`` for every sample x of xs and row i of V: (len(xs), m, *x's shape)."""
        xs = xs.detach().requires_grad_(True)
        with head.capture() as captured:
            adapter._run(xs)
        phi = captured.tensor
        step = max(1, self.batch_size // len(xs))  # about batch_size input-sized gradients at a time
        grads = [
            torch.autograd.grad(
                phi, xs, V[s : s + step, None].expand(-1, *phi.shape), retain_graph=True, is_grads_batched=True
            )[0]
            for s in range(0, len(V), step)
        ]
        return torch.cat(grads).transpose(0, 1)


def _take(e: Embedding, idx: np.ndarray) -> Embedding:
    """The rows ``idx`` of an embedding."""
    i = torch.as_tensor(idx)
    if isinstance(e, Factored):
        return Factored(e.a[i], e.b[i])
    assert isinstance(e, Dense)
    return Dense(e.u[i])
