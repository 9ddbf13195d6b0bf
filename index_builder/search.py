"""Load a committed index directory and rank vectors against it."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from index_builder import faiss_io, storage
from index_builder.build import IDS_FILE, INDEX_FILE, set_nprobe
from index_builder.embeddings import MANIFEST


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float
    caption: str | None


class LoadedIndex:
    """index.faiss + ids.parquet + manifest.json of one IDX directory."""

    def __init__(self, index: faiss.Index, ids: list[str], captions: list[str | None], manifest: dict):
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but ids.parquet {len(ids)} rows; rebuild the index")
        self.index, self.ids, self.captions, self.manifest = index, ids, captions, manifest

    @classmethod
    def load(cls, path: str) -> "LoadedIndex":
        manifest_path = storage.join(path, MANIFEST)
        if not storage.exists(manifest_path):
            raise FileNotFoundError(f"{path} has no {MANIFEST}: not a finished index; run `fusionindex build-index`")
        manifest = storage.read_json(manifest_path)
        table = storage.read_parquet(storage.join(path, IDS_FILE), ["id", "caption"])
        return cls(faiss_io.read_index(storage.join(path, INDEX_FILE)), table.column("id").to_pylist(), table.column("caption").to_pylist(), manifest)

    @property
    def dim(self) -> int:
        return self.index.d

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None) -> list[list[Hit]]:
        """Top-k hits per query row (queries [q, dim], L2-normalised); fewer if the index is small."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {queries.shape}, the index expects dim {self.dim}")
        if nprobe is not None:
            set_nprobe(self.index, nprobe)
        scores, found = self.index.search(queries, min(k, self.index.ntotal))
        return [
            [Hit(r + 1, self.ids[j], float(s), self.captions[j]) for r, (j, s) in enumerate(zip(row_ids, row_scores)) if j >= 0]
            for row_ids, row_scores in zip(found, scores)
        ]
