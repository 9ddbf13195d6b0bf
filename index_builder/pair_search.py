"""Finding the pairs of stored vectors at cosine >= a threshold, in batches (never n^2 memory).

Two ways, both yielding `Edges` a batch at a time, scored on the stored vectors:

- `Lists` (a join over inverted lists): each searched row probes its `nprobe` nearest lists and
  is compared with every row whose list that is, a list at a time, as one matrix product
  (BLAS) per block of queries. Every pair in a probed list at or above the threshold is found:
  exactly what an IVF range search at that nprobe finds, on exact scores. `build_lists` makes
  one for a column; `index_lists` reads one from a built IVF index (its quantizer, nprobe and
  list contents, so a compressed index costs no extra memory and no training).
- `Knn` (an index without lists, e.g. HNSW or K flat shards): a k-NN search of each row, k
  growing x4 (up to `max_k`) while the k-th candidate is still at or above the threshold;
  candidates are confirmed on the stored vectors (compressed codes only rank).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from index_builder.split import members

BLOCK = 1 << 22  # scores computed at once in a join (16 MiB of float32)


@dataclass
class Edges:
    """Pairs: rows a[i] and b[i] at cosine sim[i]."""

    a: np.ndarray
    b: np.ndarray
    sim: np.ndarray

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))


def cosines(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, step: int = 65536) -> np.ndarray:
    """[m] cosines of the stored rows a[i] and b[i]."""
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), step):
        out[s : s + step] = np.einsum("ij,ij->i", vectors[a[s : s + step]], vectors[b[s : s + step]])
    return out


@dataclass(frozen=True)
class Lists:
    """Inverted lists over the rows: a quantizer ranking the lists for a vector, the rows of each
    list (`rows[offsets[l]:offsets[l + 1]]`), and how many lists a searched row probes."""

    quantizer: faiss.Index
    nprobe: int
    offsets: np.ndarray
    rows: np.ndarray
    transform: Callable[[np.ndarray], np.ndarray] | None = None  # into the quantizer's space (OPQ, PCA)
    owner: object = None  # the index the quantizer belongs to (SWIG frees it with its index)
    known: np.ndarray | None = None  # [n, nprobe] int32: every row's probes, when computed already

    @property
    def nlist(self) -> int:
        return len(self.offsets) - 1

    def probes(self, vectors: np.ndarray, rows: np.ndarray, batch: int = 65536) -> np.ndarray:
        """[len(rows), nprobe] the lists each row probes."""
        if self.known is not None:
            return self.known[rows].astype(np.int64)
        out = np.empty((len(rows), self.nprobe), np.int64)
        for s in range(0, len(rows), batch):
            x = np.ascontiguousarray(vectors[rows[s : s + batch]], dtype=np.float32)
            out[s : s + batch] = self.quantizer.search(self.transform(x) if self.transform else x, self.nprobe)[1]
        return out


def _grouped(keys: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], values sorted by key): values[offsets[k]:offsets[k+1]] have key k."""
    order = np.argsort(keys, kind="stable")
    return np.r_[0, np.cumsum(np.bincount(keys, minlength=n))], values[order]


def build_lists(vectors: np.ndarray, nprobe: int = 8, seed: int = 0, flat_below: int = 20_000) -> Lists:
    """Lists for `vectors` when no index has them: one list (every pair compared) below
    `flat_below` rows, else ~2 sqrt(n) lists (spherical k-means, 10 iterations on 40 vectors a
    list; fewer lists than an index would use, as training and assigning then cost about what the
    join does); near copies almost always share a list or the next ones. Every row's probes are
    kept (n x nprobe int32) so a full pass does not rank the lists twice."""
    n, d = vectors.shape
    if n < flat_below:
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.zeros((1, d), np.float32))
        return Lists(quantizer, 1, np.array([0, n]), np.arange(n))
    nlist = int(2 * np.sqrt(n))
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False))
    kmeans = faiss.Kmeans(d, nlist, niter=10, seed=seed, spherical=True)
    kmeans.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(kmeans.centroids)
    nprobe = min(nprobe, nlist)
    ranked = Lists(quantizer, nprobe, np.zeros(nlist + 1, np.int64), np.zeros(0, np.int64))
    known = np.empty((n, nprobe), np.int32)
    for s in range(0, n, 65536):
        known[s : s + 65536] = ranked.probes(vectors, np.arange(s, min(n, s + 65536)))
    offsets, rows = _grouped(known[:, 0].astype(np.int64), np.arange(n), nlist)
    return Lists(quantizer, nprobe, offsets, rows, known=known)


def index_lists(index: faiss.Index, nprobe: int | None) -> Lists | None:
    """The Lists of a built IVF index (index shards share the quantizer: their lists are merged),
    whose faiss ids are the rows; None when it has no inverted lists."""
    parts = members(index)
    transform = None
    inner = faiss.downcast_index(parts[0])
    if isinstance(inner, faiss.IndexPreTransform):
        transform = _chain([faiss.downcast_VectorTransform(inner.chain.at(i)) for i in range(inner.chain.size())])
        inner = faiss.downcast_index(inner.index)
    if not isinstance(inner, faiss.IndexIVF):
        return None
    keys, ids = [], []
    for part in parts:
        ivf = faiss.extract_index_ivf(part)
        inv = ivf.invlists
        for lst in range(ivf.nlist):
            size = inv.list_size(lst)
            if size:
                ptr = inv.get_ids(lst)
                ids.append(np.array(faiss.rev_swig_ptr(ptr, size), dtype=np.int64))
                inv.release_ids(lst, ptr)
                keys.append(np.full(size, lst, np.int64))
    flat_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    offsets, rows = _grouped(flat_keys, np.concatenate(ids) if ids else flat_keys, inner.nlist)
    return Lists(inner.quantizer, min(nprobe or inner.nprobe, inner.nlist), offsets, rows, transform, owner=index)


def _chain(transforms: list) -> Callable[[np.ndarray], np.ndarray]:
    def apply(x: np.ndarray) -> np.ndarray:
        for t in transforms:
            x = t.apply(x)
        return x

    return apply


def join_edges(
    lists: Lists, vectors: np.ndarray, rows: np.ndarray, threshold: float, threads: int | None = None
) -> Iterator[Edges]:
    """The pairs (searched row, row of a list it probes) at cosine >= threshold, a list at a time,
    lists shared among `threads` threads (default: faiss's OpenMP threads) each calling a
    one-thread BLAS: OpenBLAS's own threads on these small products cost 6x the CPU (measured)."""
    probes = lists.probes(vectors, rows)
    q_offsets, queries = _grouped(probes.reshape(-1), np.repeat(rows, lists.nprobe), lists.nlist)
    del probes

    def one(lst: int) -> list[Edges]:
        q = queries[q_offsets[lst] : q_offsets[lst + 1]]
        m = lists.rows[lists.offsets[lst] : lists.offsets[lst + 1]]
        return _list_pairs(vectors, q, m, threshold) if len(q) and len(m) else []

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads or faiss.omp_get_max_threads()) as pool:
        for found in pool.map(one, range(lists.nlist)):
            yield from found


def _list_pairs(vectors: np.ndarray, q: np.ndarray, m: np.ndarray, threshold: float) -> list[Edges]:
    """Pairs of query rows `q` and member rows `m` at cosine >= threshold, BLOCK scores at a time."""
    xm, out = np.ascontiguousarray(vectors[m], dtype=np.float32), []
    step = max(1, BLOCK // len(m))
    for s in range(0, len(q), step):
        qs = q[s : s + step]
        scores = vectors[qs] @ xm.T
        i, j = np.nonzero(scores >= threshold)
        keep = qs[i] != m[j]
        if keep.any():
            out.append(Edges(qs[i][keep], m[j][keep], scores[i[keep], j[keep]].astype(np.float32)))
    return out


@dataclass(frozen=True)
class Knn:
    """An index holding vectors[i] under faiss id i, searched k-NN (no inverted lists to join)."""

    index: faiss.Index
    params: faiss.SearchParameters | None = None
    exact_scores: bool = True  # False for compressed codes: their scores only rank
    k: int = 32
    max_k: int = 1024


def knn_edges(
    knn: Knn, vectors: np.ndarray, rows: np.ndarray, threshold: float, stats: dict, batch: int = 2048
) -> Iterator[Edges]:
    """Pairs from a k-NN search of vectors[rows]; rows with `max_k` neighbours at or above the
    threshold are joined to those only and counted in `stats["saturated"]`."""
    ntotal = knn.index.ntotal
    if ntotal < 2:
        return
    for start in range(0, len(rows), batch):
        todo, kk = rows[start : start + batch], min(knn.k, ntotal)
        while len(todo):
            scores, found = knn.index.search(np.ascontiguousarray(vectors[todo]), kk, params=knn.params)
            if not knn.exact_scores:
                scores = _stored_cosines(vectors, todo, found)
            hit = (scores >= threshold) & (found >= 0) & (found != todo[:, None])
            a, b = np.broadcast_to(todo[:, None], found.shape)[hit], found[hit]
            sim = cosines(vectors, a, b)
            yield Edges(a[sim >= threshold], b[sim >= threshold], sim[sim >= threshold])
            full = scores[:, -1] >= threshold
            if kk >= min(knn.max_k, ntotal):
                stats["saturated"] = stats.get("saturated", 0) + (int(full.sum()) if kk < ntotal else 0)
                break
            todo, kk = todo[full], min(kk * 4, knn.max_k, ntotal)


def _stored_cosines(vectors: np.ndarray, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
    """[q, k] cosines of vectors[rows] to vectors[found] (-inf where nothing was found), a few
    queries at a time (the gathered candidates are q x k x d floats)."""
    out = np.full(found.shape, -np.inf, np.float32)
    step = max(1, BLOCK // (found.shape[1] * vectors.shape[1]))
    for s in range(0, len(rows), step):
        f = found[s : s + step]
        cos = np.einsum("qd,qkd->qk", vectors[rows[s : s + step]], vectors[np.maximum(f, 0)])
        out[s : s + step] = np.where(f >= 0, cos, -np.inf)
    return out
