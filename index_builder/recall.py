"""Measure an index against exact search, with faiss.contrib helpers."""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn_ground_truth

from index_builder.params import search_parameters


def _valid_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]]):
    for x, valid in blocks:
        yield x[valid]


def measure_recall(
    index: faiss.Index,
    queries: np.ndarray,
    query_ids: np.ndarray,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int = 10,
    nprobes: Iterable[int] = (),
) -> dict:
    """Compare `index` with exact inner-product search over the same vectors.

    `blocks` yields (vectors, valid mask) in global-id order (the database, streamed).
    Returns recall_at_k (mean overlap of the top-k lists, 1.0 = identical sets) and
    self_at_1 (share of stored-vector queries that find their own id first), at the index's
    own nprobe, and `by_nprobe`: recall_at_k at each of `nprobes` (per-call parameters).
    """
    k = min(k, index.ntotal)
    _, gt = knn_ground_truth(queries, _valid_blocks(blocks), k, metric_type=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, k)
    curve = []
    for nprobe in nprobes:
        _, at = index.search(queries, k, params=search_parameters(index, nprobe))
        curve.append({"nprobe": nprobe, "recall_at_k": float(knn_intersection_measure(at, gt))})
    return {
        "queries": int(len(queries)),
        "k": k,
        "recall_at_k": float(knn_intersection_measure(found, gt)),
        "self_at_1": float(np.mean(found[:, 0] == query_ids)),
        "by_nprobe": curve,
    }
