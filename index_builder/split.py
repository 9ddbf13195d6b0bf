"""K independently searchable indexes: each id belongs to one index shard by a hash of the id
string (xxh3-64 mod K), stable from night to night, so a server per shard always holds the same
ids. Every shard is a copy of the same trained template holding its own ids' vectors under their
global ids (row i of IDX/ids.parquet is id i in every shard), and `faiss.IndexShards` over them
searches like the unsharded index: the same lists are probed in each (they share the coarse
quantizer), so merged results equal the unsharded index's.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np
import xxhash

SHARD_DIR = "shard-{:05d}-of-{:05d}"


def owners(ids: Iterable[str], k: int) -> np.ndarray:
    """The index shard (0..k-1) of each id."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) % k for i in ids), dtype=np.int64)


def shard_dirs(k: int) -> list[str]:
    return [SHARD_DIR.format(s, k) for s in range(k)]


def with_ids(template: faiss.Index) -> faiss.Index:
    """The template as an index shard: IVF indexes store ids already; a flat one is wrapped in
    IndexIDMap2 so that it returns global ids."""
    if faiss.try_extract_index_ivf(template) is not None:
        return template
    return faiss.IndexIDMap2(template)


def combine(parts: list[faiss.Index]) -> faiss.Index:
    """One searchable index over `parts` (results merged by score, ids kept); a single part as is."""
    if len(parts) == 1:
        return parts[0]
    combined = faiss.IndexShards(parts[0].d, False, False)
    combined.metric_type = parts[0].metric_type
    for part in parts:
        combined.add_shard(part)  # faiss's wrapper keeps a reference to each part
    return combined


def members(index: faiss.Index) -> list[faiss.Index]:
    """The index shards of `index` (itself when it is not an IndexShards)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexShards):
        return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
    return [index]
