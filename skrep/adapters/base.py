"""The LastLayer protocol: every model seen as ``logits = phi(x) @ weight + bias``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..kernels.leaves import LeafMatrix
from ..losses import Loss

__all__ = ["LastLayer", "check_features", "encode_labels"]


@runtime_checkable
class LastLayer(Protocol):
    """What an adapter gives an explainer (shared/DESIGN.md section 2).

    Attributes
    ----------
    weight : Tensor of shape (d, k)
        The linear head; ``logits = features @ weight + bias``.
    bias : Tensor of shape (k,)
    has_bias : bool
        Whether the bias is a free parameter of the model (False for ``bias=False`` layers).
    mask : Tensor of shape (d, k) or None
        Which head entries are free parameters (None: all of them).
    loss : Loss
        The loss the head is trained with ('softmax', 'logistic' or 'squared').
    classes_ : ndarray or None
        The class labels in logit order (None for regression).
    """

    @property
    def weight(self) -> torch.Tensor: ...

    @property
    def bias(self) -> torch.Tensor: ...

    @property
    def has_bias(self) -> bool: ...

    @property
    def mask(self) -> torch.Tensor | None: ...

    @property
    def loss(self) -> Loss: ...

    @property
    def classes_(self) -> np.ndarray | None: ...

    def forward(self, X: Any, return_labels: bool = False) -> Any:
        """Features (n, d) and the model's own logits (n, k), in one pass, no grad.

        With ``return_labels``, a third element: labels carried by the input (a DataLoader's
        ``(x, y)`` batches), or None.
        """

    def features(self, X: Any) -> torch.Tensor | LeafMatrix:
        """Penultimate representation phi(X), shape (n, d) (leaf indicators for tree ensembles)."""

    def logits(self, X: Any) -> torch.Tensor:
        """The model's own raw output, shape (n, k)."""

    def penalty_l2(self, n_samples: int) -> float | None:
        """The model's L2 strength as ``l2`` in ``mean loss + l2 / 2 ||w||^2``.

        None when the model does not carry it (a torch module: weight decay belongs to the
        optimizer); a ValueError when the model's objective is not of this form.
        """


def check_features(
    X: Any, n_features: int, transform: Any = None, dtype: Any = np.float64, allow_nan: bool = False
) -> np.ndarray:
    """X as a 2-d array with the model's number of columns, after a pipeline's preceding steps.

    NaN is accepted only with ``allow_nan`` (trees route it); infinity never.
    """
    from sklearn.utils import check_array

    if X is None:
        raise ValueError("X is None: pass the samples, a 2-D array (n_samples, n_features).")
    if transform is not None:
        X = transform.transform(X)
    if getattr(getattr(X, "dtype", None), "kind", "") == "c":
        raise ValueError("Complex data not supported: X must hold real numbers.")
    if getattr(X, "ndim", 2) != 2:
        raise ValueError(
            f"X must be 2-D (n_samples, n_features); got shape {tuple(X.shape)}. This model takes one row of "
            "features per sample: reshape X (X.reshape(-1, 1) for one feature, X.reshape(1, -1) for one sample)."
        )
    if getattr(X, "shape", (1,))[0] == 0:
        raise ValueError(f"X must hold at least one sample; got shape {tuple(X.shape)}.")
    try:
        X = check_array(X, dtype=dtype, input_name="X", ensure_all_finite=False)
    except ValueError as e:
        if "convert" not in str(e):
            raise
        raise ValueError(f"X must hold numbers ({e}); encode non-numeric columns first (e.g. OneHotEncoder).") from None
    # checked after the cast: a float64 value beyond float32's range becomes infinity there
    bad = ~np.isfinite(X)
    if allow_nan:
        bad &= ~np.isnan(X)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        what = "infinity (or a value too large for float32)" if allow_nan else "NaN or infinity"
        raise ValueError(
            f"X contains {what}, first at row {row}, column {col}; remove or impute those samples first"
            + (" (NaN is fine: the trees route missing values)." if allow_nan else ".")
        )
    if X.shape[1] != n_features:
        raise ValueError(
            f"X has {X.shape[1]} features but the model was fitted with {n_features}; "
            "pass data with the model's columns."
        )
    return X


def encode_labels(y: Any, classes: np.ndarray | None, name: str = "y") -> torch.Tensor:
    """Map labels to class indices of the head (classification) or floats (regression).

    Raises a ValueError naming the labels that the model does not know.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        if classes is None and y.ndim == 2:
            if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
                raise ValueError(f"{name} must be finite numbers for a regression model.")
            return torch.as_tensor(y, dtype=torch.float64)
        raise ValueError(f"{name} must be one-dimensional (n_samples,); got shape {y.shape}.")
    if classes is None:
        if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
            raise TypeError(f"{name} must be numeric for a regression model; got dtype {y.dtype}.")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{name} contains NaN or infinity; remove or impute those rows.")
        return torch.as_tensor(y)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or infinity; every label must be one of {list(classes)}.")
    index = {c: i for i, c in enumerate(classes.tolist())}
    try:
        codes = [index[v] for v in y.tolist()]
    except (KeyError, TypeError):
        unknown = sorted({repr(v) for v in y.tolist() if v not in index})[:5]
        raise ValueError(
            f"{name} contains labels the model does not know: {', '.join(unknown)}; "
            f"the model's classes are {classes.tolist()[:20]}: pass labels among them."
        ) from None
    return torch.as_tensor(codes, dtype=torch.long)
