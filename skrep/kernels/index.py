"""Approximate nearest-neighbour indexes for low-latency top-k by inner product.

The TracIn paper (appendix C) finds the strongest proponents of a test point by a maximum
inner-product search over precomputed (projected) training gradients; opponents are the
strongest proponents of the negated query. Two optional back ends: faiss (HNSW, inner-product
metric) and hnswlib (space 'ip').
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["InnerProductIndex"]


class InnerProductIndex:
    """An HNSW index over rows of ``vectors`` (n, D) answering top-k inner-product queries.

    Parameters
    ----------
    vectors : ndarray (n, D), float32
    backend : {'faiss', 'hnsw'}
    random_state : int
        Seeds the graph construction (hnswlib); faiss builds its graph deterministically.
    M, ef_construction, ef_search : int
        HNSW graph degree and search breadth: larger is more exact and slower.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        backend: str = "hnsw",
        random_state: int = 0,
        M: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._args = (vectors, backend, random_state, M, ef_construction, ef_search)
        n, dim = vectors.shape
        self.backend, self.n, self.ef_search = backend, n, ef_search
        self._index: Any  # faiss.IndexHNSWFlat or hnswlib.Index
        if backend == "faiss":
            try:
                import faiss
            except ImportError as e:
                raise ImportError("index='faiss' needs faiss: pip install faiss-cpu") from e
            self._index = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = ef_construction
            self._index.add(vectors)
        elif backend == "hnsw":
            try:
                import hnswlib
            except ImportError as e:
                raise ImportError("index='hnsw' needs hnswlib: pip install hnswlib") from e
            self._index = hnswlib.Index(space="ip", dim=dim)
            self._index.init_index(max_elements=n, ef_construction=ef_construction, M=M, random_seed=int(random_state))
            self._index.add_items(vectors, np.arange(n), num_threads=1)
        else:
            raise ValueError(f"index must be None, 'faiss' or 'hnsw'; got {backend!r}.")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k rows with the largest inner product with each query: (indices, values), largest first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self.n)
        ef = max(self.ef_search, 2 * k)
        if self.backend == "faiss":
            self._index.hnsw.efSearch = ef
            values, idx = self._index.search(queries, k)
        else:
            self._index.set_ef(ef)
            idx, dist = self._index.knn_query(queries, k=k, num_threads=1)
            values = 1.0 - dist  # hnswlib's 'ip' distance is 1 - <q, v>
        return idx.astype(np.int64), values.astype(np.float32)

    def __reduce__(self):
        # the native indexes do not pickle; rebuilding from the same vectors and seed is exact
        return (InnerProductIndex, self._args)
