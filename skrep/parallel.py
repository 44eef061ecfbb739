"""Scoring split over chunks of the training set: threads, joblib backends or a Dask cluster.

Test rows that each explain one class (representer points) are scored grouped by class (see
:func:`skrep.kernels.embeddings.pair_block`) and handed back in the caller's order.

Top-k over rank-1 training rows (representer points, head influence and TracIn, every linear
layer) held in memory is pruned by norms: ``|<u_t, v_i>| <= ||u_t|| ||v_i||``
(:func:`~skrep.kernels.embeddings.norm_bound`). The training rows are scored in slices of
decreasing norm (the largest 1/16, the next 1/16, 1/8, 1/4, 1/2), and a test row leaves once no
row of the slices left can beat its k-th proponent or opponent. The top-k are exactly the
unpruned ones; the work drops to the slices the test rows needed, a large saving where a few
training points carry most of the norm (influence functions and TracIn explain losses: a
well-fit point's gradient is small, a mislabelled one's large). The k chosen pairs' values are
then computed again one pair at a time in float64, so they are the same however the pairs were
found: pruned, in chunks, threads, loky processes or on Dask.

A chunk's scores are a pure function of (the chunk's training embeddings, the test embeddings),
so chunks can run anywhere. The chunking depends only on the sizes and the memory budget, never
on the number of workers, and chunk results are merged in chunk order: one process, ``n_jobs``
threads and a Dask cluster give the same top-k indices, and the same values (bit-identical
threads; other processes to their BLAS's rounding for full (k x d) training rows, which are
not rescored).

With Dask, the training chunks are scattered once per (client, fitted explainer) and reused
by later calls; the test side is broadcast once per call. When a worker dies, Dask reruns its
tasks elsewhere, and the chunks whose data died with it are sent again from this process, so
the result is still exact.

Examples
--------
>>> import torch
>>> from skrep.kernels import Factored
>>> train = Factored(torch.randn(1000, 3), torch.randn(1000, 8))
>>> test = Factored(torch.randn(4, 3), torch.randn(4, 8))
>>> a = topk_scores(test, train, 5, block_bytes=2**16)
>>> b = topk_scores(test, train, 5, block_bytes=2**16, n_jobs=2)
>>> bool(torch.equal(a.pro_index, b.pro_index) and torch.equal(a.pro_value, b.pro_value))
True
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from joblib import Parallel, delayed, effective_n_jobs

from ._progress import progress
from .kernels.blocks import DEFAULT_BLOCK_BYTES, check_dense_size, dense_scores, plan_blocks, prefetch
from .kernels.embeddings import (
    Dense,
    Embedding,
    Factored,
    Sum,
    class_order,
    class_runs,
    dtype_of,
    map_tensors,
    norm_bound,
    pair_grouped,
)
from .kernels.topk import TopK, merge_topk, stream_topk
from .store import is_mapped, release_pages

__all__ = ["chunk_bounds", "topk_scores", "all_scores", "dask_client"]

_ATTEMPTS = 3
_POLL_S = 1.0  # how often a waiting task's inputs are checked for loss
_SCATTER_TIMEOUT_S = 60
_FIELDS = ("pro_index", "pro_value", "opp_index", "opp_value")
# the pruned top-k's slices of the training rows by decreasing norm: cumulative shares of the rows
_SLICES = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
# scores are rounded, the bound is exact: a margin far above float32's rounding of a dot product
_BOUND_MARGIN = 1e-3
# (client id, id of a training embedding, chunk bounds) -> futures of its scattered chunks
_SCATTERED: dict[tuple[str, int, tuple[tuple[int, int], ...]], list[Any]] = {}


def chunk_bounds(test: Embedding, train: Embedding, block_bytes: int, k: int = 1) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` over the training rows: one score block's worth each.

    A chunk's training rows also fit ``block_bytes``: a few test points must not make a chunk
    of the whole (possibly memory-mapped) training side.
    """
    rows = plan_blocks(test, train, block_bytes, min_train_rows=k).train_rows
    rows = max(k, min(rows, block_bytes // _row_bytes(train)))
    return [(s, min(s + rows, len(train))) for s in range(0, len(train), rows)]


def _row_bytes(e: Embedding) -> int:
    return max(1, sum(t[:1].numel() * t.element_size() for t in _tensors(e)))


def _tensors(e: Embedding) -> list[torch.Tensor]:
    """Every tensor an embedding holds."""
    found: list[torch.Tensor] = []

    def note(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    map_tensors(e, note)
    return found


def dask_client(client: Any = None) -> Any:
    """The Dask client to use: the one given, else joblib's active ``'dask'`` backend's, else None."""
    if client is not None:
        if not (hasattr(client, "scatter") and hasattr(client, "submit")):
            raise TypeError(f"client must be a dask.distributed.Client; got {type(client).__name__}.")
        return client
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    return getattr(backend, "client", None) if type(backend).__name__ == "DaskDistributedBackend" else None


def topk_scores(
    test: Embedding,
    train: Embedding,
    k: int,
    *,
    offset: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    n_jobs: int | None = None,
    client: Any = None,
    verbose: int = 0,
) -> TopK:
    """Exact top-k proponents and opponents of every test row over all training rows.

    Parameters
    ----------
    test, train : Embedding
    k : int
    offset : Tensor of shape (n_test,) or None
        Added to every score of a test row.
    device : torch device
        Where each chunk is scored.
    block_bytes : int
        Memory budget of one score block; also sets the chunk size.
    n_jobs : int or None
        Chunks scored at once by joblib (threads unless a ``joblib.parallel_backend`` says
        otherwise); None: 1 unless in a ``joblib.parallel_backend`` context, -1: all cores.
    client : dask.distributed.Client or None
        Score the chunks on a Dask cluster.
    verbose : int

    Returns
    -------
    TopK
    """
    k = min(int(k), len(train))
    test, order = _grouped_by_class(test)
    args = (device, block_bytes, n_jobs, client, verbose)
    if dask_client(client) is not None:  # a cluster keeps its scattered chunks: searched as they are
        running = _search(test, train, k, args, prune=False)
    else:
        prune = not _any_mapped(train)  # a store is read in order, not in slices by norm
        split = _by_class(test, train)
        if split is None:
            running = _search(test, train, k, args, prune)
        else:
            parts = [_search(t, tr, k, args, prune) for t, tr in split]
            running = TopK(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))
    rows = slice(None) if order is None else torch.argsort(order)  # back to the caller's order
    off = 0 if offset is None else offset.to(dtype_of(test)).reshape(-1, 1)
    return TopK(
        running.pro_index[rows], running.pro_value[rows] + off, running.opp_index[rows], running.opp_value[rows] + off
    )


def _search(test: Embedding, train: Embedding, k: int, args: tuple, prune: bool) -> TopK:
    """Top-k of test rows over training rows: pruned by norms and rescored where the rows are rank-1."""
    if not _rank_one(train):
        return _topk(test, train, k, *args)
    running = _pruned_topk(test, train, k, *args) if prune else _topk(test, train, k, *args)
    return _rescored(test, train, running)  # the same values, pruned or not


def _by_class(test: Embedding, train: Embedding) -> list[tuple[Factored, Factored]] | None:
    """Class-selecting test rows against full (k x d) training rows, as one rank-1 search per class.

    A test row that explains class c meets only column c of each training row (LJE's W_i):
    ``<a_t e_c (x) f_t, W_i> = a_tc <f_t, W_i[c]>``. Per class, the training rows are the d-vectors
    ``W_i[c]`` (contiguous in LJE's class-major storage), rank-1 rows that the search by norm
    prunes. None when the test rows do not each select one class (already grouped by class).
    """
    if not (isinstance(test, Factored) and isinstance(test.b, torch.Tensor)):
        return None
    if not (isinstance(train, Dense) and train.u.ndim == 3):
        return None
    runs = class_runs(test.a)
    if runs is None:
        return None
    ones = torch.ones(len(train), 1, dtype=train.u.dtype)
    return [(Factored(test.a[a:b, c : c + 1], test.b[a:b]), Factored(ones, train.u[:, c, :])) for a, b, c in runs]


def _topk(test: Embedding, train: Embedding, k: int, device: Any, block_bytes: int, *run: Any) -> TopK:
    """Top-k over every training row, chunk by chunk."""
    bounds = chunk_bounds(test, train, block_bytes, k)
    running: TopK | None = None
    for part in _map_chunks(_chunk_topk, test, train, bounds, device, block_bytes, (k,), *run):
        running = part if running is None else _merge(running, part, k)
    assert running is not None
    return running


def _pruned_topk(
    test: Embedding, train: Embedding, k: int, device: Any, block_bytes: int, n_jobs: Any, client: Any, verbose: int
) -> TopK:
    """:func:`_topk` over slices of the training rows by decreasing norm, test rows leaving when settled."""
    args = (device, block_bytes, n_jobs, client, 0)  # one progress bar, over the slices
    t_norm, v_norm = norm_bound(test, train)
    by_norm = torch.argsort(v_norm, descending=True, stable=True)
    n, m = len(train), len(test)
    ends = sorted({min(n, max(k, round(share * n))) for share in _SLICES})
    # a slice is gathered (copied) in pieces of a few score blocks' worth of training rows
    piece = max(k, 4 * block_bytes // _row_bytes(train))
    dtype = dtype_of(test)
    running = TopK(
        torch.zeros(m, k, dtype=torch.long),
        torch.full((m, k), -torch.inf, dtype=dtype),
        torch.zeros(m, k, dtype=torch.long),
        torch.full((m, k), torch.inf, dtype=dtype),
    )
    active = torch.arange(m)
    start = 0
    for stop in progress(ends, verbose, "explain top-k, by norm"):
        current = TopK(*(getattr(running, f)[active] for f in _FIELDS))
        rows = _take(test, active)
        for a in range(start, stop, piece):
            ids = by_norm[a : min(a + piece, stop)]
            part = _topk(rows, _take(train, ids), min(k, len(ids)), *args)
            part = TopK(ids[part.pro_index], part.pro_value, ids[part.opp_index], part.opp_value)
            current = _merge(current, part, k)
        for f in _FIELDS:
            getattr(running, f)[active] = getattr(current, f)
        start = stop
        if stop == n:
            break
        # no row left can beat a test row's k-th proponent and k-th opponent: it is settled
        reach = (t_norm[active] * float(v_norm[by_norm[stop]]) * (1 + _BOUND_MARGIN)).to(dtype)
        settled = (reach < current.pro_value[:, -1]) & (-reach > current.opp_value[:, -1])
        active = active[~settled]
        if not len(active):
            break
    return running


def _rescored(test: Embedding, train: Embedding, top: TopK, rows: int = 256) -> TopK:
    """The chosen pairs' scores computed again one pair at a time in float64, in the scores' dtype.

    Blocked products round a pair's score according to the block it fell in (its size, the
    backend, the slices of the pruned search); recomputed alone, a pair's score is the same
    wherever it was found, so top-k values do not depend on n_jobs, Dask or the pruning, and are
    as accurate as float64 allows.
    """
    dtype = dtype_of(test)
    index = torch.cat([top.pro_index, top.opp_index], 1)
    values = torch.empty(index.shape, dtype=dtype)
    for s in range(0, len(index), rows):
        chosen = _take(train, index[s : s + rows].reshape(-1)).to("cpu", torch.float64)
        values[s : s + rows] = pair_grouped(test.rows(s, s + rows).to("cpu", torch.float64), chosen)
    map_tensors(train, release_pages)  # the pages of a store that the gathers touched
    k = top.pro_index.shape[1]
    return TopK(top.pro_index, values[:, :k], top.opp_index, values[:, k:])


def _rank_one(e: Embedding) -> bool:
    """Whether every training row is rank-1 (k + d numbers), cheap to gather next to scoring it.

    Full (k x d) rows (LJE's, a convolution's gradients) cost as much to copy into a slice as
    to score, so they are scored where they lie, in blocks whose rounding does not depend on
    n_jobs either: they are neither pruned nor rescored.
    """
    return all(isinstance(t, Factored) for t in (e.terms if isinstance(e, Sum) else (e,)))


def _take(e: Embedding, ids: torch.Tensor) -> Embedding:
    """Rows ``ids`` of an embedding (a copy)."""
    return map_tensors(e, lambda t: t[ids])


def _any_mapped(e: Embedding) -> bool:
    return any(is_mapped(t) for t in _tensors(e))


def all_scores(
    test: Embedding,
    train: Embedding,
    *,
    offset: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_dense_bytes: int,
    n_jobs: int | None = None,
    client: Any = None,
    verbose: int = 0,
) -> torch.Tensor:
    """The full (n_test, n_train) score matrix, chunk by chunk; refused above ``max_dense_bytes``."""
    check_dense_size(test, train, max_dense_bytes)
    test, order = _grouped_by_class(test)
    bounds = chunk_bounds(test, train, block_bytes)
    out = torch.empty(len(test), len(train), dtype=dtype_of(test))
    rows = slice(None) if order is None else order
    parts = _map_chunks(_chunk_dense, test, train, bounds, device, block_bytes, (), n_jobs, client, verbose)
    for (start, stop), block in zip(bounds, parts, strict=True):
        out[rows, start:stop] = block
    if offset is not None:
        out += offset.to(out.dtype).reshape(-1, 1)
    return out


def _grouped_by_class(test: Embedding) -> tuple[Embedding, torch.Tensor | None]:
    """The test rows grouped by the class they select (see ``class_order``), and that order."""
    order = class_order(test)
    return (test, None) if order is None else (_take(test, order), order)


def _chunk_topk(test: Embedding, chunk: Embedding, start: int, device: Any, block_bytes: int, k: int) -> TopK:
    tk = stream_topk(test, chunk, k, device=device, block_bytes=block_bytes)
    return TopK(tk.pro_index + start, tk.pro_value, tk.opp_index + start, tk.opp_value)


def _chunk_dense(test: Embedding, chunk: Embedding, start: int, device: Any, block_bytes: int) -> torch.Tensor:
    # the size was checked for the whole matrix before any chunk ran
    return dense_scores(test, chunk, device=device, block_bytes=block_bytes, max_dense_bytes=2**63)


def _merge(a: TopK, b: TopK, k: int) -> TopK:
    pv, pi = merge_topk(torch.cat([a.pro_value, b.pro_value], 1), torch.cat([a.pro_index, b.pro_index], 1), k, True)
    ov, oi = merge_topk(torch.cat([a.opp_value, b.opp_value], 1), torch.cat([a.opp_index, b.opp_index], 1), k, False)
    return TopK(pi, pv, oi, ov)


def _map_chunks(
    fn: Callable[..., Any],
    test: Embedding,
    train: Embedding,
    bounds: list[tuple[int, int]],
    device: Any,
    block_bytes: int,
    extra: tuple,
    n_jobs: int | None,
    client: Any,
    verbose: int,
) -> Iterator[Any]:
    """``fn(test, train[start:stop], start, device, block_bytes, *extra)`` for every chunk, in chunk order."""
    args = (device, block_bytes, *extra)
    client = dask_client(client)
    if client is not None:
        yield from _dask_map(client, fn, test, train, bounds, args, verbose)
        return
    test = test.to(device)  # once, not once per chunk
    results: Iterable[Any]
    if effective_n_jobs(n_jobs) == 1:
        chunks = prefetch((train.rows(a, b) for a, b in bounds), device)
        results = (fn(test, chunk, a, *args) for (a, _), chunk in zip(bounds, chunks, strict=True))
    else:
        jobs = (delayed(fn)(test, train.rows(a, b), a, *args) for a, b in bounds)
        # threads by default (torch releases the GIL; nothing is copied); a joblib.parallel_backend
        # context chooses another backend
        results = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(jobs)
    for (start, stop), result in progress(zip(bounds, results, strict=True), verbose, "explain", total=len(bounds)):
        yield result
        map_tensors(train.rows(start, stop), release_pages)  # a store's pages: one chunk's worth at a time


def _dask_map(
    client: Any,
    fn: Callable[..., Any],
    test: Embedding,
    train: Embedding,
    bounds: list[tuple[int, int]],
    args: tuple,
    verbose: int,
) -> Iterator[Any]:
    chunks = _scattered(client, train, bounds)
    box = {"test": _scatter_test(client, test)}

    def submit(i: int) -> Any:
        return client.submit(fn, box["test"], chunks[i], bounds[i][0], *args, pure=False)

    def resend_lost(i: int) -> None:
        # a task whose worker died is rerun by Dask itself; data that died with its worker is
        # sent again from here, where the test and training sides live
        if box["test"].status != "finished":
            box["test"] = _scatter_test(client, test)
        if chunks[i].status != "finished":
            chunks[i] = _scatter_chunk(client, train, bounds[i])
        futures[i] = submit(i)

    futures = [submit(i) for i in range(len(bounds))]
    try:
        for i in progress(range(len(bounds)), verbose, "explain (dask)", total=len(bounds)):
            failures = 0
            while True:
                try:
                    yield futures[i].result(timeout=_POLL_S)
                    break
                except TimeoutError:
                    if box["test"].status != "finished" or chunks[i].status != "finished":
                        resend_lost(i)
                except Exception:
                    failures += 1
                    if failures == _ATTEMPTS:
                        raise
                    resend_lost(i)
    finally:
        client.cancel([*futures, box["test"]])


def _scatter_test(client: Any, test: Embedding) -> Any:
    return _scatter(client, map_tensors(test, torch.clone), broadcast=True)


def _scatter(client: Any, data: Any, broadcast: bool = False) -> Any:
    for attempt in range(_ATTEMPTS):
        try:
            return client.scatter(data, broadcast=broadcast, hash=False, timeout=_SCATTER_TIMEOUT_S)
        except (OSError, TimeoutError):  # a worker died and the scheduler has not noticed yet
            if attempt == _ATTEMPTS - 1:
                raise
            time.sleep(_POLL_S * (attempt + 1))


def _scattered(client: Any, train: Embedding, bounds: list[tuple[int, int]]) -> list[Any]:
    """Futures of the training chunks on the cluster, scattered on first use (and again if lost)."""
    key = (str(client.id), id(train), tuple(bounds))
    futures = _SCATTERED.get(key)
    if futures is None:
        futures = [None] * len(bounds)
        _SCATTERED[key] = futures
        weakref.finalize(train, _SCATTERED.pop, key, None)
    for i, f in enumerate(futures):
        if f is None or f.status != "finished":
            futures[i] = _scatter_chunk(client, train, bounds[i])
    return futures


def _scatter_chunk(client: Any, train: Embedding, bound: tuple[int, int]) -> Any:
    # a chunk that owns its memory: a view would carry its whole storage along
    return _scatter(client, map_tensors(train.rows(*bound), torch.clone))
