"""Near-duplicate groups of a built index: IDX/duplicates.parquet (`fusionindex duplicates`).

    IDX/duplicates.parquet   id (string), group_id (string), similarity (float32): one row per
                             item in a group of two or more (index_builder.duplicates' contract);
                             its schema metadata records the threshold, the vector and the counts

The vectors are the stored ones, read from the embeddings the index was built from (the index
manifest's source path). When the index holds the vector asked for, its own faiss ids are the
rows and its inverted lists are joined at its nprobe (`pair_search.index_lists`; an index without
lists is searched k-NN), scored on the stored vectors; else lists are built for that column. Exact keys: the image
bytes' hash for `image`, hash and caption for `fused`, the caption for `text`.
With `previous` (an earlier IDX whose groups used the same threshold and vector) only the rows
embedded in this run (`copied` false in the shards) and the broken groups are searched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoders import storage
from encoders.errors import InputError
from index_builder.duplicates import exact_keys, find_groups
from index_builder.duplicates_settings import DEFAULT_THRESHOLD, check_threshold
from index_builder.embeddings import arrow_to_vectors, list_shards, vector_column
from index_builder.pair_search import Knn, Lists, index_lists
from index_builder.params import search_parameters
from index_builder.records import IndexManifest
from index_builder.search import IDS_FILE, open_index

log = logging.getLogger(__name__)

DUPLICATES_FILE = "duplicates.parquet"


@dataclass
class Column:
    """The rows of one vector column that have a vector, in shard order (= the index's ids when
    it was built on this column)."""

    ids: np.ndarray  # object [n]
    vectors: np.ndarray  # float32 [n, d]
    keys: np.ndarray  # int64 [n], -1: no exact key
    fresh: np.ndarray  # bool [n]: embedded in this run (not copied from the previous one)


def read_column(embeddings: str, vector: str) -> Column:
    """The stored `vector` ("image" | "fused" | "text") of every row that has one, with ids, exact
    keys and freshness; the vectors array is filled shard by shard (one shard's table at a time)."""
    shards = list_shards(embeddings)
    name = vector_column(vector)
    d = storage.read_schema(shards[0].path).field(name).type.list_size
    x, n = np.empty((sum(s.num_rows for s in shards), d), np.float32), 0
    ids, hashes, captions, fresh = [], [], [], []
    for shard in shards:
        have = storage.read_schema(shard.path).names
        wanted = ["id", "caption", name] + [c for c in ("content_hash", "copied") if c in have]
        table = storage.read_parquet(shard.path, wanted)
        part, valid = arrow_to_vectors(table.column(name))
        table = table.drop_columns([name]).filter(pa.array(valid))
        x[n : n + table.num_rows] = part[valid]
        n += table.num_rows
        ids.extend(table.column("id").chunks)
        captions.extend(table.column("caption").chunks)
        size = table.num_rows
        hashes += table.column("content_hash").chunks if "content_hash" in have else [pa.nulls(size, pa.binary(16))]
        fresh.append(~table.column("copied").to_numpy() if "copied" in have else np.ones(size, bool))
    caption, content = pa.chunked_array(captions, pa.string()), pa.chunked_array(hashes, pa.binary(16))
    keys = {"image": lambda: exact_keys(content), "fused": lambda: exact_keys(content, caption)}
    key = keys.get(vector, lambda: exact_keys(caption))()
    id_array = pa.chunked_array(ids, pa.string()).to_numpy(zero_copy_only=False).astype(object)
    return Column(id_array, x[:n], key, np.concatenate(fresh) if fresh else np.zeros(0, bool))


def scores_are_exact(index: faiss.Index) -> bool:
    """Whether the index's scores are exact inner products (flat codes), so they can be filtered on."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexShards):
        return scores_are_exact(index.at(0))
    if isinstance(index, faiss.IndexIDMap):
        return scores_are_exact(index.index)
    return isinstance(index, faiss.IndexFlat | faiss.IndexIVFFlat | faiss.IndexHNSWFlat)


def index_search(idx: str, manifest: IndexManifest, column: Column, vector: str) -> Lists | Knn | None:
    """The index itself when it holds `vector` for exactly these rows (its lists at its nprobe, or
    a k-NN search when it has none), else None."""
    if manifest.vector != vector or manifest.ntotal != len(column.ids):
        return None
    ids = storage.read_parquet(storage.join(idx, IDS_FILE), ["id"]).column("id")
    if not ids.equals(pa.chunked_array([pa.array(column.ids, pa.string())])):
        log.warning("%s's ids differ from its embeddings' rows: searching a structure built for them", idx)
        return None
    index = open_index(idx, manifest)
    nprobe = manifest.nprobe
    lists = index_lists(index, nprobe)
    if lists is not None:
        return lists
    params = search_parameters(index, int(nprobe)) if nprobe else None
    return Knn(index, params, exact_scores=scores_are_exact(index))


def previous_groups(previous: str | None, threshold: float, vector: str) -> pa.Table | None:
    """The groups of an earlier IDX when they were computed at the same threshold and vector."""
    if previous is None:
        return None
    path = storage.join(previous, DUPLICATES_FILE)
    if not storage.exists(path):
        log.info("no %s in %s: a full pass", DUPLICATES_FILE, previous)
        return None
    table = storage.read_parquet(path)
    meta = json.loads((table.schema.metadata or {}).get(b"fusionindex", b"{}"))
    if meta.get("threshold") != threshold or meta.get("vector") != vector:
        log.info("the previous groups used threshold %s, vector %s: a full pass", meta.get("threshold"),
                 meta.get("vector"))  # fmt: skip
        return None
    return table.select(["id", "group_id", "similarity"])


def write_duplicates(
    idx: str, threshold: float = DEFAULT_THRESHOLD, vector: str | None = None, previous: str | None = None
) -> dict:
    """Compute the groups of IDX's items, write IDX/duplicates.parquet, return its counts
    (groups, rows_in_groups, searched, saturated, incremental, threshold, vector, search)."""
    check_threshold("--threshold", threshold)
    manifest = IndexManifest.load(idx)
    vector = vector or manifest.vector
    column = read_column(manifest.source.path, vector)
    search = index_search(idx, manifest, column, vector)
    earlier = previous_groups(previous, threshold, vector)
    log.info("duplicates of %d %s vectors at cosine >= %g (%s%s)", len(column.ids), vector, threshold,
             "the index" if search else "a structure built for them", ", incremental" if earlier else "")  # fmt: skip
    table, counts = find_groups(
        column.ids,
        column.vectors,
        threshold,
        search=search,
        keys=column.keys,
        previous=earlier,
        fresh=column.fresh if earlier is not None else None,
    )
    fresh_ids = pa.array(column.ids[column.fresh], pa.string())
    counts = {
        **counts,
        "new_rows_in_groups": int(pc.sum(pc.is_in(table.column("id"), fresh_ids)).as_py() or 0),
        "incremental": earlier is not None,
        "threshold": threshold,
        "vector": vector,
        "search": _described(search),
    }
    table = table.replace_schema_metadata({"fusionindex": json.dumps(counts)})
    with storage.atomic_open(storage.join(idx, DUPLICATES_FILE)) as fh:
        pq.write_table(table, fh)
    return counts


def _described(search: Lists | Knn | None) -> str:
    if isinstance(search, Lists):
        return f"the index's {search.nlist} lists, nprobe {search.nprobe}"
    if isinstance(search, Knn):
        return "the index, k-NN"
    return "lists built for the column"


def read_groups(idx: str) -> dict[str, str]:
    """id -> group_id from IDX/duplicates.parquet; InputError naming the fix when there is none."""
    path = storage.join(idx, DUPLICATES_FILE)
    if not storage.exists(path):
        raise InputError(f"{idx} has no {DUPLICATES_FILE}; run `fusionindex duplicates --index {idx}` first")
    table = storage.read_parquet(path, ["id", "group_id"])
    return dict(zip(table.column("id").to_pylist(), table.column("group_id").to_pylist()))


def collapse(hits: list, groups: dict[str, str], k: int) -> list:
    """The first hit of each group (items in no group are their own), at most k, ranks renumbered."""
    seen, out = set(), []
    for hit in hits:
        group = groups.get(hit.id, hit.id)
        if group in seen:
            continue
        seen.add(group)
        out.append(dataclasses.replace(hit, rank=len(out) + 1))
        if len(out) == k:
            break
    return out
