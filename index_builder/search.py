"""Load a committed index directory and rank vectors against it.

Search parameters (nprobe) are passed per call (`SearchParametersIVF`), never set on the
loaded index, so one loaded index can serve calls with different settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow as pa

from encoders import storage
from encoders.errors import InputError
from index_builder import faiss_io
from index_builder.layout import IDS_FILE, INDEX_FILE, IVFDATA_FILE
from index_builder.params import search_parameters
from index_builder.records import IndexManifest, IndexShard
from index_builder.split import combine


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float
    caption: str | None
    carried: dict = field(default_factory=dict)  # the item's carried columns (embed --carry-columns)


def open_index(path: str, manifest: IndexManifest) -> faiss.Index:
    """The searchable index of IDX: index.faiss, or `faiss.IndexShards` over its index shards (each
    shard-KKKKK-of-NNNNN/index.faiss), with lists memory-mapped from index.ivfdata when merged on disk."""
    parts = []
    for part in manifest.shards or (IndexShard(),):
        where = storage.join(path, part.path) if part.path else path
        ivfdata = storage.join(where, IVFDATA_FILE) if manifest.merge == "disk" else None
        parts.append(faiss_io.read_built(storage.join(where, INDEX_FILE), ivfdata))
    return combine(parts)


class LoadedIndex:
    """index.faiss + ids.parquet + manifest.json of one IDX directory."""

    def __init__(
        self,
        index: faiss.Index,
        ids: list[str],
        captions: list[str | None],
        manifest: IndexManifest,
        carried: pa.Table | None = None,
    ):
        if index.ntotal != len(ids):
            raise InputError(f"index holds {index.ntotal} vectors but ids.parquet {len(ids)} rows; rebuild the index")
        self.index, self.ids, self.captions, self.manifest = index, ids, captions, manifest
        self.carried = carried  # ids.parquet's carried columns, row i = faiss id i

    @classmethod
    def load(cls, path: str) -> LoadedIndex:
        manifest = IndexManifest.load(path)
        table = storage.read_parquet(storage.join(path, IDS_FILE))
        index = open_index(path, manifest)
        extra = table.drop_columns(["id", "caption"])
        ids, captions = table.column("id").to_pylist(), table.column("caption").to_pylist()
        return cls(index, ids, captions, manifest, extra if extra.num_columns else None)

    def _carried(self, row: int) -> dict:
        return {} if self.carried is None else self.carried.slice(row, 1).to_pylist()[0]

    @property
    def dim(self) -> int:
        return self.index.d

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None) -> list[list[Hit]]:
        """Top-k hits per query row (queries [q, dim], L2-normalised); fewer if the index is small.

        `nprobe` applies to this call only (default: the one the index was built with)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"query vectors have shape {queries.shape}, the index expects dim {self.dim}")
        params = None if nprobe is None else search_parameters(self.index, nprobe)
        scores, found = self.index.search(queries, min(k, self.index.ntotal), params=params)
        return [
            [
                Hit(r + 1, self.ids[j], float(s), self.captions[j], self._carried(j))
                for r, (j, s) in enumerate(zip(row_ids, row_scores))
                if j >= 0
            ]
            for row_ids, row_scores in zip(found, scores)
        ]
