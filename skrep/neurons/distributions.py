"""Distributions of interest (DoI): where the partial derivatives are averaged (Leino et al. 2018, 2.1).

``chi_j = E_{x ~ P}[d q / d z_j]``. A point-wise DoI attaches a distribution to every explained
point: the point itself (:class:`PointDoI`, the plain gradient), Gaussian noise around it
(:class:`GaussianDoI`, SmoothGrad), or the straight path from a baseline (:class:`LinearPathDoI`,
whose average gradient is the one of Integrated Gradients). :class:`ClassDoI` is one distribution,
the points of one class, and explains what a class means to the network ("its essence").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._validation import check_number
from ._autograd import check_float_input, n_rows, rows
from .quantities import check_class

__all__ = ["ClassDoI", "GaussianDoI", "LinearPathDoI", "PointDoI", "PointwiseDoI"]


class PointwiseDoI:
    """Base of the distributions attached to each explained point (not used directly).

    A subclass draws ``n_per_point`` weighted samples for every point of a batch.
    """

    random_state: Any = None

    @property
    def n_per_point(self) -> int:
        """Samples drawn for each point."""
        return 1

    def samples(self, x: Any, rng: np.random.RandomState) -> tuple[Any, torch.Tensor]:
        """Samples of every point's distribution, point-major ``(len(x) * m, ...)``, and weights ``(m,)``."""
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The point an attribution "times input" is measured from: zero, or the path's baseline."""
        return torch.zeros_like(x)

    def expectation(
        self, fn: Callable[[Any], torch.Tensor], x: Any, rng: np.random.RandomState, max_rows: int
    ) -> torch.Tensor:
        """``E_{x' ~ P(x_t)}[fn(x')]`` for every point ``x_t`` of a batch: ``(len(x), *fn's shape)``.

        ``fn`` maps a batch of samples to one result per sample; it sees at most ``max_rows`` samples
        at a time.
        """
        xs, w = self.samples(x, rng)
        out = torch.cat([fn(rows(xs, s, s + max_rows)) for s in range(0, n_rows(xs), max_rows)])
        out = out.reshape(n_rows(x), len(w), *out.shape[1:])
        return (out * w.to(out).reshape(1, -1, *[1] * (out.ndim - 2))).sum(1)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class PointDoI(PointwiseDoI):
    """The explained point itself: the influence is the gradient there.

    Examples
    --------
    >>> import torch
    >>> xs, w = PointDoI().samples(torch.ones(2, 3), None)
    >>> xs.shape, w
    (torch.Size([2, 3]), tensor([1.]))
    """

    def samples(self, x: Any, rng: np.random.RandomState) -> tuple[Any, torch.Tensor]:
        """The points themselves, weight 1."""
        return x, torch.ones(1)


class GaussianDoI(PointwiseDoI):
    """Gaussian noise around each point, ``x + sigma * N(0, I)`` (SmoothGrad, Smilkov et al. 2017).

    Parameters
    ----------
    sigma : float
        Noise standard deviation, in input units (SmoothGrad suggests 10-20% of the inputs' range).
    n_samples : int, default=50
        Noisy copies per point.
    random_state : int, RandomState or None, default=None
        Seeds the noise; an int gives the same noise on every call.

    Examples
    --------
    >>> import numpy as np, torch
    >>> doi = GaussianDoI(0.1, n_samples=4, random_state=0)
    >>> xs, w = doi.samples(torch.zeros(2, 3), np.random.RandomState(0))
    >>> xs.shape, float(w.sum())
    (torch.Size([8, 3]), 1.0)
    """

    def __init__(self, sigma: float, n_samples: int = 50, random_state: Any = None):
        check_number(sigma, "sigma")
        check_number(n_samples, "n_samples", integer=True)
        check_random_state(random_state)
        self.sigma = float(sigma)
        self.n_samples = int(n_samples)
        self.random_state = random_state

    @property
    def n_per_point(self) -> int:
        """``n_samples``."""
        return self.n_samples

    def samples(self, x: Any, rng: np.random.RandomState) -> tuple[Any, torch.Tensor]:
        """``n_samples`` noisy copies of every point, equal weights."""
        x = check_float_input(x, "GaussianDoI")
        xs = x.repeat_interleave(self.n_samples, 0)
        noise = torch.from_numpy(rng.standard_normal(tuple(xs.shape)))
        return xs + self.sigma * noise.to(xs), torch.full((self.n_samples,), 1.0 / self.n_samples)


class LinearPathDoI(PointwiseDoI):
    """The straight path from a baseline to each point, ``b + a (x - b)`` with ``a`` uniform in [0, 1].

    The average gradient along the path, times ``x - b``, is Integrated Gradients (Sundararajan et
    al. 2017); at the input, or at a slice that is affine in the input, it is complete: summed over
    neurons it equals ``q(x) - q(b)`` up to the quadrature error.

    Parameters
    ----------
    baseline : float or array-like of one sample's shape, default=0.0
        The path's start.
    steps : int, default=64
        Points of the midpoint rule, ``a = (i + 1/2) / steps``.

    Examples
    --------
    >>> import torch
    >>> xs, w = LinearPathDoI(0.0, steps=4).samples(torch.ones(1, 2), None)
    >>> xs[:, 0]
    tensor([0.1250, 0.3750, 0.6250, 0.8750])
    """

    def __init__(self, baseline: Any = 0.0, steps: int = 64):
        b = np.asarray(baseline.detach().cpu() if isinstance(baseline, torch.Tensor) else baseline)
        if b.dtype.kind not in "iuf" or not np.isfinite(b).all():
            raise ValueError(f"baseline must be a finite number or array of one sample's shape; got {baseline!r:.80}.")
        check_number(steps, "steps", integer=True)
        self.baseline = baseline
        self.steps = int(steps)

    @property
    def n_per_point(self) -> int:
        """``steps``."""
        return self.steps

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline, broadcast to the batch."""
        b = self.baseline if isinstance(self.baseline, torch.Tensor) else np.asarray(self.baseline)
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(b, x.shape)
        except RuntimeError as e:
            raise ValueError(
                f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs' samples of shape "
                f"{tuple(x.shape[1:])}; pass a number or an array of one sample's shape."
            ) from e

    def samples(self, x: Any, rng: np.random.RandomState) -> tuple[Any, torch.Tensor]:
        """``steps`` points along every point's path, equal weights (midpoint rule)."""
        x = check_float_input(x, "LinearPathDoI")
        b = self.reference(x)
        a = (torch.arange(self.steps, dtype=x.dtype, device=x.device) + 0.5) / self.steps
        a = a.reshape(1, -1, *[1] * (x.ndim - 1))
        xs = (b[:, None] + a * (x - b)[:, None]).flatten(0, 1)
        return xs, torch.full((self.steps,), 1.0 / self.steps)


class ClassDoI:
    """The points of one class: the distribution whose influence is a class's "essence".

    Parameters
    ----------
    X : array-like or tensor of shape (n_samples, ...)
        Points, in the layout the model takes (usually the training set).
    y : array-like of shape (n_samples,)
        Their labels (class indices of the model's outputs).
    c : int
        The class whose points make the distribution.

    Examples
    --------
    >>> import numpy as np
    >>> doi = ClassDoI(np.arange(8.0).reshape(4, 2), [0, 1, 1, 0], 1)
    >>> doi.points()
    array([[2., 3.],
           [4., 5.]])
    """

    def __init__(self, X: Any, y: Any, c: int):
        if not isinstance(X, (np.ndarray, torch.Tensor)):
            X = np.asarray(X)
        y_arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
        if y_arr.ndim != 1 or len(y_arr) != len(X):
            raise ValueError(f"ClassDoI needs one label per point: X has {len(X)} points, y has shape {y_arr.shape}.")
        c = check_class(c, "c")
        if not np.any(y_arr == c):
            raise ValueError(f"ClassDoI: no point of class {c!r} in y (its classes are {np.unique(y_arr)[:20]}).")
        self.X = X
        self.y = y
        self.c = c
        self._mask = y_arr == c

    def points(self) -> Any:
        """The points of class ``c``."""
        return self.X[torch.from_numpy(self._mask) if isinstance(self.X, torch.Tensor) else self._mask]

    def __repr__(self) -> str:
        return f"ClassDoI(X=<{len(self.X)} points>, y=<{len(self.y)} labels>, c={self.c!r})"


def doi_rng(doi: PointwiseDoI) -> np.random.RandomState:
    """The random state one pass over data draws a DoI's samples from."""
    return check_random_state(doi.random_state)


def _short(v: Any) -> str:
    return f"<array of shape {np.shape(v)}>" if np.ndim(v) > 0 else repr(v)
