"""Read and write FAISS indexes at any fsspec path, streaming (no second copy in memory)."""

from __future__ import annotations

import os
import tempfile

import faiss

from encoders import storage


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


def copy(index: faiss.Index) -> faiss.Index:
    """An independent copy of the same class (clone_index may return another, e.g. IndexFlat for
    IndexFlatIP, which merge_from then refuses)."""
    return from_bytes(to_bytes(index))


def read_built(index_path: str, ivfdata_path: str | None) -> faiss.Index:
    """A built index; when its inverted lists live on disk (`ivfdata_path`, beside it), they are
    memory-mapped from a local copy (a remote index is first downloaded to a temporary directory
    that lives as long as the process)."""
    if ivfdata_path is None:
        return read_index(index_path)
    if not storage.is_local(index_path):
        local = tempfile.mkdtemp(prefix="fusionindex-ondisk-")
        for src in (index_path, ivfdata_path):
            storage.get(src, os.path.join(local, os.path.basename(src)))
        index_path = os.path.join(local, os.path.basename(index_path))
    _, path = storage.url_to_fs(index_path)
    return faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR)
