"""BaseExplainer: the sklearn-estimator shape every skrep method shares.

A subclass defines how a model's head features become *embeddings* (shared/DESIGN.md
section 4): ``_fit_train`` builds the training side once, ``_test_side`` the test side for the
explained class; scoring, top-k, reconstruction and self-influence come from the kernels.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._validation import check_number
from ..adapters import LastLayer, TorchAdapter, encode_labels, make_adapter
from ..explanation import Explanation
from ..kernels import Embedding, pair_block, pair_rows, resolve_device, total
from ..parallel import all_scores, topk_scores
from ..store import read_store, write_store

__all__ = ["BaseExplainer"]


def _decomposes_output(explainer: BaseExplainer) -> bool:
    """True where the values add up to an output (``reconstruct``, ``score``), not to a change of loss."""
    if explainer._explains_loss:
        raise AttributeError(
            f"{type(explainer).__name__} explains a change of test loss, which its values do not add up to, "
            "so it has no reconstruct() or score() (those measure how well representer values rebuild the "
            "model's logits). To grid-search it, pass a scoring, e.g. one built on skrep.metrics.loo_correlation."
        )
    return True


class BaseExplainer(BaseEstimator):
    """Base class of the training-point explainers (not used directly).

    Subclasses list their parameters in ``__init__`` (sklearn convention) and implement
    ``_fit_train(f, logits, y)`` and ``_test_side(f, c)``.

    Common parameters
    -----------------
    model : nn.Module, sklearn linear model, or a skrep adapter
        The trained model; never modified or copied (cloning the explainer keeps the object).
    target : None or label
        Class explained: None for each test point's predicted class.
    device : 'auto', 'cpu' or 'cuda'
        Where the score kernels run.
    batch_size : int
        Forward-pass batch size for array inputs to torch models.
    block_bytes : int
        Memory budget of one (test x train) score block.
    max_dense_bytes : int
        Largest dense (n_test, n_train) result ``explain`` will return without ``top_k``.
    n_jobs : int or None
        Chunks of the training set that ``explain`` scores at once (threads, or the backend of
        an enclosing ``joblib.parallel_backend``; -1: all cores). The result does not depend on
        it (see :mod:`skrep.parallel`).
    random_state : int, RandomState or None
        For methods with random choices.
    verbose : int
        Progress bars when > 0.
    """

    _method = ""
    _sample_shape_: tuple[int, ...] | None = None
    _explains_loss = False  # IF / TracIn explain a loss at the label y; RPS / LJE a class's logit

    # ---- sklearn plumbing --------------------------------------------------------------------
    def _store_params(self, values: dict[str, Any]) -> None:
        """Store every ``__init__`` argument as given (sklearn convention), from ``locals()``."""
        for name in self._get_param_names():
            setattr(self, name, values[name])

    def __sklearn_clone__(self) -> BaseExplainer:
        # the wrapped model is frozen: a clone shares it instead of deep-copying network weights
        params = self.get_params(deep=False)
        return type(self)(**{k: v if k == "model" else clone(v, safe=False) for k, v in params.items()})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        tags.target_tags.required = True
        return tags

    @property
    def _torch_adapter(self) -> TorchAdapter:
        """The adapter, for methods that work on a network's parameters (they admit torch models only)."""
        assert isinstance(self.adapter_, TorchAdapter)
        return self.adapter_

    def _make_adapter(self) -> LastLayer:
        if isinstance(self.model, nn.Module):
            return TorchAdapter(self.model, batch_size=self.batch_size, verbose=self.verbose)
        return make_adapter(self.model)

    def _check_params(self) -> None:
        for name in ("batch_size", "block_bytes", "max_dense_bytes"):
            check_number(getattr(self, name), name, integer=True)
        if self.n_jobs is not None and (
            isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, numbers.Integral) or self.n_jobs == 0
        ):
            raise ValueError(f"n_jobs must be None, -1 or a non-zero integer; got {self.n_jobs!r}.")

    # ---- inputs ----------------------------------------------------------------------------------
    def _forward(self, X: Any, fitted: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        shape = _sample_shape(X)
        if fitted and shape is not None and self._sample_shape_ is not None and shape != self._sample_shape_:
            # sklearn's wording for the width, then the full sample shapes (images, sequences)
            width = f"X has {shape[0] if shape else 0} features, but {type(self).__name__} is expecting " + (
                f"{self._sample_shape_[0] if self._sample_shape_ else 0} features as input: "
            )
            raise ValueError(
                f"{width}samples of shape {shape}, fitted on samples of shape {self._sample_shape_}; "
                "pass data with the training data's layout."
            )
        phi, logits, labels = self.adapter_.forward(X, return_labels=True)
        if not fitted:
            self._sample_shape_ = shape
            if shape is not None and len(shape) == 1:
                self.n_features_in_ = shape[0]
        return phi, logits, labels

    def _features(self, phi: torch.Tensor) -> torch.Tensor:
        """Head features f as the method sees them (e.g. with a constant column for the bias)."""
        return phi.to(self.dtype_)

    def _head_mask(self, d: int) -> torch.Tensor | None:
        """The adapter's mask of free head entries for features of width d, float64.

        A bias row appended to the features (d = mask rows + 1) is free for every class.
        """
        mask = self.adapter_.mask
        if mask is None:
            return None
        mask = mask.double().cpu()
        if d == mask.shape[0] + 1:
            mask = torch.cat([mask, torch.ones(1, mask.shape[1], dtype=mask.dtype)])
        return mask

    def _labels(self, c: torch.Tensor) -> np.ndarray:
        """Class labels (as the model names them) for class indices; as given otherwise."""
        classes = self.adapter_.classes_
        return c.numpy() if classes is None else np.asarray(classes)[c.numpy()]

    def _targets(self, logits: torch.Tensor, target: Any, n: int) -> torch.Tensor:
        loss = self.adapter_.loss
        if target is None:
            target = self.target
        if target is None:
            if loss.is_classification:
                return loss.predict(logits)
            if logits.shape[1] == 1:
                return torch.zeros(n, dtype=torch.long)
            raise ValueError(
                f"The model has {logits.shape[1]} outputs: pass target= (an output index) to choose the one to explain."
            )
        if isinstance(target, torch.Tensor):
            target = target.detach().cpu().numpy()
        t = np.full(n, target) if np.ndim(target) == 0 else np.array(target)
        if loss.is_classification:
            if t.shape != (n,):
                raise ValueError(f"target must be one label or one per test point ({n}); got shape {t.shape}.")
            return encode_labels(t, self.adapter_.classes_, name="target")
        if t.shape != (n,) or t.dtype.kind not in "iu" or t.min() < 0 or t.max() >= logits.shape[1]:
            raise ValueError(f"target must be output indices in [0, {logits.shape[1]}), one or one per test point.")
        return torch.as_tensor(t, dtype=torch.long)

    # ---- estimator API ---------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None, *, store: str | os.PathLike | None = None) -> BaseExplainer:
        """Compute the training-side factors.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Training inputs, in the layout the model takes. None with ``store``: reopen it.
        y : array-like of shape (n_samples,)
            Training labels (targets for regression). Optional when X is a DataLoader that
            yields ``(x, y)`` batches.
        store : path or None
            A folder for the fitted training-side arrays (see :mod:`skrep.store`). With X, they
            are written there (atomically) and memory-mapped back, so ``explain`` streams them
            from disk. Without X, a store written earlier, possibly by another process, is
            reopened instead of fitting; it is refused if it was written for another model or
            other parameters, or is damaged.

        Returns
        -------
        self
        """
        previous = self.__dict__.copy()
        try:
            if X is None:
                if store is None:
                    raise ValueError(
                        f"{type(self).__name__}.fit needs X, the training inputs (or store=path to reopen a store)."
                    )
                self._check_params()
                self.__dict__.update(read_store(self, store))
                self.device_ = resolve_device(self.device)  # the writer's device may not exist here
                return self
            self._fit(X, y)
            if store is not None:
                self.__dict__.update(write_store(self, store))  # the arrays, memory-mapped from the store
            return self
        except BaseException:
            # a failed or interrupted fit leaves the explainer as it was, never half-refit
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise

    def _fit(self, X: Any, y: Any) -> BaseExplainer:
        self._check_params()
        self.device_ = resolve_device(self.device)
        adapter = self._make_adapter()
        self.adapter_ = adapter
        phi, logits, labels = self._forward(X, fitted=False)
        if y is None:
            y = labels
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None: fit needs y, the "
                "training labels (or a DataLoader whose batches are (x, y))."
            )
        y_arr = np.asarray(y)
        if y_arr.ndim == 0 or len(y_arr) != len(phi):
            raise ValueError(
                f"y has {y_arr.size if y_arr.ndim == 0 else len(y_arr)} entries but X has "
                f"{len(phi)} samples; pass one label per training sample."
            )
        self.y_ = encode_labels(y_arr, adapter.classes_)
        k = logits.shape[1]
        if adapter.classes_ is None and not (self.y_.ndim == 1 and k == 1 or self.y_.shape[1:] == (k,)):
            raise ValueError(
                f"y has shape {tuple(y_arr.shape)} but the model has {k} outputs; pass y of shape "
                f"(n_samples,{' ' + str(k) if k > 1 else ''})."
            )
        if adapter.classes_ is not None:
            self.classes_ = adapter.classes_
        self.dtype_ = torch.float64 if phi.dtype == torch.float64 else torch.float32
        self.n_train_ = len(phi)
        f = self._features(phi)
        self.train_features_ = f
        self.train_embedding_ = self._fit_train(f, logits, self.y_, X)
        self.train_total_ = total(self.train_embedding_)
        return self

    def explain(
        self, X: Any, y: Any = None, *, top_k: int | None = None, target: Any = None, client: Any = None
    ) -> Explanation:
        """Values of every training point (or the top-k) for each test point.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Test inputs.
        y : array-like or None
            Test labels. Methods that explain a loss (TracIn, influence functions) explain it at
            these labels (default: the predicted ones); methods that decompose a logit ignore it.
        top_k : int or None
            Keep only the k strongest proponents and opponents per test point, streaming over
            training blocks (memory O(n_test * k)). None: the dense (n_test, n_train) matrix,
            refused above ``max_dense_bytes``.
        target : None, label or array-like of labels
            Overrides the ``target`` parameter for this call.
        client : dask.distributed.Client or None
            Score the training chunks on this Dask cluster (they are sent once and reused by
            later calls). Inside ``joblib.parallel_backend("dask")`` its client is used. The
            result equals the single-process one exactly.

        Returns
        -------
        Explanation
        """
        check_is_fitted(self, "train_embedding_")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}.")
        phi, logits, labels = self._forward(X, fitted=True)
        if y is not None:
            y_arr = np.asarray(y)
            if y_arr.ndim == 0 or len(y_arr) != len(phi):
                raise ValueError(
                    f"y must hold one label per test point ({len(phi)}); got {y!r:.60}. (top_k and target "
                    "are keyword arguments: explain(X, top_k=10).)"
                )
        c = self._explained(logits, target, y if y is not None else labels, len(phi))
        test, offset, prior = self._test_side(self._features(phi), c, X)
        kw = dict(
            offset=offset,
            device=self.device_,
            block_bytes=self.block_bytes,
            n_jobs=self.n_jobs,
            client=client,
            verbose=self.verbose,
        )
        if top_k is None:
            values = all_scores(test, self.train_embedding_, max_dense_bytes=self.max_dense_bytes, **kw)
            dense, top = values.numpy(), None
        else:
            tk = topk_scores(test, self.train_embedding_, top_k, **kw)
            dense = None
            top = {name: getattr(tk, name).numpy() for name in ("pro_index", "pro_value", "opp_index", "opp_value")}
        loss = self.adapter_.loss
        if self._explains_loss:  # the explained output is the test loss; values do not decompose it
            recon = None
            output = loss.value(logits.double(), loss.targets(c, logits.shape[1], torch.float64))
        else:
            recon = self._reconstruct(test, offset, prior).numpy()
            output = (logits * loss.selector(c, logits.shape[1], logits.dtype)).sum(1)
        return Explanation(
            values=dense,
            top=top,
            n_train=self.n_train_,
            target=self._labels(c),
            reconstruction=recon,
            prior=None if prior is None else prior.numpy(),
            output=output.double().numpy(),
            method=self._method,
        )

    def _explained(self, logits: torch.Tensor, target: Any, y: Any, n: int) -> torch.Tensor:
        """What each test point's explanation is about.

        A class index, or, for the loss of a regression model, the target values.
        """
        if not self._explains_loss:
            return self._targets(logits, target, n)
        if self.adapter_.loss.is_classification:
            if target is None and self.target is None and y is not None:  # the labels given to explain
                return encode_labels(np.asarray(y), self.adapter_.classes_, name="y")
            return self._targets(logits, target, n)
        if y is None:
            raise ValueError(
                f"{type(self).__name__} explains the test loss of a regression model at its targets: pass y."
            )
        return encode_labels(np.asarray(y), None)

    def _reconstruct(self, test: Embedding, offset: torch.Tensor | None, prior: torch.Tensor | None) -> torch.Tensor:
        """sum_i value(t, i) + prior, in float64, from the summed training embedding."""
        recon = pair_block(test.to("cpu", torch.float64), self.train_total_)[:, 0]
        if offset is not None:
            recon = recon + self.n_train_ * offset.double()
        if prior is not None:
            recon = recon + prior.double()
        return recon

    def self_influence(self) -> np.ndarray:
        """Each training point's value for itself, explaining its own label: (n_train,).

        Large values flag points that the model leans on to fit their own label, the usual
        sign of a mislabelled or atypical point.
        """
        check_is_fitted(self, "train_embedding_")
        # a loss is explained at the point's own target; a regression logit is output 0
        own = self.adapter_.loss.is_classification or self._explains_loss
        c = self.y_ if own else torch.zeros(self.n_train_, dtype=torch.long)
        test, offset, _ = self._test_side(self.train_features_, c)
        s = pair_rows(test, self.train_embedding_)
        if offset is not None:
            s = s + offset
        return s.double().numpy()

    @available_if(_decomposes_output)
    def reconstruct(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """The decomposed outputs for every class and the model's own logits, each (n, k).

        Row ``t``, column ``c`` of the first is ``sum_i value(t, i) + prior`` when explaining class
        (or output) ``c``; for a binary logistic head the single column is the margin. Only for
        methods whose values add up to an output (representer points); influence methods explain
        a change of loss, which their values do not sum to, so they have no ``reconstruct``.
        """
        check_is_fitted(self, "train_embedding_")
        phi, logits, _ = self._forward(X, fitted=True)
        f = self._features(phi)
        k = logits.shape[1]
        cols = []
        for j in range(k):
            # a binary head's single column is the margin, the logit of class 1
            c = torch.full((len(f),), 1 if self.adapter_.loss.name == "logistic" else j, dtype=torch.long)
            test, offset, prior = self._test_side(f, c, X)
            cols.append(self._reconstruct(test, offset, prior))
        return torch.stack(cols, 1).numpy(), logits.double().numpy()

    @available_if(_decomposes_output)
    def score(self, X: Any, y: Any = None) -> float:
        """Fidelity of the decomposition to the model: Pearson correlation (higher is better).

        Between the decomposed outputs and the model's own logits for every class, over the
        points of X. Softmax logits are compared after centering each row, since a constant
        shift of a row does not change the model's prediction. ``y`` is ignored (present for
        ``GridSearchCV``). Only for representer methods (see :meth:`reconstruct`): an influence
        method has no ``score``, so ``GridSearchCV`` over it needs a ``scoring``, e.g. one built
        on :func:`skrep.metrics.loo_correlation`.
        """
        recon, logits = self.reconstruct(X)
        if self.adapter_.loss.name == "softmax":
            recon = recon - recon.mean(1, keepdims=True)
            logits = logits - logits.mean(1, keepdims=True)
        a, b = recon.ravel(), logits.ravel()
        # Pearson is scale-free: scaling first keeps corrcoef's squares finite for huge outputs
        a, b = (v / np.abs(v).max() if np.abs(v).max() > 0 else v for v in (a, b))
        if a.std() == 0 or b.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    # ---- what a method defines ------------------------------------------------------------------
    def _fit_train(self, f: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, X: Any) -> Embedding:
        """The training side, from head features f (or the raw inputs X) and encoded labels y."""
        raise NotImplementedError

    def _test_side(
        self, f: torch.Tensor, c: torch.Tensor, X: Any = None
    ) -> tuple[Embedding, torch.Tensor | None, torch.Tensor | None]:
        """Test embeddings for explained classes ``c``, with an offset and a prior.

        The offset (n_test,) is shared by every training point, the prior is the share no
        training point owns; each may be None. X is None when the points are the training
        points themselves (self-influence).
        """
        raise NotImplementedError


def _sample_shape(X: Any) -> tuple[int, ...] | None:
    shape = getattr(X, "shape", None)
    if shape is None or isinstance(X, (str, bytes)):
        return None
    return tuple(int(s) for s in shape[1:])
