"""Influence embeddings: every training-point score is an inner product <u_t, v_i>.

Head gradients and representer embeddings are rank-1 (an outer product ``a (x) b`` of a
k-vector and a d-vector), and <a (x) b, c (x) e> = <a, c><b, e>: a :class:`Factored` embedding
keeps the two factors and the kernels never form the d*k vectors. A :class:`Dense` embedding is
a full (k, d) matrix per row, e.g. an inverse Hessian applied to a test gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .leaves import LeafMatrix, gram, rowdot

__all__ = [
    "Factored",
    "Dense",
    "Sum",
    "Embedding",
    "class_order",
    "class_runs",
    "dtype_of",
    "flatten",
    "map_tensors",
    "norm_bound",
    "pair_block",
    "pair_grouped",
    "pair_rows",
    "total",
]


@dataclass(frozen=True)
class Factored:
    """Rows ``a_i (x) b_i``: ``a`` of shape (n, k), ``b`` of shape (n, d)."""

    a: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.b.ndim != 2 or len(self.a) != len(self.b):
            raise ValueError(
                f"Factored needs a (n, k) and b (n, d); got {tuple(self.a.shape)} and {tuple(self.b.shape)}."
            )

    def __len__(self) -> int:
        return len(self.a)

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.shape[1], self.b.shape[1]

    def rows(self, start: int, stop: int) -> Factored:
        return Factored(self.a[start:stop], self.b[start:stop])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Factored:
        return Factored(self.a.to(device, dtype, non_blocking=True), self.b.to(device, dtype, non_blocking=True))


@dataclass(frozen=True)
class Dense:
    """Rows given in full as (k, d) matrices: ``u`` of shape (n, k, d)."""

    u: torch.Tensor

    def __post_init__(self) -> None:
        if self.u.ndim != 3:
            raise ValueError(f"Dense needs u of shape (n, k, d); got {tuple(self.u.shape)}.")

    def __len__(self) -> int:
        return len(self.u)

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape[1], self.u.shape[2]

    def rows(self, start: int, stop: int) -> Dense:
        return Dense(self.u[start:stop])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Dense:
        return Dense(self.u.to(device, dtype, non_blocking=True))


@dataclass(frozen=True)
class Sum:
    """Several embeddings of the same points whose scores add: <u, v> = sum_j <u_j, v_j>.

    TracIn sums over checkpoints and layers this way; each term keeps its own (factored or
    dense) form.
    """

    terms: tuple

    def __post_init__(self) -> None:
        if not self.terms or len({len(t) for t in self.terms}) != 1:
            raise ValueError("Sum needs one or more embeddings of the same points.")

    def __len__(self) -> int:
        return len(self.terms[0])

    @property
    def shape(self) -> tuple:
        return tuple(t.shape for t in self.terms)

    def rows(self, start: int, stop: int) -> Sum:
        return Sum(tuple(t.rows(start, stop) for t in self.terms))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Sum:
        return Sum(tuple(t.to(device, dtype) for t in self.terms))


Embedding = Factored | Dense | Sum


def dtype_of(e: Embedding) -> torch.dtype:
    """The floating dtype an embedding's scores come out in."""
    if isinstance(e, Sum):
        return dtype_of(e.terms[0])
    return e.u.dtype if isinstance(e, Dense) else e.a.dtype


def map_tensors(e: Embedding, fn: Callable[[torch.Tensor], torch.Tensor]) -> Embedding:
    """The same embedding with ``fn`` applied to every tensor it holds (leaf ids and scales included).

    E.g. ``map_tensors(e.rows(a, b), torch.clone)`` owns its memory, so that pickling it (to send
    a chunk to another process) does not carry the whole of the storage its rows are views of.
    """
    if isinstance(e, Sum):
        return Sum(tuple(map_tensors(t, fn) for t in e.terms))
    if isinstance(e, Dense):
        return Dense(fn(e.u))
    return Factored(fn(e.a), e.b.apply(fn) if isinstance(e.b, LeafMatrix) else fn(e.b))


def flatten(e: Embedding) -> torch.Tensor:
    """Every row as one dense vector (n, D): what a nearest-neighbour index stores."""
    if isinstance(e, Sum):
        return torch.cat([flatten(t) for t in e.terms], 1)
    return _full(e).flatten(1)


def _check_pair(x: Embedding, y: Embedding) -> None:
    if isinstance(x, Sum) != isinstance(y, Sum) or x.shape != y.shape:
        raise ValueError(f"Embeddings of shapes (k, d) = {x.shape} and {y.shape} cannot be paired.")


def pair_block(test: Embedding, train: Embedding) -> torch.Tensor:
    """Scores <u_t, v_i> for every pair: (len(test), len(train))."""
    _check_pair(test, train)
    if isinstance(test, Sum) and isinstance(train, Sum):
        out = pair_block(test.terms[0], train.terms[0])
        for u, v in zip(test.terms[1:], train.terms[1:], strict=True):
            if isinstance(u, Factored) and isinstance(v, Factored):
                out.addcmul_(gram(u.b, v.b), u.a @ v.a.T)  # one pass over the block instead of two
            else:
                out += pair_block(u, v)
        return out
    if isinstance(test, Factored) and isinstance(train, Factored):
        runs = class_runs(test.a) if isinstance(test.b, torch.Tensor) and isinstance(train.b, torch.Tensor) else None
        if runs is None:
            return gram(test.b, train.b).mul_(test.a @ train.a.T)
        # test rows that select one class each, grouped by class: one product of the features,
        # then each group's columns scaled by its class's training factor in place, with no
        # (m, n) product of the small factors
        picked = test.a.sum(1, keepdim=True)  # each row's one non-zero
        out = gram(test.b if bool((picked == 1).all()) else test.b * picked, train.b)
        for start, stop, c in runs:
            out[start:stop].mul_(train.a[:, c])
        return out
    if isinstance(test, Dense) and isinstance(train, Factored):
        return _dense_factored(test, train, dense_rows_first=True)
    if isinstance(test, Factored) and isinstance(train, Dense):
        return _dense_factored(train, test, dense_rows_first=False)
    if isinstance(test, Dense) and isinstance(train, Dense):
        return test.u.flatten(1) @ train.u.flatten(1).T
    raise TypeError(f"Cannot pair {type(test).__name__} with {type(train).__name__}.")


def class_order(e: Embedding) -> torch.Tensor | None:
    """A row order that groups a class-selector embedding by class (see :func:`pair_block`).

    For a :class:`Factored` embedding whose ``a`` has one non-zero per row out of k >= 2, the
    stable argsort of the selected classes; None for any other embedding.
    """
    if not isinstance(e, Factored) or not isinstance(e.b, torch.Tensor):
        return None
    cls = _selected_class(e.a)
    return None if cls is None else torch.argsort(cls, stable=True)


def _selected_class(a: torch.Tensor) -> torch.Tensor | None:
    if a.shape[1] < 2 or len(a) == 0:
        return None
    nz = a != 0
    return nz.to(torch.uint8).argmax(1) if bool((nz.sum(1) == 1).all()) else None


def class_runs(a: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """``(start, stop, class)`` of the runs of equal class of a selector, when there are at most k."""
    cls = _selected_class(a)
    if cls is None:
        return None
    cuts = (torch.nonzero(cls[1:] != cls[:-1])[:, 0] + 1).tolist()
    if len(cuts) >= a.shape[1]:  # rows not grouped by class: the general product is cheaper
        return None
    bounds = [0, *cuts, len(a)]
    return [(s, e, int(cls[s])) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]


def _dense_factored(dense: Dense, fac: Factored, dense_rows_first: bool) -> torch.Tensor:
    """<dense_j, fac_i> as (len(dense), len(fac)) or, with ``dense_rows_first=False``, its transpose."""
    m, k, d = dense.u.shape
    cls = _selected_class(fac.a)
    if cls is not None:
        # one class per factored row (a class selector): only that class's slice of each dense
        # row is needed, k times fewer products than the general case
        scale = fac.a.gather(1, cls[:, None])
        shape = (m, len(fac)) if dense_rows_first else (len(fac), m)
        out = torch.empty(shape, dtype=dense.u.dtype, device=dense.u.device)
        for c in torch.unique(cls).tolist():
            rows = (cls == c).nonzero()[:, 0]
            block = gram(fac.b[rows], dense.u[:, c, :]) * scale[rows]
            if dense_rows_first:
                out[:, rows] = block.T
            else:
                out[rows] = block
        return out
    s = gram(dense.u.reshape(m * k, d), fac.b).view(m, k, len(fac))
    s = s.mul_(fac.a.T).sum(1)
    return s if dense_rows_first else s.T


def pair_grouped(test: Embedding, train: Embedding) -> torch.Tensor:
    """Scores of test row t with training rows ``t*j .. t*j + j - 1``: (len(test), j).

    ``train`` holds j rows per test row, in test-row order (e.g. each test point's top-k). The
    same numbers as :func:`pair_rows` on the test rows repeated j times, without the copies.
    """
    m = len(test)
    j = len(train) // max(m, 1)
    if isinstance(test, Sum) and isinstance(train, Sum):
        return sum((pair_grouped(u, v) for u, v in zip(test.terms, train.terms, strict=True)), torch.zeros(m, j))
    if isinstance(train, Factored) and isinstance(train.b, torch.Tensor):
        a = train.a.reshape(m, j, -1)
        b = train.b.reshape(m, j, -1)
        if isinstance(test, Dense) and test.u.ndim == 3:
            return torch.einsum("mcd,mjd,mjc->mj", test.u, b, a)
        if isinstance(test, Factored) and isinstance(test.b, torch.Tensor):
            return torch.einsum("mc,mjc->mj", test.a, a) * torch.einsum("md,mjd->mj", test.b, b)
    if isinstance(test, Dense) and isinstance(train, Dense):
        return torch.einsum("mx,mjx->mj", test.u.flatten(1), train.u.flatten(1).reshape(m, j, -1))
    repeated = map_tensors(test, lambda t: t.repeat_interleave(j, 0))  # leaf features: small rows
    return pair_rows(repeated, train).reshape(m, j)


def norm_bound(test: Embedding, train: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
    """Row factors ``(s, w)`` with ``|<u_t, v_i>| <= s_t w_i`` for every pair (Cauchy-Schwarz), float64.

    Each is a row's norm: ``||a|| ||b||`` for a rank-1 Factored row, the spectral norm of a Dense
    (k, d) test row against rank-1 training rows (``|a^T U b| <= ||U||_2 ||a|| ||b||``), Frobenius
    norms otherwise; a Sum's terms combine as ``sqrt(sum_j s_j^2)`` (Cauchy-Schwarz over the
    concatenated terms).
    """
    if isinstance(test, Sum) and isinstance(train, Sum):
        pairs = [norm_bound(u, v) for u, v in zip(test.terms, train.terms, strict=True)]
        return (
            torch.stack([p[0] ** 2 for p in pairs]).sum(0).sqrt(),
            torch.stack([p[1] ** 2 for p in pairs]).sum(0).sqrt(),
        )
    rank1 = isinstance(train, Factored)
    return _row_norm(test, spectral=rank1), _row_norm(train, spectral=False)


def _row_norm(e: Embedding, spectral: bool) -> torch.Tensor:
    # in the embedding's own precision: a bound used with a margin far above its rounding
    if spectral and isinstance(e, Dense) and e.u.ndim == 3:  # ||U||_2^2: the top eigenvalue of U U^T
        return torch.linalg.eigvalsh(e.u @ e.u.transpose(1, 2))[:, -1].clamp_min(0).sqrt().double()
    return pair_rows(e, e).clamp_min(0).sqrt().double()


def pair_rows(x: Embedding, y: Embedding) -> torch.Tensor:
    """Row-wise scores <x_i, y_i> (self-influence when x and y describe the same points): (n,)."""
    _check_pair(x, y)
    if len(x) != len(y):
        raise ValueError(f"pair_rows needs as many rows on both sides; got {len(x)} and {len(y)}.")
    if isinstance(x, Sum) and isinstance(y, Sum):
        return torch.stack([pair_rows(u, v) for u, v in zip(x.terms, y.terms, strict=True)]).sum(0)
    if isinstance(x, Factored) and isinstance(y, Factored):
        return (x.a * y.a).sum(1) * rowdot(x.b, y.b)
    if isinstance(x, Factored) != isinstance(y, Factored):  # sum_c a_c <u_c, b>, without forming a (x) b
        fac, dense = (x, y) if isinstance(x, Factored) else (y, x)
        assert isinstance(fac, Factored) and isinstance(dense, Dense)
        return torch.stack([fac.a[:, c] * rowdot(fac.b, dense.u[:, c, :]) for c in range(fac.a.shape[1])]).sum(0)
    return (_full(x) * _full(y)).flatten(1).sum(1)


def _full(e: Embedding) -> torch.Tensor:
    if isinstance(e, Dense):
        return e.u
    if isinstance(e, Factored):
        return e.a[:, :, None] * e.b[:, None, :]
    raise TypeError("A Sum has no single full form; flatten() concatenates its terms.")


def total(e: Embedding, dtype: torch.dtype = torch.float64) -> Dense | Sum:
    """The sum of all rows as one Dense row (1, k, d), accumulated in ``dtype``.

    Paired with a test embedding, it gives sum_i <u_t, v_i> without any (n_test, n_train) block:
    the reconstruction of a decomposed output.
    """
    if isinstance(e, Sum):
        return Sum(tuple(total(t, dtype) for t in e.terms))
    if isinstance(e, Factored):
        return Dense((e.a.to(dtype).T @ e.b.to(dtype))[None])  # a LeafMatrix b takes this product too
    return Dense(e.u.to(dtype).sum(0, keepdim=True))
