"""Measure an index against exact search, with faiss.contrib helpers: the exact ground truth,
recall@k at an nprobe, search latency (used by the build and by evaluate-index).

Queries are vectors of the data itself (held out of training where there are any). Each query
is excluded from its own ground truth and from its own results: a stored vector finds itself
first in almost any index, which would flatter recall@1 (and recall@k by 1/k).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn_ground_truth

from index_builder.mapped_lists import mapped_lists, query_batch, release_mapped_lists
from index_builder.params import search_parameters

KS = (1, 10, 100)  # recall@k recorded for each of these k (those below ntotal)


def _valid_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]]):
    for x, valid in blocks:
        yield x if valid.all() else x[valid]


def truth_width(k: int, ntotal: int) -> int:
    """How many exact neighbours each query needs: enough for recall@k and every k of KS, and
    never more than the other vectors there are."""
    return min(max(*KS, k), max(1, ntotal - 1))


def drop_self(found: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """[q, k+1] result ids -> [q, k]: each row without its query's own id (or without its last
    entry when the query is not among them)."""
    keep = found != query_ids[:, None]
    keep[keep.all(axis=1), -1] = False
    return found[keep].reshape(len(found), found.shape[1] - 1)


def exact_neighbours(
    queries: np.ndarray, query_ids: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> np.ndarray:
    """[q, k] global ids of each query's k nearest stored vectors by inner product, itself
    excluded. `blocks` yields (vectors, valid mask) in global-id order (the database, streamed)."""
    _, gt = knn_ground_truth(queries, _valid_blocks(blocks), k + 1, metric_type=faiss.METRIC_INNER_PRODUCT)
    return drop_self(gt, query_ids)


def recall_at(
    index: faiss.Index,
    queries: np.ndarray,
    query_ids: np.ndarray,
    gt: np.ndarray,
    nprobe: int | None,
    ks: Iterable[int] = KS,
) -> dict[str, float]:
    """{"1": r, "10": r, "100": r} (each k of `ks` up to gt's width): the mean overlap of the
    index's top k with the exact top k (1.0 = the same sets), at `nprobe` (a per-call parameter)."""
    width = gt.shape[1]
    params = None if nprobe is None else search_parameters(index, nprobe)
    mapped = mapped_lists(index)
    batch = query_batch(mapped, nprobe) or len(queries)
    found = np.empty((len(queries), width + 1), np.int64)
    for i in range(0, len(queries), batch):  # on-disk lists: a batch's pages unmapped before the next
        found[i : i + batch] = index.search(queries[i : i + batch], width + 1, params=params)[1]
        release_mapped_lists(mapped)
    found = drop_self(found, query_ids)
    return {str(n): float(knn_intersection_measure(found[:, :n], gt[:, :n])) for n in sorted(ks) if n <= width}


def latency(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None) -> dict[str, float]:
    """Search latency at `nprobe`: milliseconds per query one query at a time (up to 200 calls),
    and per batch of 1024 queries (the queries repeated to fill it), with the current OpenMP threads.

    Lists on disk are timed as a server that has them mapped searches them (warm), but not all
    at once: the queries go in chunks touching about memory.RELEASE_BYTES of lists, each searched
    once untimed (mapping its pages from the page cache), then timed, then unmapped; the batch
    time is the sum of its chunks' ("chunk" in the record). Mapping the whole file would put it
    in the build's RSS."""
    params = None if nprobe is None else search_parameters(index, nprobe)
    k = min(k, index.ntotal)
    mapped = mapped_lists(index)
    chunk = query_batch(mapped, nprobe, floor=4 * faiss.omp_get_max_threads())

    def timed(x: np.ndarray, one_by_one: bool) -> float:
        spent = 0.0
        for i in range(0, len(x), chunk or len(x)):
            part = x[i : i + (chunk or len(x))]
            if mapped:
                index.search(part, k, params=params)  # maps the pages this chunk reads
            t = time.perf_counter()
            if one_by_one:
                for q in part:
                    index.search(q[None, :], k, params=params)
            else:
                index.search(part, k, params=params)
            spent += time.perf_counter() - t
            release_mapped_lists(mapped)
        return spent

    singles = queries[:200]
    index.search(singles[:1], k, params=params)  # warm up
    one = timed(singles, True) / len(singles)
    many = timed(np.ascontiguousarray(np.resize(queries, (1024, queries.shape[1]))), False)
    return {"batch_1_ms": round(one * 1e3, 4), "batch_1024_ms": round(many * 1e3, 3),
            "batch_1024_us_per_query": round(many / 1024 * 1e6, 3),
            **({"chunk": chunk} if mapped else {})}  # fmt: skip
