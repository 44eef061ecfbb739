"""TracIn: influence traced through training checkpoints (Pruthi et al., NeurIPS 2020).

``value(t, i) = sum_k eta_k <grad L(w_k; x_i, y_i), grad L(w_k; x_t, y_t)>`` over saved
checkpoints w_k with the learning rates eta_k in force after them. Positive: a gradient step on
training point i lowered the loss at the test point (a proponent).

Every gradient here is kept in the form that makes the inner products cheap (shared/DESIGN.md
section 4):

- ``params="head"``: the head's per-sample gradient is the rank-1 ``(p - y) (x) [phi, 1]``
  (bias included), so the score of a pair is ``<r_i, r_t> <f_i, f_t>``, no autograd at all.
- any ``nn.Linear`` among the chosen parameters, applied once per sample to a vector: its
  gradient is also rank-1, ``delta (x) [x, 1]`` with delta the gradient of the loss in the
  layer's output (appendix F), captured with hooks from one batched backward pass.
- every other parameter (convolutions, embeddings, recurrent weights): per-sample gradients
  from ``torch.func`` (vmap over grad), kept dense.

Random projections (appendix E) precompute low-dimensional sketches of the training gradients
once at fit: 'gaussian' multiplies the full gradient by G with N(0, 1/D) entries, unbiased for
inner products; 'fc-fast' projects a Linear layer's factors separately,
``(G1 delta) (x) (G2 x)`` with sqrt(D) x sqrt(D) factors, in O((m + n) sqrt(D)).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._validation import check_choice, check_number, check_params_selection
from ..adapters import TorchAdapter
from ..adapters.torch_grads import labelled_batches, per_sample_gradients, plan_groups
from ..explanation import Explanation
from ..kernels import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_DENSE_BYTES, Dense, Factored, Sum, flatten, pair_rows
from ..kernels.index import InnerProductIndex
from .base import BaseExplainer

__all__ = ["TracIn", "load_checkpoints"]


class TracIn(BaseExplainer):
    """TracInCP: checkpoint influence of training points on the loss at test points.

    Parameters
    ----------
    model : nn.Module
        The network (its architecture; its current weights are used to predict labels when
        ``y`` is not given to ``explain``).
    checkpoints : list of state dicts or paths
        Saved during training; paths are read with ``torch.load(weights_only=True)``.
    learning_rates : float or list of float
        The learning rate in force after each checkpoint (one value for all).
    params : 'head', 'all' or list of str, default='head'
        Parameters whose gradients are traced: the final nn.Linear, every parameter, or the
        named modules (as in ``model.named_modules()``) and/or parameters.
    projection_dim : int or None, default=None
        Dimension of the random projection of the training gradients (None: exact).
    projection : {'gaussian', 'fc-fast'}, default='gaussian'
    index : None, 'faiss' or 'hnsw', default=None
        Build an approximate nearest-neighbour index over the training gradients at fit, used
        by ``explain(top_k=...)`` for low-latency proponents and opponents.
    target, device, batch_size, block_bytes, max_dense_bytes, n_jobs, random_state, verbose
        See :class:`~skrep.explainers.base.BaseExplainer`. ``target`` fixes the label at which
        the test loss is explained (default: ``y`` given to explain, else the prediction).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    >>> tr = TracIn(net, [net.state_dict()], 0.1, params="all").fit(X, y)
    >>> tr.explain(X[:2], y[:2]).values.shape
    (2, 30)
    """

    _method = "tracin"
    _explains_loss = True

    def __init__(
        self,
        model: Any,
        checkpoints: Any = None,
        learning_rates: Any = 1.0,
        params: Any = "head",
        projection_dim: int | None = None,
        projection: str = "gaussian",
        index: str | None = None,
        target: Any = None,
        device: str = "auto",
        batch_size: int = 256,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        n_jobs: int | None = None,
        random_state: Any = None,
        verbose: int = 0,
    ):
        self._store_params(locals())

    # ---- parameters ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"TracIn needs a torch nn.Module; got {type(self.model).__name__}.")
        if (
            not isinstance(self.checkpoints, Sequence)
            or isinstance(self.checkpoints, (str, bytes))
            or not self.checkpoints
        ):
            raise ValueError(
                f"checkpoints must be a non-empty list of state dicts or file paths; got {self.checkpoints!r:.60}."
            )
        rates = self.learning_rates
        if isinstance(rates, numbers.Real):
            rates = [rates] * len(self.checkpoints)
        elif isinstance(rates, (str, bytes)) or not isinstance(rates, Iterable):
            raise TypeError(f"learning_rates must be a number, or a list of one per checkpoint; got {rates!r:.60}.")
        else:
            rates = list(rates)
        if len(rates) != len(self.checkpoints):
            raise ValueError(
                f"learning_rates must be one number or one per checkpoint ({len(self.checkpoints)}); "
                f"got {self.learning_rates!r}."
            )
        for r in rates:
            check_number(r, "learning_rates")
        self._rates = [float(r) for r in rates]
        if self.projection_dim is not None:
            check_number(self.projection_dim, "projection_dim", integer=True)
        check_choice(self.projection, "projection", ("gaussian", "fc-fast"))
        check_choice(self.index, "index", (None, "faiss", "hnsw"))
        check_params_selection(self.params)

    # ---- fit / explain ---------------------------------------------------------------------------
    def _fit_train(self, f, logits, y, X):
        self.checkpoints_ = load_checkpoints(self.model, self.checkpoints)
        self._plan_groups()
        self._projections = self._draw_projections()
        emb = self._embed(X, y)
        self.index_ = None
        if self.index is not None:
            self.index_ = InnerProductIndex(
                flatten(emb).float().numpy(),
                self.index,
                random_state=check_random_state(self.random_state).randint(2**31),
            )
        return emb

    def _test_side(self, f, c, X=None):
        return self._embed(X, c), None, None

    def self_influence(self) -> np.ndarray:
        """sum_k eta_k ||g_i(w_k)||^2 for each training point, at its own label: (n_train,).

        High self-influence marks points the model had to learn by themselves, the typical
        signature of a mislabelled example (TracIn paper, section 4.2).
        """
        check_is_fitted(self, "train_embedding_")
        return pair_rows(self.train_embedding_, self.train_embedding_).double().numpy()

    def explain(
        self, X: Any, y: Any = None, *, top_k: int | None = None, target: Any = None, client: Any = None
    ) -> Explanation:
        """As :meth:`BaseExplainer.explain`; with an ``index``, top-k comes from the index (in this process)."""
        if self.index is None or top_k is None:
            return super().explain(X, y, top_k=top_k, target=target, client=client)
        check_is_fitted(self, "train_embedding_")
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}.")
        phi, logits, labels = self._forward(X, fitted=True)
        c = self._explained(logits, target, y if y is not None else labels, len(phi))
        q = flatten(self._embed(X, c)).float().numpy()
        pi, pv = self.index_.search(q, top_k)
        oi, ov = self.index_.search(-q, top_k)
        top = {"pro_index": pi, "pro_value": pv, "opp_index": oi, "opp_value": -ov}
        return Explanation(top=top, n_train=self.n_train_, target=self._labels(c), method=self._method)

    # ---- gradients -------------------------------------------------------------------------------
    def _plan_groups(self) -> None:
        """Head only (closed form), or the traced parameters split into Linear and other groups."""
        self._head_only = self.params == "head"
        if not self._head_only:
            self._groups = plan_groups(self.model, self.params)

    def _draw_projections(self) -> dict:
        """Random matrices, drawn once from random_state (shared by train and test sides)."""
        D = self.projection_dim
        if D is None:
            return {}
        rng = torch.Generator().manual_seed(int(check_random_state(self.random_state).randint(2**31)))
        shapes = self._gradient_shapes()
        out: dict[str, Any] = {}
        for key, (k, d) in shapes.items():
            if self.projection == "fc-fast" and key != "other":
                s = max(1, math.isqrt(D - 1) + 1)  # ceil(sqrt(D))
                out[key] = (
                    torch.randn(k, s, generator=rng) / math.sqrt(s),
                    torch.randn(d, s, generator=rng) / math.sqrt(s),
                )
            else:
                out[key] = torch.randn(k * d, D, generator=rng) / math.sqrt(D)
        return out

    def _gradient_shapes(self) -> dict:
        if self._head_only:
            head = self._torch_adapter.head
            return {"head": (head.out_features, head.in_features + (head.bias is not None))}
        return {key: (k, d) for key, k, d in self._groups.shapes}

    def _embed(self, X: Any, labels: torch.Tensor) -> Sum:
        """Per-checkpoint gradient embeddings of the points X at ``labels``, scaled by sqrt(eta)."""
        work = copy.deepcopy(self.model)  # the user's model keeps its own weights
        terms = []
        for state, eta in zip(self.checkpoints_, self._rates, strict=True):
            work.load_state_dict(state)
            adapter = TorchAdapter(
                work,
                last_layer=self._torch_adapter.head_name,
                loss=self.adapter_.loss,
                batch_size=self.batch_size,
                verbose=self.verbose,
            )
            groups = (
                self._head_groups(adapter, X, labels)
                if self._head_only
                else per_sample_gradients(
                    work, self._groups, labelled_batches(adapter.batches(X), labels), adapter.loss
                )
            )
            for key, emb in groups.items():
                terms.append(_scale(self._project(key, emb), math.sqrt(eta)))
        return Sum(tuple(terms))

    def _head_groups(self, adapter: TorchAdapter, X: Any, labels: torch.Tensor) -> dict:
        phi, logits = adapter.forward(X)
        loss = adapter.loss
        r = loss.grad(logits, loss.targets(labels, logits.shape[1], logits.dtype))
        if adapter.has_bias:
            phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype)], 1)
        return {"head": Factored(r, phi)}

    def _project(self, key: str, emb):
        P = self._projections.get(key)
        if P is None:
            return emb
        if isinstance(P, tuple):  # fc-fast: (G1 delta) (x) (G2 x), flattened for indexes and Sums alike
            return Factored(emb.a @ P[0].to(emb.a.dtype), emb.b @ P[1].to(emb.b.dtype))
        full = emb.u.flatten(1) if isinstance(emb, Dense) else (emb.a[:, :, None] * emb.b[:, None, :]).flatten(1)
        return Dense((full @ P.to(full.dtype))[:, None, :])


def _scale(emb, c: float):
    return Factored(emb.a * c, emb.b) if isinstance(emb, Factored) else Dense(emb.u * c)


def load_checkpoints(model: nn.Module, checkpoints: list) -> list[dict]:
    """Read and check every checkpoint against the model's parameters, once.

    Paths are read with ``torch.load(weights_only=True)`` (no code runs). A missing, unreadable
    or mismatched checkpoint raises an error that names the file and the parameter.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}
    states = []
    for j, ckpt in enumerate(checkpoints):
        name = f"checkpoint {j}"
        if isinstance(ckpt, (str, os.PathLike)):
            name = f"checkpoint {os.fspath(ckpt)!r}"
            if not os.path.exists(ckpt):
                raise FileNotFoundError(f"{name} does not exist.")
            try:
                ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                # torch's own message advises weights_only=False, which would run the code in the file
                found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
                what = f"a pickled {found.group(1)}, not only tensors" if found else "no torch state dict"
                raise ValueError(
                    f"{name} holds {what}, so it was not loaded: skrep reads checkpoints with "
                    "torch.load(weights_only=True), which never runs code stored in a file. Save each checkpoint "
                    "as the model's state dict: torch.save(model.state_dict(), path)."
                ) from e
            except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
                raise ValueError(f"{name} could not be read as a torch state dict ({type(e).__name__}: {e}).") from e
        if isinstance(ckpt, dict) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
            ckpt = ckpt["state_dict"]
        if not isinstance(ckpt, dict):
            raise TypeError(f"{name} is a {type(ckpt).__name__}, not a state dict.")
        missing = sorted(set(expected) - set(ckpt))
        extra = sorted(set(ckpt) - set(expected))
        if missing or extra:
            raise ValueError(f"{name} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}.")
        for k, shape in expected.items():
            if tuple(ckpt[k].shape) != tuple(shape):
                raise ValueError(
                    f"{name} does not match the model: parameter {k!r} has shape "
                    f"{tuple(ckpt[k].shape)}, the model's has {tuple(shape)}."
                )
        states.append({k: v.detach().cpu().clone() for k, v in ckpt.items()})
    return states
