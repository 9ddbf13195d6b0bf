"""Inverted-list parts: what adding one shard produces, and their merges, in RAM or on disk.

A part holds only the inverted lists (ids and codes) of one shard's vectors, serialised with
faiss's `write_InvertedLists`: never the coarse quantizer, which for IVF65536..1048576 at d=512
is 128 MiB to 2 GiB. A worker loads the trained template once and, per shard, adds the vectors
with their global ids, writes the lists and resets the index (`reset` keeps the training).

Merging moves each part's lists into the template's (`InvertedLists.merge_from`, what
`IndexIVF.merge_from` does without the quantizer check), in shard order, so the result equals
adding every vector to one copy of the template (byte for byte for PQ, SQ and flat codes; the
same search results for fast-scan, whose blocks pack differently). On disk, the part files are
memory-mapped and merged into an `OnDiskInvertedLists` file (`.ivfdata`, memory-mapped by a
server) with `merge_from_multiple`, as `faiss.contrib.ondisk.merge_ondisk` does with whole index
files (each carrying the quantizer); the process holds no part in its own memory. Fast-scan
lists cannot live on disk in faiss; the chooser knows it.

Non-IVF indexes (Flat) have no inverted lists: their part is the serialised part index itself
(it holds only the shard's vectors) and merging is `merge_from`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable

import faiss
import numpy as np

from index_builder import faiss_io, storage

log = logging.getLogger(__name__)


def part_name(shard_index: int, index_shard: int = 0) -> str:
    return f"part-{shard_index:05d}-{index_shard:05d}.ivl"


def add_part(worker_index: faiss.Index, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Add `x` with their global `ids` into `worker_index` (a trained, empty template owned by the
    caller), return the part (uint8 array) and leave the index empty again."""
    ivf = faiss.try_extract_index_ivf(worker_index)
    if ivf is None:
        if isinstance(faiss.downcast_index(worker_index), faiss.IndexIDMap2):
            worker_index.add_with_ids(x, ids.astype(np.int64))
        else:
            worker_index.add(x)  # flat codes: ids are positions, numbered in merge order
        data = faiss_io.to_bytes(worker_index)
    else:
        worker_index.add_with_ids(x, ids.astype(np.int64))
        writer = faiss.VectorIOWriter()
        faiss.write_InvertedLists(ivf.invlists, writer)
        data = faiss.vector_to_array(writer.data)
    worker_index.reset()
    return data


def read_part(data: np.ndarray) -> faiss.InvertedLists:
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.ascontiguousarray(data, dtype=np.uint8), reader.data)
    return faiss.read_InvertedLists(reader)


def _sync_ntotal(index: faiss.Index, ivf: faiss.IndexIVF) -> None:
    ivf.ntotal = int(sum(ivf.invlists.list_size(i) for i in range(ivf.nlist)))
    index.ntotal = ivf.ntotal  # an OPQ/PCA pre-transform keeps its own count


def merge_in_ram(template: faiss.Index, parts: Iterable[np.ndarray]) -> faiss.Index:
    """A copy of `template` holding every part, merged in the order given."""
    index = faiss_io.copy(template)
    ivf = faiss.try_extract_index_ivf(index)
    for data in parts:
        if ivf is None:
            index.merge_from(faiss_io.from_bytes(data), 0)
        else:
            ivf.invlists.merge_from(read_part(data), 0)
    if ivf is not None:
        _sync_ntotal(index, ivf)
    return index


def merge_on_disk(template: faiss.Index, parts: list[str], ivfdata: str) -> faiss.Index:
    """A copy of `template` whose inverted lists live in the local file `ivfdata`, holding the
    parts stored at `parts` (local or fsspec paths; remote ones are copied to local files first),
    in that order. The parts are memory-mapped, not loaded (faiss IO_FLAG_MMAP), and
    `OnDiskInvertedLists.merge_from_multiple` lays every list out once at its exact size."""
    index = faiss_io.copy(template)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan):
        raise ValueError(f"{type(faiss.downcast_index(ivf or index)).__name__} lists cannot be merged on disk")
    if os.path.exists(ivfdata):
        os.remove(ivfdata)
    with tempfile.TemporaryDirectory(prefix="fusionindex-parts-") as tmp:
        local = []
        for i, path in enumerate(parts):
            if storage.is_local(path):
                local.append(storage.url_to_fs(path)[1])
            else:
                local.append(os.path.join(tmp, f"{i:05d}.ivl"))
                storage.get(path, local[-1])
        mapped = [faiss.read_InvertedLists(faiss.FileIOReader(p), faiss.IO_FLAG_MMAP) for p in local]
        pointers = faiss.InvertedListsPtrVector()
        for il in mapped:
            pointers.push_back(il)
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, ivfdata)
        ondisk.merge_from_multiple(pointers.data(), pointers.size(), False, False)
        del pointers, mapped
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # the index owns it now
    _sync_ntotal(index, ivf)
    log.info("merged %d parts on disk into %s", len(parts), ivfdata)
    return index
