"""Blocked (test x train) scoring under a memory budget."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from .._progress import progress
from .embeddings import Embedding, Factored, Sum, dtype_of, map_tensors, pair_block

__all__ = [
    "BlockPlan",
    "plan_blocks",
    "iter_blocks",
    "dense_scores",
    "check_dense_size",
    "prefetch",
    "resolve_device",
    "DEFAULT_BLOCK_BYTES",
    "DEFAULT_MAX_DENSE_BYTES",
]

DEFAULT_BLOCK_BYTES = 64 * 2**20
DEFAULT_MAX_DENSE_BYTES = 2 * 2**30


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is CUDA when available, else the CPU; anything else is checked and returned."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use device='auto'.")
    return dev


@dataclass(frozen=True)
class BlockPlan:
    """Rows of test and train per block, chosen so that one block's temporaries fit the budget."""

    test_rows: int
    train_rows: int


def plan_blocks(test: Embedding, train: Embedding, block_bytes: int, min_train_rows: int = 1) -> BlockPlan:
    """Choose block sizes so that the score block and its temporaries take about ``block_bytes``.

    A factored pair needs two (m, n) matrices; a dense-by-factored pair needs an (m, k, n) one.
    """
    elem = torch.empty((), dtype=dtype_of(test)).element_size()
    per_cell = elem * _cell_factor(test, train)
    cells = max(1, int(block_bytes) // per_cell)
    n_test, n_train = len(test), len(train)
    test_rows = max(1, min(n_test, cells // max(1, min(n_train, 4096))))
    train_rows = max(min(min_train_rows, n_train), min(n_train, cells // test_rows))
    return BlockPlan(test_rows, train_rows)


def _cell_factor(test: Embedding, train: Embedding) -> int:
    """Score-sized temporaries one pair of embeddings needs."""
    if isinstance(test, Sum) and isinstance(train, Sum):
        return 1 + max(_cell_factor(u, v) for u, v in zip(test.terms, train.terms, strict=True))
    if isinstance(test, Factored) == isinstance(train, Factored):
        return 2
    return test.shape[0] + 1


def iter_blocks(
    test: Embedding,
    train: Embedding,
    plan: BlockPlan,
    device: torch.device | str,
    verbose: int = 0,
    desc: str = "scores",
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(test_start, train_start, scores)`` for every block; scores live on ``device``."""
    t_starts = range(0, len(test), plan.test_rows)
    n_starts = range(0, len(train), plan.train_rows)
    steps = ((ts, ns) for ts in t_starts for ns in n_starts)
    current, test_block = -1, test
    for ts, ns in progress(steps, verbose, desc, total=len(t_starts) * len(n_starts)):
        if ts != current:
            current, test_block = ts, test.rows(ts, ts + plan.test_rows).to(device)
        train_block = train.rows(ns, ns + plan.train_rows).to(device)
        yield ts, ns, pair_block(test_block, train_block)


def dense_scores(
    test: Embedding,
    train: Embedding,
    *,
    offset: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    verbose: int = 0,
) -> torch.Tensor:
    """The full (n_test, n_train) score matrix, refused above ``max_dense_bytes``.

    ``offset`` (n_test,) is added to every score of a test row (a share that every training
    point gets equally, e.g. LJE's anchor term).
    """
    check_dense_size(test, train, max_dense_bytes)
    out = torch.empty(len(test), len(train), dtype=dtype_of(test))
    plan = plan_blocks(test, train, block_bytes)
    for ts, ns, s in iter_blocks(test, train, plan, device, verbose, "explain"):
        out[ts : ts + s.shape[0], ns : ns + s.shape[1]] = s.cpu()
    if offset is not None:
        out += offset.to(out.dtype).reshape(-1, 1)
    return out


def _used_on(stream: torch.cuda.Stream) -> Callable[[torch.Tensor], torch.Tensor]:
    def record(t: torch.Tensor) -> torch.Tensor:
        t.record_stream(stream)
        return t

    return record


def check_dense_size(test: Embedding, train: Embedding, max_dense_bytes: int) -> None:
    """Refuse a dense (n_test, n_train) result larger than ``max_dense_bytes``, saying what to do."""
    need = len(test) * len(train) * torch.empty((), dtype=dtype_of(test)).element_size()
    if need > max_dense_bytes:
        raise ValueError(
            f"The dense explanation would take {need / 2**30:.2f} GiB for {len(test)} test x {len(train)} "
            f"training points (max_dense_bytes={max_dense_bytes / 2**30:.2f} GiB). Pass top_k=... to keep only "
            "the strongest proponents and opponents, explain fewer test points at a time, or raise "
            "max_dense_bytes."
        )


def prefetch(blocks: Iterable[Embedding], device: torch.device | str) -> Iterator[Embedding]:
    """The blocks on ``device``; on CUDA each is copied one block ahead of its use.

    The copy of block i+1 runs from pinned host memory on a side stream while the kernels of
    block i run on the current stream, so transfer and compute overlap. On the CPU the blocks
    pass through unchanged.
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield from blocks
        return
    side = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)

    def start(block: Embedding) -> tuple[Embedding, torch.cuda.Event]:
        with torch.cuda.stream(side):
            moved = map_tensors(block, lambda t: t.pin_memory().to(device, non_blocking=True))
            ready = torch.cuda.Event()
            ready.record(side)
        return moved, ready

    def hand_over(pending: tuple[Embedding, torch.cuda.Event]) -> Embedding:
        moved, ready = pending
        compute.wait_event(ready)
        # memory allocated on the side stream is used on the compute stream: tell the allocator
        map_tensors(moved, _used_on(compute))
        return moved

    pending = None
    for block in blocks:
        nxt = start(block)
        if pending is not None:
            yield hand_over(pending)
        pending = nxt
    if pending is not None:
        yield hand_over(pending)
