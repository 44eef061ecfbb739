"""TorchAdapter: a PyTorch network whose output is produced by a final ``nn.Linear``."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from .._progress import progress
from .._validation import check_number
from ..losses import Loss, get_loss

__all__ = ["TorchAdapter"]


class TorchAdapter:
    """See an ``nn.Module`` as ``logits = phi(x) @ weight + bias``.

    phi is captured with a forward hook on the input of the final ``nn.Linear``, so MLPs,
    ResNets (avgpool + fc) and LSTM classifiers (fc on the last hidden state) work unchanged.

    Parameters
    ----------
    module : nn.Module
        The trained network. It is never modified; it runs in eval mode under ``no_grad`` and
        its training flag is restored afterwards.
    last_layer : str or None
        Name of the head (as in ``module.named_modules()``). None: found on the first batch as
        the ``nn.Linear`` whose output is the model's output.
    loss : {'auto', 'softmax', 'logistic', 'squared'}
        The loss the head was trained with; 'auto' is softmax for k >= 2 outputs and logistic
        for one output.
    batch_size : int
        Batch size when X is an array or a tensor.
    verbose : int
        Show a progress bar over batches when > 0 (and stderr is a terminal).

    Notes
    -----
    X may be a numpy array, a tensor, or a ``DataLoader`` whose batches are tensors,
    ``(x, y)`` tuples (y is then available to ``fit``) or dicts of tensors passed as
    ``module(**batch)`` (a ``'labels'`` entry is taken out as y).

    A float16 / bfloat16 network runs in its own precision, but its features, logits and head
    come back in float32, so the explanations are computed in float32.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> adapter = TorchAdapter(net)
    >>> phi, logits = adapter.forward(torch.randn(5, 4))
    >>> phi.shape, logits.shape
    (torch.Size([5, 8]), torch.Size([5, 3]))
    """

    def __init__(
        self,
        module: nn.Module,
        last_layer: str | None = None,
        loss: str | Loss = "auto",
        batch_size: int = 256,
        verbose: int = 0,
    ):
        if not isinstance(module, nn.Module):
            raise TypeError(f"TorchAdapter needs a torch.nn.Module; got {type(module).__name__}.")
        check_number(batch_size, "batch_size", integer=True)
        if loss != "auto":
            get_loss(loss)  # an unknown name is refused here, not at the first use of .loss
        self.module = module
        self.last_layer = last_layer
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self._loss_arg = loss
        self._head: nn.Linear | None = None
        self._head_name: str | None = None
        if last_layer is not None:
            modules = dict(module.named_modules())
            if last_layer not in modules:
                linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
                raise ValueError(
                    f"last_layer={last_layer!r} is not a submodule of the model; name one of its nn.Linear layers: "
                    f"{linear}."
                )
            if not isinstance(modules[last_layer], nn.Linear):
                raise TypeError(
                    f"last_layer={last_layer!r} is a {type(modules[last_layer]).__name__}, "
                    "not an nn.Linear; name the final nn.Linear that produces the output."
                )
            self._head, self._head_name = modules[last_layer], last_layer
        elif not any(isinstance(m, nn.Linear) for m in module.modules()):
            raise ValueError(
                f"The model {type(module).__name__} has no nn.Linear layer, so it has no "
                "linear head to explain; wrap its output layer in an nn.Linear."
            )

    # ---- the head -------------------------------------------------------------------------
    @property
    def head(self) -> nn.Linear:
        if self._head is None:
            raise RuntimeError("The head is found on the first forward pass; call forward(X) first.")
        return self._head

    @property
    def head_name(self) -> str:
        self.head  # noqa: B018  (raises if not resolved)
        return self._head_name  # type: ignore[return-value]

    @property
    def weight(self) -> torch.Tensor:
        return _widen(self.head.weight.detach().T)

    @property
    def bias(self) -> torch.Tensor:
        b = self.head.bias
        return _widen(
            b.detach() if b is not None else torch.zeros(self.head.out_features, dtype=self.dtype, device=self.device)
        )

    @property
    def has_bias(self) -> bool:
        return self.head.bias is not None

    mask = None

    @property
    def n_outputs(self) -> int:
        return self.head.out_features

    @property
    def loss(self) -> Loss:
        if self._loss_arg == "auto":
            return get_loss("softmax" if self.n_outputs >= 2 else "logistic")
        loss = get_loss(self._loss_arg)
        if loss.name == "logistic" and self.n_outputs != 1:
            raise ValueError(f"loss='logistic' needs a head with one output; this one has {self.n_outputs}.")
        if loss.name == "softmax" and self.n_outputs < 2:
            raise ValueError(
                "loss='softmax' needs a head with at least two outputs; this one has one "
                "(use 'logistic' for a binary margin or 'squared' for regression)."
            )
        return loss

    @property
    def classes_(self) -> np.ndarray | None:
        if not self.loss.is_classification:
            return None
        return np.arange(max(self.n_outputs, 2))

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.module.parameters(), None)
        return p.dtype if p is not None and p.is_floating_point() else torch.float32

    def penalty_l2(self, n_samples: int) -> float | None:
        return None  # weight decay is an optimizer setting, not part of the module

    # ---- forward passes -------------------------------------------------------------------
    def forward(self, X: Any, return_labels: bool = False) -> Any:
        """Features (n, d) and logits (n, k).

        With ``return_labels``, also the labels a DataLoader carries (None for arrays and for
        loaders without labels).
        """
        phis, outs, ys = [], [], []
        for x, y in self.batches(X):
            phi, out = self._forward_batch(x)
            phis.append(phi)
            outs.append(out)
            ys.append(y)
        if not phis:
            raise ValueError("X is empty: it must hold at least one sample.")
        phi, out = torch.cat(phis), torch.cat(outs)
        if not return_labels:
            return phi, out
        labels = None if any(y is None for y in ys) else torch.cat([torch.as_tensor(y) for y in ys]).cpu().numpy()
        return phi, out, labels

    def features(self, X: Any) -> torch.Tensor:
        return self.forward(X)[0]

    def logits(self, X: Any) -> torch.Tensor:
        return self.forward(X)[1]

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.module.train(was_training)

    def _run(self, x: Any) -> torch.Tensor:
        try:
            out = self.module(**x) if isinstance(x, Mapping) else self.module(x)
        except (RuntimeError, TypeError, IndexError) as e:
            shape = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, Mapping) else tuple(x.shape)
            raise ValueError(
                f"The model could not be applied to a batch of shape {shape}: {e}. "
                "Check that X has the layout, feature count and dtype the model expects."
            ) from e
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            what = type(out).__name__ if not isinstance(out, torch.Tensor) else f"a tensor of shape {tuple(out.shape)}"
            shape = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, Mapping) else tuple(x.shape)
            raise ValueError(
                f"The model returned {what} for a batch of X of shape {shape}; skrep needs logits of shape "
                "(batch, k) produced by a final nn.Linear. Check that X has the layout the model expects."
            )
        return out

    def _forward_batch(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with self._eval_mode():
            if self._head is None:
                return self._find_head(x)
            captured: list[torch.Tensor] = []
            hook = self._head.register_forward_hook(lambda m, i, o: captured.append(i[0]))
            try:
                out = self._run(x)
            finally:
                hook.remove()
        return self._check_capture(captured, out)

    def _check_capture(self, captured: list[torch.Tensor], out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(captured) != 1:
            raise ValueError(
                f"The head {self._head_name!r} ran {len(captured)} times in one forward pass; "
                "it must run exactly once to be the model's linear head."
            )
        phi = captured[0]
        if phi.ndim != 2:
            raise ValueError(
                f"The head {self._head_name!r} receives input of shape {tuple(phi.shape)}; "
                "it must receive one feature vector per sample (batch, d)."
            )
        expected = _widen(phi) @ self.weight + self.bias
        if phi.dtype in _LOW_PRECISION:
            # the model's own product rounds each term to its precision: compare within that rounding
            eps = torch.finfo(phi.dtype).eps
            tol = 8 * eps * (_widen(phi).abs() @ self.weight.abs() + self.bias.abs()) + 1e-5
            matches = out.shape == expected.shape and bool(((_widen(out) - expected).abs() <= tol).all())
        else:
            matches = out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
        if not matches:
            raise ValueError(
                f"The model's output is not the output of {self._head_name!r}: something "
                "(a softmax, a scaling, another layer) comes after it. skrep explains the "
                "logits of a final nn.Linear; return them from forward()."
            )
        return _widen(phi.detach().cpu()), _widen(out.detach().cpu())

    def _find_head(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        hooks = [
            m.register_forward_hook(lambda m, i, o, name=name: seen.append((name, i[0], o)))
            for name, m in self.module.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            out = self._run(x)
        finally:
            for h in hooks:
                h.remove()
        for name, _, o in reversed(seen):
            if o is out or (o.shape == out.shape and torch.equal(o, out)):
                self._head_name, self._head = name, dict(self.module.named_modules())[name]
                return self._check_capture([i for n, i, _ in seen if n == name], out)
        last = seen[-1][0] if seen else None
        raise ValueError(
            f"The model's output is not produced by an nn.Linear (the last one to run was "
            f"{last!r}); something comes after it. Return the logits of a final nn.Linear "
            "from forward(), or name the head with last_layer=."
        )

    # ---- batching -------------------------------------------------------------------------
    def batches(self, X: Any) -> Iterator[tuple[Any, Any]]:
        """Model-ready batches ``(x, y)`` on the model's device (y: a DataLoader's labels or None)."""
        if isinstance(X, DataLoader):
            yield from progress(self._loader_batches(X), self.verbose, "forward", total=len(X))
            return
        X = _as_tensor(X, self.dtype)
        starts = range(0, len(X), self.batch_size)
        for s in progress(starts, self.verbose, "forward", total=len(starts)):
            yield X[s : s + self.batch_size].to(self.device), None

    def _loader_batches(self, loader: DataLoader) -> Iterator[tuple[Any, Any]]:
        if not isinstance(loader.sampler, SequentialSampler):
            raise ValueError(
                "The DataLoader draws samples in a random order (shuffle=True or a custom sampler): training "
                "point indices and labels would not line up across passes. Pass a DataLoader with shuffle=False."
            )
        for batch in loader:
            y = None
            x: torch.Tensor | dict[str, torch.Tensor]
            if isinstance(batch, Mapping):
                batch = dict(batch)
                y = batch.pop("labels", batch.pop("label", None))
                x = {k: self._to_model(v, f"X[{k!r}]") for k, v in batch.items()}
            elif isinstance(batch, (tuple, list)):
                x = self._to_model(batch[0], "X")
                y = batch[1] if len(batch) > 1 else None
            else:
                x = self._to_model(batch, "X")
            yield x, y

    def _to_model(self, t: Any, name: str) -> torch.Tensor:
        t = _check_finite(t, name)
        if t.is_floating_point():
            t = t.to(self.dtype)
        return t.to(self.device)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _widen(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 as float32: a model may run in low precision, the explanations never do."""
    return t.float() if t.dtype in _LOW_PRECISION else t


def _check_finite(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{name}: DataLoader batches must be tensors, (x, y) tuples or dicts of tensors; got {type(t).__name__}."
        )
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinity; remove or impute those samples first.")
    return t


def _as_tensor(X: Any, dtype: torch.dtype) -> torch.Tensor:
    """Validate an array-like model input and return it as a CPU tensor."""
    if isinstance(X, torch.Tensor):
        t = X.detach().cpu()
    else:
        if hasattr(X, "toarray") or hasattr(X, "tocsr"):
            raise TypeError("X is a sparse matrix; a torch model needs a dense array or tensor (X.toarray()).")
        a = np.asarray(X)
        if a.dtype.kind in "OUSV" or a.dtype == np.bool_:
            raise TypeError(f"X must be numeric; got an array of dtype {a.dtype}.")
        with warnings.catch_warnings():
            # X is only read: a read-only array (e.g. np.load(..., mmap_mode="r")) is fine as it is
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(a))
    if t.is_complex():
        raise ValueError("Complex data not supported: X must hold real numbers.")
    if t.dtype == torch.bool:
        raise TypeError(f"X must be a real numeric array or tensor; got dtype {t.dtype}.")
    if t.ndim == 0 or len(t) == 0:
        raise ValueError(f"X must hold at least one sample; got shape {tuple(t.shape)}.")
    if t.ndim == 2 and t.shape[1] == 0:
        raise ValueError(f"0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required: X has no columns.")
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise ValueError("X contains NaN or infinity; remove or impute those samples first.")
        t = t.to(dtype)
    return t
