"""Kernels: blocked scoring of influence embeddings, exact streaming top-k, solvers.

Nothing here knows which method calls it: it gets tensors.
"""

from .blocks import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_MAX_DENSE_BYTES,
    BlockPlan,
    dense_scores,
    iter_blocks,
    plan_blocks,
    resolve_device,
)
from .embeddings import Dense, Embedding, Factored, Sum, dtype_of, flatten, pair_block, pair_rows, total
from .topk import TopK, merge_topk, stream_topk

__all__ = [
    "BlockPlan",
    "DEFAULT_BLOCK_BYTES",
    "DEFAULT_MAX_DENSE_BYTES",
    "Dense",
    "Embedding",
    "Factored",
    "Sum",
    "TopK",
    "dtype_of",
    "flatten",
    "dense_scores",
    "iter_blocks",
    "merge_topk",
    "pair_block",
    "pair_rows",
    "plan_blocks",
    "resolve_device",
    "stream_topk",
    "total",
]
