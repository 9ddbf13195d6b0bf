"""Retrieval quality of a model on labelled pairs (a query and its one target item): recall@k with
exact inner-product search (faiss). Used by `evaluate` and fine-tuning; no index is involved (an
index against exact search: index_builder.measure)."""

from __future__ import annotations

import faiss
import numpy as np


def recall_at_k(queries: np.ndarray, items: np.ndarray, targets: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Share of queries whose target item (row index into `items`) is in their top k.

    queries [q, d], items [n, d], both L2-normalised; exact search with IndexFlatIP.
    Returns {"R@1": ..., "R@5": ..., "R@10": ...}.
    """
    items = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    _, found = index.search(queries, min(max(ks), len(items)))
    hit_rank = np.full(len(queries), np.inf)
    rows, cols = np.nonzero(found == np.asarray(targets)[:, None])
    hit_rank[rows] = cols
    return {f"R@{k}": float(np.mean(hit_rank < k)) for k in ks}
