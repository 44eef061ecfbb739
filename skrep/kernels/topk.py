"""Streaming top-k: the k strongest proponents and opponents per test point, never the dense matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import DEFAULT_BLOCK_BYTES, iter_blocks, plan_blocks
from .embeddings import Embedding, dtype_of

__all__ = ["TopK", "stream_topk", "merge_topk"]


@dataclass(frozen=True)
class TopK:
    """Per test point, the k largest (proponents) and k smallest (opponents) scores, sorted by strength."""

    pro_index: torch.Tensor
    pro_value: torch.Tensor
    opp_index: torch.Tensor
    opp_value: torch.Tensor


def merge_topk(values: torch.Tensor, index: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best of each row of ``values`` with their ``index`` (same shape)."""
    v, j = torch.topk(values, min(k, values.shape[1]), dim=1, largest=largest, sorted=True)
    return v, torch.gather(index, 1, j)


def stream_topk(
    test: Embedding,
    train: Embedding,
    k: int,
    *,
    offset: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    verbose: int = 0,
) -> TopK:
    """Exact top-k of <u_t, v_i> (+ offset_t) over training points, block by block.

    The running best k of a test chunk are merged with each training block's best k, so the
    result equals a dense argsort's top-k (up to ties) while memory stays O(block + n_test * k).
    """
    n_test, n_train = len(test), len(train)
    k = min(int(k), n_train)
    plan = plan_blocks(test, train, block_bytes, min_train_rows=k)
    dtype = dtype_of(test)
    out = {
        flag: (torch.empty(n_test, k, dtype=dtype), torch.empty(n_test, k, dtype=torch.long)) for flag in (True, False)
    }
    running: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
    for ts, ns, s in iter_blocks(test, train, plan, device, verbose, "explain top-k"):
        for largest in (True, False):
            v, j = torch.topk(s, min(k, s.shape[1]), dim=1, largest=largest, sorted=False)
            j += ns
            if ns > 0:
                v, j = merge_topk(
                    torch.cat([running[largest][0], v], 1), torch.cat([running[largest][1], j], 1), k, largest
                )
            running[largest] = (v, j)
        if ns + s.shape[1] == n_train:  # last training block of this test chunk: sort and store
            for largest, (v, j) in running.items():
                v, j = merge_topk(v, j, k, largest)
                out[largest][0][ts : ts + len(v)] = v.cpu()
                out[largest][1][ts : ts + len(v)] = j.cpu()
    (pv, pi), (ov, oi) = out[True], out[False]
    if offset is not None:
        off = offset.to(dtype).reshape(-1, 1)
        pv, ov = pv + off, ov + off
    return TopK(pi, pv, oi, ov)
