"""Leaf features of tree ensembles: a sparse 0/1 matrix with one active column per tree.

A tree ensemble's margin is ``sum_trees value[leaf_t(x)] + base``: a linear head on the one-hot of
the leaf each tree sends x to. Over all trees that is an (n, n_leaves) matrix with as many ones per
row as there are trees, far too large to store densely (100,000 rows x 500 trees of 64 leaves is
12 GB in float32) and needless: every product the head methods take is a gather or a scatter over
the leaf ids. :class:`LeafMatrix` keeps the ids and implements those products; the explainers use it
where they would use a dense feature tensor (``f @ W``, ``G.T @ f``, ``f * w[:, None]``, rows).

Products with a dense (n_leaves, m) table run as ``torch.nn.functional.embedding_bag`` (a sum of
the rows each sample's leaves select), torch's multi-threaded sparse-lookup kernel: 1,000 test x
100,000 train co-occurrence counts over 500 trees take about 3 s on two cores, against about 14 s
for a CSR sparse-dense product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LeafMatrix", "class_features", "gram", "rowdot", "to_dense", "with_ones"]

# columns of a test table processed at once: a (n_leaves, 64) float table stays in cache
_TABLE_COLS = 64
_ROWS = 8192


class LeafMatrix:
    """Rows ``scale_i * (sum_t values_it onehot(index_it) [, 1])``: leaf indicators, optionally weighted.

    Unweighted (``values=None``), each row has a one in every tree's leaf column; ``values`` puts a
    number of its own in each of those entries instead (e.g. a per-round gradient).

    Parameters
    ----------
    index : LongTensor of shape (n, n_trees)
        Global leaf ids (column numbers) in ``[0, n_leaves]``; the value ``n_leaves`` marks an
        inactive entry (a tree masked out for that row).
    n_leaves : int
    ones : bool
        Whether a constant column (a bias feature) follows the leaf columns.
    scale : Tensor of shape (n,) or None
        Row multipliers.
    values : Tensor of shape (n, n_trees) or None
        The entries at the leaf ids (None: ones). Inactive entries count as zero whatever they hold.
        ``index`` and ``values`` are not to be changed in place once the matrix has been used:
        products cache the index transposed.
    dtype : torch.dtype
        The dtype of the matrix's values and of its products.

    Examples
    --------
    >>> import torch
    >>> f = LeafMatrix(torch.tensor([[0, 2], [1, 2]]), n_leaves=3, ones=True)
    >>> f.to_dense()
    tensor([[1., 0., 1., 1.],
            [0., 1., 1., 1.]])
    >>> f @ torch.ones(4, 1, dtype=torch.float32)
    tensor([[3.],
            [3.]])
    """

    def __init__(
        self,
        index: torch.Tensor,
        n_leaves: int,
        ones: bool = False,
        scale: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        values: torch.Tensor | None = None,
    ):
        if index.ndim != 2:
            raise ValueError(f"index must be (n, n_trees); got shape {tuple(index.shape)}.")
        if values is not None and values.shape != index.shape:
            raise ValueError(f"values must have the shape of index {tuple(index.shape)}; got {tuple(values.shape)}.")
        self.index = index.long()
        self.n_leaves = int(n_leaves)
        self.ones = bool(ones)
        self.scale = scale
        self.values = values
        self._dtype = dtype
        self._cache: dict = {}  # the transposed index, shared by copies with the same ids (see _like)

    def __getstate__(self) -> dict:
        # the cache is rebuilt where needed, not shipped (stores, loky and Dask workers)
        return {**self.__dict__, "_cache": {}}

    def __setstate__(self, state: dict) -> None:
        state.pop("_csr_cache", None)  # pickled by versions that multiplied through scipy
        state.setdefault("_cache", {})
        self.__dict__.update(state)

    # ---- tensor-like surface ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.n_leaves + int(self.ones))

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.index.device

    @property
    def ndim(self) -> int:
        return 2

    def element_size(self) -> int:
        return torch.empty((), dtype=self._dtype).element_size()

    def _like(
        self, index: torch.Tensor | None = None, scale: Any = False, values: Any = False, **kw: Any
    ) -> LeafMatrix:
        out = LeafMatrix(
            self.index if index is None else index,
            self.n_leaves,
            kw.get("ones", self.ones),
            self.scale if scale is False else scale,
            kw.get("dtype", self._dtype),
            self.values if values is False else values,
        )
        if out.index is self.index:  # the same leaf ids: the same transposed index
            out._cache = self._cache
        return out

    def to(self, device: Any = None, dtype: Any = None, non_blocking: bool = False) -> LeafMatrix:
        """Move (ids and scale) and/or change the dtype of the values; ``to(dtype)`` works too."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        dtype = self._dtype if dtype is None else dtype
        index = self.index if device is None else self.index.to(device, non_blocking=non_blocking)
        scale = None if self.scale is None else self.scale.to(device or self.scale.device, dtype)
        values = None if self.values is None else self.values.to(device or self.values.device, dtype)
        return self._like(index, scale, values, dtype=dtype)

    def apply(self, fn: Any) -> LeafMatrix:
        """The same matrix with ``fn`` applied to its leaf ids, row scales and values (e.g. ``torch.clone``)."""
        return self._like(*(None if t is None else fn(t) for t in (self.index, self.scale, self.values)))

    def double(self) -> LeafMatrix:
        return self.to(dtype=torch.float64)

    def float(self) -> LeafMatrix:
        return self.to(dtype=torch.float32)

    def __getitem__(self, rows: Any) -> LeafMatrix:
        if isinstance(rows, tuple):
            raise TypeError("LeafMatrix selects rows only (f[rows]); its columns are leaves.")
        return self._like(*(None if t is None else t[rows] for t in (self.index, self.scale, self.values)))

    def with_ones(self) -> LeafMatrix:
        """The same rows with a constant column appended (the bias feature)."""
        return self._like(ones=True)

    def __mul__(self, w: torch.Tensor) -> LeafMatrix:
        """Rows scaled: ``f * w[:, None]`` (w of shape (n,) or (n, 1))."""
        w = torch.as_tensor(w).reshape(-1).to(self._dtype)
        if len(w) != len(self):
            raise ValueError(f"A LeafMatrix scales rows only: need {len(self)} factors, got {len(w)}.")
        return self._like(scale=w if self.scale is None else self.scale * w)

    def restrict(self, keep: torch.Tensor) -> LeafMatrix:
        """Entries where ``keep`` (n, n_trees) is False made inactive (their trees masked out)."""
        return self._like(torch.where(keep, self.index, self.n_leaves))

    # ---- products ---------------------------------------------------------------------------------
    def _row_scaled(self, out: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        return out if self.scale is None else out * self.scale[rows, None].to(out.dtype)

    def _entries(self, rows: slice, dtype: torch.dtype) -> torch.Tensor | None:
        """The entries of ``rows`` as embedding_bag's per-sample weights (None: ones)."""
        return None if self.values is None else self.values[rows].to(dtype)

    def __matmul__(self, W: torch.Tensor) -> torch.Tensor:
        """``f @ W`` for a dense W of shape (n_leaves [+ 1], m): (n, m)."""
        if not isinstance(W, torch.Tensor) or W.ndim != 2 or W.shape[0] != self.shape[1]:
            shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
            raise ValueError(f"LeafMatrix of shape {self.shape} cannot multiply {shape}.")
        table = torch.cat([W[: self.n_leaves], W.new_zeros(1, W.shape[1])])  # the inactive id's row is 0
        out = torch.empty(len(self), W.shape[1], dtype=W.dtype, device=W.device)
        for s in range(0, len(self), _ROWS):
            rows = slice(s, s + _ROWS)
            out[rows] = F.embedding_bag(
                self.index[rows], table, mode="sum", per_sample_weights=self._entries(rows, W.dtype)
            )
        if self.ones:
            out += W[self.n_leaves]
        return self._row_scaled(out)

    def __rmatmul__(self, G: torch.Tensor) -> torch.Tensor:
        """``G @ f`` for a dense G of shape (m, n): (m, n_leaves [+ 1])."""
        if not isinstance(G, torch.Tensor) or G.ndim != 2 or G.shape[1] != len(self):
            return NotImplemented
        Gs = self._row_scaled(G.T.detach())  # (n, m)
        rows, starts, entries = self._by_leaf()
        # each leaf's column sums the rows it holds: an embedding_bag over the transposed index,
        # multi-threaded, 2-4x scipy's single-threaded CSR transpose product at 100,000 rows x 500
        # trees (index_add_ is 50-100x slower on CPU for few columns). A table one column wide
        # takes a slow path (30x), hence the zero column.
        table = torch.cat([Gs, Gs.new_zeros(len(Gs), 1)], 1) if Gs.shape[1] == 1 else Gs.contiguous()
        weights = None if entries is None else entries.to(Gs.dtype)
        out = F.embedding_bag(rows, table, starts, mode="sum", per_sample_weights=weights)[:, : Gs.shape[1]]
        if self.ones:
            out = torch.cat([out, Gs.sum(0, keepdim=True)])
        return out.T

    def _by_leaf(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The transposed index: row ids grouped by leaf, each leaf's start, and the entries in that order.

        The grouping is built once per ``index`` (copies that keep it share it), the entries once
        per ``values`` object.
        """
        if "by_leaf" not in self._cache:
            ids = self.index.reshape(-1)
            order = torch.argsort(ids, stable=True)
            counts = torch.bincount(ids, minlength=self.n_leaves + 1)[: self.n_leaves]
            active = order[: int(counts.sum())]  # the inactive id sorts last and is left out
            dtype = torch.int32 if len(ids) < 2**31 else torch.int64  # int32 ids halve the index's memory
            starts = (torch.cumsum(counts, 0) - counts).to(dtype)
            self._cache["by_leaf"] = ((active // self.index.shape[1]).to(dtype), starts, active)
        rows, starts, active = self._cache["by_leaf"]
        if self.values is None:
            return rows, starts, None
        held = self._cache.get("entries")
        if held is None or held[0] is not self.values:
            held = self._cache["entries"] = (self.values, self.values.reshape(-1)[active])
        return rows, starts, held[1]

    def cooccurrence(self, other: LeafMatrix) -> torch.Tensor:
        """``self @ other.T``: (len(self), len(other)), the (scaled) number of shared leaves."""
        if other.n_leaves != self.n_leaves or other.ones != self.ones:
            raise ValueError("The two LeafMatrix operands come from different ensembles.")
        if len(other) > len(self):  # the smaller side makes the tables, the larger one the bags
            return other.cooccurrence(self).T
        dtype = torch.promote_types(self._dtype, other.dtype)
        out = torch.empty(len(self), len(other), dtype=dtype, device=self.device)
        T = other.index.shape[1]
        for s in range(0, len(other), _TABLE_COLS):
            block = other[s : s + _TABLE_COLS]
            m = len(block)
            table = torch.zeros(self.n_leaves + 1, m, dtype=dtype, device=self.device)
            value = torch.ones(m, dtype=dtype) if block.scale is None else block.scale.to(dtype)
            weighted = value[:, None] if block.values is None else block.values.to(dtype) * value[:, None]
            entries = weighted.expand(m, T).T.reshape(-1)
            table[block.index.T.reshape(-1), torch.arange(m).repeat(T)] = entries
            table[self.n_leaves] = 0.0
            for r in range(0, len(self), _ROWS):
                rows = slice(r, r + _ROWS)
                out[rows, s : s + m] = F.embedding_bag(
                    self.index[rows], table, mode="sum", per_sample_weights=self._entries(rows, dtype)
                )
            if self.ones:
                out[:, s : s + m] += value
        return self._row_scaled(out)

    def rowdot(self, other: LeafMatrix) -> torch.Tensor:
        """``(self * other).sum(1)`` for matrices of the same rows: (n,)."""
        dtype = torch.promote_types(self._dtype, other.dtype)
        same = ((self.index == other.index) & (self.index != self.n_leaves)).to(dtype)
        for m in (self, other):
            if m.values is not None:
                same = same * m.values.to(dtype)
        out = same.sum(1) + float(self.ones and other.ones)
        out = self._row_scaled(out[:, None])[:, 0]
        return other._row_scaled(out[:, None])[:, 0]

    def to_dense(self) -> torch.Tensor:
        """The matrix as a dense (n, n_leaves [+ 1]) tensor (for small problems only)."""
        out = torch.zeros(len(self), self.n_leaves + 1, dtype=self._dtype, device=self.device)
        if self.values is None:
            out.scatter_(1, self.index, 1.0)
        else:
            out.scatter_(1, self.index, self.values.to(self._dtype))
        out[:, self.n_leaves] = 1.0 if self.ones else 0.0
        out = out if self.ones else out[:, : self.n_leaves]
        return self._row_scaled(out)

    def column_sums(self, w: torch.Tensor) -> torch.Tensor:
        """``(f * f * w[:, None]).sum(0)`` for w (n, k): (n_leaves [+ 1], k), the diagonal of f^T diag(w) f."""
        w = w if self.scale is None else w * (self.scale**2)[:, None].to(w.dtype)
        return (w.T @ self._like(scale=None, values=None if self.values is None else self.values**2)).T


def gram(a: Any, b: Any) -> torch.Tensor:
    """``a @ b.T`` for dense tensors and leaf matrices in any combination."""
    if isinstance(a, LeafMatrix):
        return a.cooccurrence(b) if isinstance(b, LeafMatrix) else a @ b.T
    if isinstance(b, LeafMatrix):
        return (b @ a.T).T
    return a @ b.T


def rowdot(a: Any, b: Any) -> torch.Tensor:
    """Row-wise inner products ``(a * b).sum(1)``."""
    if isinstance(b, LeafMatrix) and not isinstance(a, LeafMatrix):
        a, b = b, a
    if isinstance(a, LeafMatrix):
        if isinstance(b, LeafMatrix):
            return a.rowdot(b)
        # a dense b: gather the entries of each row's leaves
        padded = torch.cat([b[:, : a.n_leaves], b.new_zeros(len(b), 1)], 1)
        picked = padded.gather(1, a.index)
        out = (picked if a.values is None else picked * a.values.to(picked.dtype)).sum(1)
        if a.ones:
            out = out + b[:, a.n_leaves]
        return a._row_scaled(out[:, None])[:, 0]
    return (a * b).sum(1)


def to_dense(f: Any) -> torch.Tensor:
    """A dense tensor of the features (leaf matrices expanded)."""
    return f.to_dense() if isinstance(f, LeafMatrix) else f


def with_ones(f: Any) -> Any:
    """``[f, 1]``: the features with a constant column (the bias feature) appended."""
    if isinstance(f, LeafMatrix):
        return f.with_ones()
    return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], 1)


def class_features(f: Any, mask: torch.Tensor | None, c: torch.Tensor) -> Any:
    """Row t of f restricted to the head entries of class ``c[t]``: ``f_t * mask[:, c_t]``.

    A masked head (a multiclass tree ensemble, each tree feeding one class) has
    ``logit_c = <f * mask[:, c], theta[:, c]>``; the features that meet class c's column are
    these. Without a mask, f itself.
    """
    if mask is None:
        return f
    if isinstance(f, LeafMatrix):
        leaf_mask = torch.cat([mask[: f.n_leaves], mask.new_zeros(1, mask.shape[1])]).bool()
        return f.restrict(leaf_mask[f.index, c[:, None].expand_as(f.index)])
    return f * mask.T[c].to(f.dtype)
