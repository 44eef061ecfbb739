"""NeuronInfluence: distributional influence of internal neurons (Leino et al. 2018).

``chi_j = E_{x ~ P}[d q(f(x)) / d z_j]`` at ``z = h(x)``: the average partial derivative of a
quantity of interest q (:mod:`~skrep.neurons.quantities`) with respect to the neurons of a slice
(:class:`~skrep.neurons.Slice`), over a distribution of interest P
(:mod:`~skrep.neurons.distributions`). The three are separate objects and compose freely.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._validation import check_number
from ..adapters import TorchAdapter
from ._autograd import check_float_input, evaluating
from .distributions import ClassDoI, PointDoI, PointwiseDoI, doi_rng
from .experts import ClassExpert
from .quantities import ClassQoI, ComparativeQoI, check_qoi, qoi_values
from .slices import Slice

__all__ = ["NeuronInfluence"]


class NeuronInfluence(BaseEstimator):
    """Distributional influence of the neurons of a slice on a quantity of interest.

    Parameters
    ----------
    model : nn.Module or TorchAdapter
        The trained network; never modified or copied (cloning the estimator keeps the object).
    slice : Slice
        Where the neurons are, e.g. ``Slice("layer3")`` (per channel for convolutional
        activations, summed over positions; see :class:`~skrep.neurons.Slice`).
    qoi : ClassQoI, ComparativeQoI or callable
        Quantity of interest: maps the model's output ``(n, k)`` to one value per sample.
    doi : PointDoI, GaussianDoI, LinearPathDoI, ClassDoI or None, default=None
        Distribution of interest; None is ``PointDoI()``, the gradient at each point.
    batch_size : int, default=256
        Samples per forward/backward pass (a point-wise DoI's samples of a point count each).
    verbose : int, default=0
        Progress bars when > 0.

    Attributes
    ----------
    influences_ : ndarray of shape (n_neurons,)
        Influence of every neuron over the distribution of interest: over ``ClassDoI``'s points, or
        the uniform mixture of a point-wise DoI at the points given to ``fit``.
    activations_ : ndarray of shape (n_neurons,)
        Mean activation of every neuron (reduced like the influence) over the same distribution.
    n_neurons_ : int
    slice_ : BoundSlice
        The slice resolved on the model.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skrep.neurons import ClassQoI, Slice
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    >>> ni = NeuronInfluence(net, Slice("1"), ClassQoI(2)).fit(X)
    >>> ni.explain(X[:5]).shape, ni.influences_.shape
    ((5, 8), (8,))
    >>> expert = ni.compress(ni.experts(alpha=3, beta=1))
    >>> expert(torch.as_tensor(X[:5])).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        model: Any,
        slice: Slice,
        qoi: Any,
        doi: Any = None,
        batch_size: int = 256,
        verbose: int = 0,
    ):
        self.model = model
        self.slice = slice
        self.qoi = qoi
        self.doi = doi
        self.batch_size = batch_size
        self.verbose = verbose

    def __sklearn_clone__(self) -> NeuronInfluence:
        # the wrapped model is frozen: a clone shares it instead of deep-copying network weights
        params = self.get_params(deep=False)
        return type(self)(**{k: v if k == "model" else clone(v, safe=False) for k, v in params.items()})

    def _setup(self) -> None:
        module = self.model.module if isinstance(self.model, TorchAdapter) else self.model
        if not isinstance(module, nn.Module):
            raise TypeError(f"NeuronInfluence explains a torch nn.Module; got {type(self.model).__name__}.")
        if not isinstance(self.slice, Slice):
            raise TypeError(f"slice must be a Slice(module_name); got {type(self.slice).__name__}.")
        check_qoi(self.qoi)
        doi = PointDoI() if self.doi is None else self.doi
        if not isinstance(doi, (PointwiseDoI, ClassDoI)):
            raise TypeError(
                "doi must be a distribution of interest: PointDoI(), GaussianDoI(sigma), "
                f"LinearPathDoI(baseline), ClassDoI(X, y, c) or None; got {type(doi).__name__}."
            )
        check_number(self.batch_size, "batch_size", integer=True)
        self.module_ = module
        self.slice_ = self.slice.bind(module)
        self.doi_ = doi

    # ---- estimator API -------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> NeuronInfluence:
        """Resolve the slice and compute the influence over the distribution of interest.

        Parameters
        ----------
        X : array-like, tensor or DataLoader, or None
            Points whose point-wise distributions make the distribution of interest (their uniform
            mixture). Leave it None with a ``ClassDoI``, which carries its own points.
        y : ignored
            Present for the estimator API.

        Returns
        -------
        self
        """
        self._setup()
        doi = self.doi_
        if isinstance(doi, ClassDoI):
            if X is not None:
                raise ValueError(
                    "ClassDoI carries its own points (the class's points of the X, y it was given): call "
                    "fit() without X, or use a point-wise DoI (PointDoI, GaussianDoI, LinearPathDoI) on X."
                )
            X, doi = doi.points(), PointDoI()
        elif X is None:
            raise ValueError(f"fit needs X, the points whose {type(doi).__name__} distributions are averaged.")
        total, n = None, 0
        for batch in self._per_point(X, doi):
            s = batch.sum(0)
            total = s if total is None else total + s
            n += len(batch)
        assert total is not None  # the adapter refuses empty X
        self.influences_, self.activations_ = (total / n).numpy()
        self.n_neurons_ = len(self.influences_)
        return self

    def explain(self, X: Any = None) -> np.ndarray:
        """Influence of every neuron for each point of X, under the DoI at that point.

        Parameters
        ----------
        X : array-like, tensor or DataLoader, or None
            Points to explain. With a ``ClassDoI``, which is one distribution rather than one per
            point, leave it None: the result is then the distribution average ``influences_``.

        Returns
        -------
        ndarray of shape (n_points, n_neurons), or (n_neurons,) with a ClassDoI
            Positive: raising the neuron raises the quantity of interest.
        """
        check_is_fitted(self, "influences_")
        if isinstance(self.doi_, ClassDoI):
            if X is not None:
                raise ValueError(
                    "With ClassDoI the influence is one vector for the class, not one per point: call "
                    "explain() without X, or refit with PointDoI() to explain individual points."
                )
            return self.influences_.copy()
        if X is None:
            raise ValueError("explain needs X, the points to explain.")
        return torch.cat([b[:, 0] for b in self._per_point(X, self.doi_)]).numpy()

    def _adapter(self, doi: PointwiseDoI) -> TorchAdapter:
        # a batch of points becomes batch * n_per_point samples: keep that at about batch_size
        rows = max(1, self.batch_size // doi.n_per_point)
        return TorchAdapter(self.module_, batch_size=rows, verbose=self.verbose)

    def _per_point(self, X: Any, doi: PointwiseDoI) -> Iterator[torch.Tensor]:
        """Per batch of points: (B, 2, n_neurons) expected gradients and activations, float64."""
        adapter, rng = self._adapter(doi), doi_rng(doi)
        with evaluating(self.module_):
            for x, _ in adapter.batches(X):
                yield doi.expectation(lambda xs: self._at_slice(adapter, xs), x, rng, self.batch_size).double().cpu()

    def _at_slice(self, adapter: TorchAdapter, xs: Any) -> torch.Tensor:
        """(s, 2, n_neurons): d q / d z and z, per neuron, for a batch of samples."""
        with self.slice_.capture() as captured:
            out = adapter._run(xs)
        z = captured.tensor
        if not z.is_floating_point():
            raise TypeError(
                f"{self.slice_.where} holds integers (dtype {z.dtype}), which have no gradient; slice a "
                "floating-point tensor (for tokens, the embedding's output)."
            )
        q = qoi_values(self.qoi, out)
        if q.requires_grad:
            (g,) = torch.autograd.grad(q.sum(), z, materialize_grads=True)
        else:  # nothing after the slice reaches the quantity
            g = torch.zeros_like(z)
        return torch.stack([self.slice_.neurons(g), self.slice_.neurons(z.detach())], 1)

    # ---- experts -------------------------------------------------------------------------------
    def experts(self, alpha: int, beta: int = 0) -> np.ndarray:
        """The ``alpha`` most positively and ``beta`` most negatively influential neurons.

        Ranked by ``influences_`` (a class's essence with ``ClassQoI(c)`` and ``ClassDoI(X, y, c)``).
        Fewer are chosen when fewer neurons have an influence of that sign.

        Parameters
        ----------
        alpha, beta : int
            Neurons with the largest positive, and the largest negative, influence.

        Returns
        -------
        ndarray of bool, shape (n_neurons,)
            The mask to pass to :meth:`compress`.
        """
        check_is_fitted(self, "influences_")
        check_number(alpha, "alpha", integer=True, min_val=0, include_boundaries="left")
        check_number(beta, "beta", integer=True, min_val=0, include_boundaries="left")
        if alpha + beta < 1 or alpha + beta > self.n_neurons_:
            raise ValueError(
                f"alpha + beta must be between 1 and the slice's {self.n_neurons_} neurons; got {alpha} + {beta}."
            )
        chi = self.influences_
        order = np.argsort(-chi, kind="stable")
        mask = np.zeros(self.n_neurons_, dtype=bool)
        mask[[j for j in order if chi[j] > 0][:alpha]] = True
        mask[[j for j in order[::-1] if chi[j] < 0][:beta]] = True
        return mask

    def compress(self, mask: Any, target: int | None = None) -> ClassExpert:
        """The model with every neuron of the slice outside ``mask`` zeroed, as a class expert.

        Parameters
        ----------
        mask : array-like of bool, shape (n_neurons,)
            Neurons kept, e.g. from :meth:`experts`.
        target : int or None, default=None
            The expert's class; None: the class of the quantity of interest (``ClassQoI(c)``,
            ``ComparativeQoI(c, _)``) or of a ``ClassDoI``.

        Returns
        -------
        ClassExpert
            A torch module whose output ``(n, 2)`` are the logits of (not target, target); measure it
            with :func:`~skrep.neurons.expert_precision_recall`.
        """
        check_is_fitted(self, "influences_")
        keep = np.asarray(mask)
        if keep.dtype != np.bool_ or keep.shape != (self.n_neurons_,):
            raise ValueError(
                f"mask must be a boolean array with one entry per neuron ({self.n_neurons_},); got "
                f"{keep.dtype} of shape {keep.shape}. experts(alpha, beta) makes one."
            )
        if target is None:
            target = self._class_of_interest()
        return ClassExpert(self.module_, self.slice, keep, target)

    def _class_of_interest(self) -> int:
        if isinstance(self.qoi, ClassQoI):
            return self.qoi.c
        if isinstance(self.qoi, ComparativeQoI):
            return self.qoi.c1
        if isinstance(self.doi_, ClassDoI):
            return self.doi_.c
        raise ValueError("The quantity of interest names no class: pass compress(mask, target=c).")

    # ---- interpretation ------------------------------------------------------------------------
    def visualize(self, neuron: int, X: Any) -> np.ndarray:
        """Input attribution of one neuron for each point of X: what in the input drives it.

        The neuron's activation (reduced over positions like its influence) is differentiated with
        respect to the input, averaged over the point-wise DoI (SmoothGrad with ``GaussianDoI``, the
        path with ``LinearPathDoI``, the plain gradient with ``PointDoI`` and ``ClassDoI``), and
        multiplied by ``x - reference`` (the path's baseline, else zero): gradient times input, or
        Integrated Gradients of the neuron.

        Parameters
        ----------
        neuron : int
            Index of the neuron, in ``[0, n_neurons_)``.
        X : array-like or tensor of floating-point inputs

        Returns
        -------
        ndarray of the shape of X
        """
        check_is_fitted(self, "influences_")
        check_number(neuron, "neuron", integer=True, min_val=0, max_val=self.n_neurons_, include_boundaries="left")
        doi = PointDoI() if isinstance(self.doi_, ClassDoI) else self.doi_
        adapter, rng = self._adapter(doi), doi_rng(doi)
        maps = []
        with evaluating(self.module_):
            for x, _ in adapter.batches(X):
                x = check_float_input(x, "visualize")
                g = doi.expectation(lambda xs: self._neuron_gradient(adapter, xs, neuron), x, rng, self.batch_size)
                maps.append(((x - doi.reference(x)) * g).detach().cpu())
        return torch.cat(maps).numpy()

    def _neuron_gradient(self, adapter: TorchAdapter, xs: torch.Tensor, neuron: int) -> torch.Tensor:
        xs = xs.detach().requires_grad_(True)
        with self.slice_.capture() as captured:
            adapter._run(xs)
        activation = self.slice_.neurons(captured.tensor)[:, neuron]
        (g,) = torch.autograd.grad(activation.sum(), xs, materialize_grads=True)
        return g
