"""Near-duplicate groups over stored vectors: pure numpy + faiss, no files.

    groups = find_groups(ids, vectors, threshold, keys=exact_keys(...), search=...)

Contract
- `vectors` [n, d] float32, L2-normalised (a numpy array or a memmap); `ids` [n] strings.
- An edge joins two rows when their cosine on the stored vectors is >= `threshold`, or when they
  share an exact key (same image bytes, same caption: `exact_keys`), which needs no search.
- Groups are the connected components of the edges (union-find), so two members of a group may
  be below the threshold to each other when a chain joins them. `group_id` is the smallest id of
  the group (stable while that member stays); `similarity` (float32) is the row's highest cosine
  to another member found joined to it, >= the threshold by construction.
- Near copies come from a k-NN search of each searched row's stored vector in `search.index`
  (which holds vectors[i] under faiss id i; `build_search` makes one when the caller has none):
  k grows (x4, up to `max_k`) while the k-th neighbour still scores above the threshold, so a
  row in a cluster of up to `max_k` copies sees all of them; every candidate is confirmed on
  the stored vectors. Memory: the vectors, plus one batch of `batch x k` results, not n^2.
- Incremental (`previous` + `fresh`): only the rows new or changed (`fresh`) and the remaining
  members of the previous groups that lost a member (a changed or deleted row) are searched;
  previous groups that lost nobody are kept whole. Under exact search this gives the groups a
  full pass would (an edge between two unchanged rows already joined them last time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

GROUPS_SCHEMA = pa.schema([("id", pa.string()), ("group_id", pa.string()), ("similarity", pa.float32())])


@dataclass(frozen=True)
class Search:
    """A search structure holding vectors[i] under faiss id i, and how to query it."""

    index: faiss.Index
    params: faiss.SearchParameters | None = None  # e.g. the index's nprobe, per call
    exact_scores: bool = True  # False for compressed codes (PQ, SQ...): their scores only rank


@dataclass
class Edges:
    """Confirmed pairs: rows a[i] and b[i] at cosine sim[i]."""

    a: np.ndarray
    b: np.ndarray
    sim: np.ndarray

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    @classmethod
    def concat(cls, parts: list[Edges]) -> Edges:
        parts = [p for p in parts if len(p.a)] or [cls.empty()]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "b", "sim")))


def exact_keys(required: pa.Array | pa.ChunkedArray, optional: pa.Array | pa.ChunkedArray | None = None) -> np.ndarray:
    """[n] int64 key codes: rows with equal codes are exact copies; -1 (no key) where `required` is
    null. `optional`'s nulls are a value (a fused key: image bytes' hash + caption, maybe none)."""
    codes = _codes(required, null=-1)
    if optional is None:
        return codes
    pair = np.stack([codes, _codes(optional, null=-2)], axis=1)
    combined = np.unique(pair, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return np.where(codes < 0, -1, combined)


def _codes(column: pa.Array | pa.ChunkedArray, null: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = column.dictionary_encode()
    return encoded.indices.fill_null(null).to_numpy(zero_copy_only=False).astype(np.int64)


def build_search(vectors: np.ndarray, nprobe: int = 8, seed: int = 0, flat_below: int = 20_000) -> Search:
    """A structure for `vectors` when no index holds them: exact flat search below `flat_below`
    rows, else IVF-Flat (exact scores; ~4 sqrt(n) lists, 10 k-means iterations on 40 vectors a
    list, `nprobe` lists searched: near copies nearly always share a list)."""
    n, d = vectors.shape
    if n < flat_below:
        index = faiss.IndexFlatIP(d)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return Search(index)
    nlist = int(4 * np.sqrt(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter, index.cp.seed = 10, seed
    sample = np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)
    index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(vectors[start : start + 65536], dtype=np.float32))
    return Search(index, faiss.SearchParametersIVF(nprobe=min(nprobe, nlist)))


def key_edges(keys: np.ndarray, vectors: np.ndarray) -> Edges:
    """An edge from the first row of each exact key to every other row with that key, at their
    cosine on the stored vectors (1.0 for identical vectors)."""
    rows = np.flatnonzero(keys >= 0)
    order = rows[np.argsort(keys[rows], kind="stable")]
    if len(order) < 2:
        return Edges.empty()
    k = keys[order]
    starts = np.r_[True, k[1:] != k[:-1]]
    first = order[starts][np.cumsum(starts) - 1]
    a, b = first[~starts], order[~starts]
    return Edges(a, b, _cosines(vectors, a, b))


def _cosines(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, step: int = 65536) -> np.ndarray:
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), step):
        out[s : s + step] = np.einsum("ij,ij->i", vectors[a[s : s + step]], vectors[b[s : s + step]])
    return out


def search_edges(
    search: Search,
    vectors: np.ndarray,
    rows: np.ndarray,
    threshold: float,
    k: int = 32,
    max_k: int = 1024,
    batch: int = 2048,
) -> tuple[Edges, int]:
    """Confirmed edges from a k-NN search of vectors[rows] in `search`, and how many rows still had
    `max_k` neighbours at or above the threshold (only their nearest `max_k` are joined).

    With exact scores only the candidates scoring >= threshold are confirmed; with compressed
    codes every candidate is (their scores rank, they do not measure), and k grows while the
    k-th candidate's stored cosine is still >= threshold."""
    ntotal = search.index.ntotal
    parts, saturated = [], 0
    if ntotal < 2:
        return Edges.empty(), 0
    for start in range(0, len(rows), batch):
        todo, kk = rows[start : start + batch], min(k, ntotal)
        while len(todo):
            queries = np.ascontiguousarray(vectors[todo], dtype=np.float32)
            scores, found = search.index.search(queries, kk, params=search.params)
            if not search.exact_scores:
                scores = _stored_cosines(vectors, todo, found)
            edges, full = _confirm(vectors, todo, scores, found, threshold)
            parts.append(edges)
            if kk >= min(max_k, ntotal):
                saturated += int(full.sum()) if kk < ntotal else 0
                break
            todo, kk = todo[full], min(kk * 4, max_k, ntotal)
    if saturated:
        log.warning("%d rows have more than %d neighbours at cosine >= %g: only their %d nearest are joined "
                    "directly (their groups still chain through them)", saturated, max_k, threshold, max_k)  # fmt: skip
    return Edges.concat(parts), saturated


def _stored_cosines(vectors: np.ndarray, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
    """[q, k] cosines of vectors[rows] to vectors[found] (-inf where nothing was found), a few
    queries at a time (the gathered candidates are q x k x d floats)."""
    out = np.full(found.shape, -np.inf, np.float32)
    step = max(1, (32 << 20) // (4 * found.shape[1] * vectors.shape[1]))
    for s in range(0, len(rows), step):
        f = found[s : s + step]
        near = vectors[np.maximum(f, 0)]
        cos = np.einsum("qd,qkd->qk", vectors[rows[s : s + step]], near)
        out[s : s + step] = np.where(f >= 0, cos, -np.inf)
    return out


def _confirm(vectors, rows, scores, found, threshold: float) -> tuple[Edges, np.ndarray]:
    """(edges to the candidates scoring >= threshold, not the row itself, kept when their stored
    cosine is >= threshold; [q] whether the last candidate still scored >= threshold)."""
    hit = (scores >= threshold) & (found >= 0) & (found != rows[:, None])
    a, b = np.broadcast_to(rows[:, None], found.shape)[hit], found[hit]
    sim = _cosines(vectors, a, b)
    keep = sim >= threshold
    return Edges(a[keep], b[keep], sim[keep]), scores[:, -1] >= threshold


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] component labels (the smallest row of each) of the graph with edges (a, b): union-find
    with every root hooked under the smallest root it touches, then full path compression."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        apart = lo != hi
        if not apart.any():
            return parent
        np.minimum.at(parent, hi[apart], lo[apart])
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


def groups_table(ids: np.ndarray, labels: np.ndarray, sim: np.ndarray) -> pa.Table:
    """One row per member of a component of two or more rows: id, group_id (smallest id), similarity."""
    sizes = np.bincount(labels, minlength=len(labels))
    rows = np.flatnonzero(sizes[labels] >= 2)
    member_ids, member_labels = np.asarray(ids, dtype=object)[rows], labels[rows]
    order = np.lexsort((member_ids.astype(str), member_labels))
    rows, member_ids, member_labels = rows[order], member_ids[order], member_labels[order]
    starts = np.r_[True, member_labels[1:] != member_labels[:-1]] if len(rows) else np.zeros(0, bool)
    group = member_ids[starts][np.cumsum(starts) - 1] if len(rows) else member_ids
    return pa.Table.from_arrays(
        [pa.array(member_ids, pa.string()), pa.array(group, pa.string()), pa.array(sim[rows], pa.float32())],
        schema=GROUPS_SCHEMA,
    )


@dataclass(frozen=True)
class Plan:
    """What one pass searches and keeps: rows to search, rows of previous groups kept whole
    (with their previous group and similarity)."""

    search: np.ndarray  # rows
    kept_rows: np.ndarray
    kept_groups: np.ndarray  # a code per kept row: same code, same previous group
    kept_sim: np.ndarray


def plan_pass(ids: np.ndarray, fresh: np.ndarray | None, previous: pa.Table | None) -> Plan:
    """Full pass (no `previous`): search every row. Incremental: search the `fresh` rows and the
    remaining members of previous groups that lost a member (fresh or deleted); keep the others."""
    n = len(ids)
    if previous is None or fresh is None:
        return Plan(np.arange(n), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    where = {i: r for r, i in enumerate(ids)}
    prev_rows = np.array([where.get(i, -1) for i in previous.column("id").to_pylist()], dtype=np.int64)
    prev_group = _codes(previous.column("group_id"), null=-1)
    lost = (prev_rows < 0) | fresh[np.maximum(prev_rows, 0)]
    broken = np.isin(prev_group, np.unique(prev_group[lost]))
    kept = ~broken
    rebuilt = prev_rows[broken & ~lost]
    return Plan(
        np.union1d(np.flatnonzero(fresh), rebuilt),
        prev_rows[kept],
        prev_group[kept],
        previous.column("similarity").to_numpy(zero_copy_only=False)[kept].astype(np.float32),
    )


def find_groups(
    ids: np.ndarray | list[str],
    vectors: np.ndarray,
    threshold: float,
    *,
    search: Search | None = None,
    keys: np.ndarray | None = None,
    previous: pa.Table | None = None,
    fresh: np.ndarray | None = None,
    k: int = 32,
    max_k: int = 1024,
    batch: int = 2048,
) -> tuple[pa.Table, dict]:
    """The groups table (GROUPS_SCHEMA) of rows joined at cosine >= `threshold` or by equal `keys`,
    and counts (groups, rows_in_groups, searched, saturated). Without `search`, `build_search`
    makes one. With `previous` (last pass's table) and `fresh` ([n] bool: new or changed rows),
    an incremental pass (module docstring)."""
    ids = np.asarray(ids, dtype=object)
    n = len(ids)
    if vectors.shape[0] != n:
        raise ValueError(f"{n} ids but {vectors.shape[0]} vectors")
    plan = plan_pass(ids, fresh, previous)
    keys = np.full(n, -1, np.int64) if keys is None else keys
    todo = plan.search[_first_per_key(keys[plan.search])]
    if search is None and len(todo):
        search = build_search(vectors)
    found, saturated = search_edges(search, vectors, todo, threshold, k, max_k, batch) if len(todo) else (
        Edges.empty(), 0)  # fmt: skip
    kept = _kept_edges(plan)
    edges = Edges.concat([key_edges(keys, vectors), found, kept])
    labels = components(n, edges.a, edges.b)
    sim = np.full(n, -np.inf, np.float32)
    np.maximum.at(sim, edges.a, edges.sim)
    np.maximum.at(sim, edges.b, edges.sim)
    np.maximum.at(sim, plan.kept_rows, plan.kept_sim)
    table = groups_table(ids, labels, sim)
    counts = {
        "groups": len(set(table.column("group_id").to_pylist())),
        "rows_in_groups": table.num_rows,
        "searched": len(todo),
        "saturated": saturated,
    }
    return table, counts


def _first_per_key(keys: np.ndarray) -> np.ndarray:
    """Mask of the rows to search: rows without a key, and the first row of each key (its copies
    share its vector, so their neighbours are its neighbours)."""
    mask = keys < 0
    _, first = np.unique(keys, return_index=True)
    mask[first] = True
    return mask


def _kept_edges(plan: Plan) -> Edges:
    """Union-only edges (similarity -inf, which never wins a max) chaining each kept previous group."""
    if not len(plan.kept_rows):
        return Edges.empty()
    order = np.argsort(plan.kept_groups, kind="stable")
    rows, groups = plan.kept_rows[order], plan.kept_groups[order]
    same = groups[1:] == groups[:-1]
    return Edges(rows[:-1][same], rows[1:][same], np.full(int(same.sum()), -np.inf, np.float32))
