"""Near-duplicate groups over stored vectors: pure numpy + faiss, no files.

    table, counts = find_groups(ids, vectors, threshold, keys=exact_keys(...), search=...)

Contract
- `vectors` [n, d] float32, L2-normalised (a numpy array or a memmap); `ids` [n] strings.
- An edge joins two rows when their cosine on the stored vectors is >= `threshold`, or when they
  share an exact key (same image bytes, same caption: `exact_keys`), which needs no search.
- Groups are the connected components of the edges (union-find), so two members of a group may
  be below the threshold to each other when a chain joins them. `group_id` is the smallest id of
  the group (stable while that member stays); `similarity` (float32) is the row's highest cosine
  to another member found joined to it, >= the threshold by construction.
- Edges come from `pair_search`: a join over inverted lists (`Lists`: those of a built IVF index,
  or `build_lists` for the column) or a k-NN search of an index without lists (`Knn`); either way
  scored on the stored vectors, a batch at a time, each batch merged into the union-find at once.
  Memory: the vectors, two arrays of n, one batch. Not n^2.
- Incremental (`previous` + `fresh`): only the rows new or changed (`fresh`) and the remaining
  members of the previous groups that lost a member (a changed or deleted row) are searched;
  previous groups that lost nobody are kept whole. Under exact search this gives the groups a
  full pass would (an edge between two unchanged rows already joined them last time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from index_builder.pair_search import Edges, Knn, Lists, build_lists, cosines, join_edges, knn_edges

log = logging.getLogger(__name__)

GROUPS_SCHEMA = pa.schema([("id", pa.string()), ("group_id", pa.string()), ("similarity", pa.float32())])


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
    return Edges(a, b, cosines(vectors, a, b))


class Forest:
    """Union-find over n rows, fed a batch of edges at a time (memory: two arrays of n), with
    each row's highest similarity over the edges it was in."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.sim = np.full(n, -np.inf, np.float32)

    def join(self, edges: Edges, *, union_only: bool = False) -> None:
        """Merge the edges' rows; every root is hooked under the smallest root it touches, and the
        touched rows' paths are compressed, until each edge's two rows share a root."""
        if not union_only:
            np.maximum.at(self.sim, edges.a, edges.sim)
            np.maximum.at(self.sim, edges.b, edges.sim)
        a, b = edges.a, edges.b
        while len(a):
            ra, rb = self._roots(a), self._roots(b)
            self.parent[a], self.parent[b] = ra, rb
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            apart = lo != hi
            a, b = lo[apart], hi[apart]
            np.minimum.at(self.parent, b, a)

    def _roots(self, rows: np.ndarray) -> np.ndarray:
        r = self.parent[rows]
        while True:
            up = self.parent[r]
            if np.array_equal(up, r):
                return r
            r = up

    def labels(self) -> np.ndarray:
        """[n] the smallest row of each row's component."""
        while True:
            up = self.parent[self.parent]
            if np.array_equal(up, self.parent):
                return self.parent
            self.parent = up


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] component labels (the smallest row of each) of the graph with edges (a, b)."""
    forest = Forest(n)
    forest.join(Edges(a, b, np.zeros(len(a), np.float32)), union_only=True)
    return forest.labels()


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
    search: Lists | Knn | None = None,
    keys: np.ndarray | None = None,
    previous: pa.Table | None = None,
    fresh: np.ndarray | None = None,
) -> tuple[pa.Table, dict]:
    """The groups table (GROUPS_SCHEMA) of rows joined at cosine >= `threshold` or by equal `keys`,
    and counts (groups, rows_in_groups, searched, saturated). Without `search`, `build_lists`
    makes one. With `previous` (last pass's table) and `fresh` ([n] bool: new or changed rows),
    an incremental pass (module docstring)."""
    ids = np.asarray(ids, dtype=object)
    n = len(ids)
    if vectors.shape[0] != n:
        raise ValueError(f"{n} ids but {vectors.shape[0]} vectors")
    plan = plan_pass(ids, fresh, previous)
    keys = np.full(n, -1, np.int64) if keys is None else keys
    todo = plan.search[_first_per_key(keys[plan.search])]
    forest, stats = Forest(n), {"saturated": 0}
    forest.join(key_edges(keys, vectors))
    forest.join(_kept_edges(plan), union_only=True)
    np.maximum.at(forest.sim, plan.kept_rows, plan.kept_sim)
    if len(todo):
        search = search if search is not None else build_lists(vectors)
        if isinstance(search, Lists):
            batches = join_edges(search, vectors, todo, threshold)
        else:
            batches = knn_edges(search, vectors, todo, threshold, stats)
        for edges in batches:
            forest.join(edges)
    if stats["saturated"]:
        log.warning(
            "%d rows have more than %d neighbours at cosine >= %g: only their nearest are joined directly "
            "(their groups still chain through them)",
            stats["saturated"],
            search.max_k,
            threshold,
        )
    table = groups_table(ids, forest.labels(), forest.sim)
    counts = {
        "groups": len(set(table.column("group_id").to_pylist())),
        "rows_in_groups": table.num_rows,
        "searched": len(todo),
        "saturated": stats["saturated"],
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
