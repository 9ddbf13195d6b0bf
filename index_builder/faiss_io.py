"""Read and write FAISS indexes at any fsspec path, streaming (no second copy in memory)."""

from __future__ import annotations

import faiss

from index_builder import storage


def write_index(index: faiss.Index, path: str) -> None:
    """Write atomically: a reader sees the old file or the complete new one."""
    with storage.atomic_open(path) as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))


def read_index(path: str) -> faiss.Index:
    fs, p = storage.url_to_fs(path)
    with fs.open(p, "rb") as fh:
        return faiss.read_index(faiss.PyCallbackIOReader(fh.read))


def to_bytes(index: faiss.Index):
    """Serialise for sending between processes (numpy uint8 array)."""
    return faiss.serialize_index(index)


def from_bytes(data) -> faiss.Index:
    return faiss.deserialize_index(data)
