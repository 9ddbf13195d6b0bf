"""Inverted-list parts: what adding one shard produces, and their merges, in RAM or on disk.

A part holds only the inverted lists (ids and codes) of one shard's vectors, serialised with
faiss's `write_InvertedLists`: never the coarse quantizer, which for IVF65536..1048576 at d=512
is 128 MiB to 2 GiB. A worker loads the trained template once and, per shard, adds the vectors
with their global ids, writes the lists and resets the index (`reset` keeps the training).

Merging moves each part's lists into the template's (`InvertedLists.merge_from`, what
`IndexIVF.merge_from` does without the quantizer check), in shard order, so the result equals
adding every vector to one copy of the template (byte for byte for PQ, SQ and flat codes; the
same search results for fast-scan, whose blocks pack differently). On disk, the parts are merged
into an `OnDiskInvertedLists` file (`.ivfdata`, memory-mapped by a server): the same bytes as
faiss's `merge_from_multiple` (what `faiss.contrib.ondisk.merge_ondisk` does with whole index
files), written with ordinary file writes, one part in memory at a time, instead of through
memory maps of every part and of the output, whose touched pages all count in the process's RSS
(write_ivfdata). Fast-scan lists cannot live on disk in faiss; the chooser knows it.

Non-IVF indexes (Flat) have no inverted lists: their part is the serialised part index itself
(it holds only the shard's vectors) and merging is `merge_from`.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from collections.abc import Iterable

import faiss
import numpy as np

from encoders import storage
from index_builder import faiss_io
from index_builder.candidates import ID_BYTES

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


def _part_lists(path: str) -> tuple[int, int, np.ndarray, int]:
    """(nlist, code_size, list sizes [nlist], offset of the first list's data) of a part file:
    faiss's `write_InvertedLists` of an ArrayInvertedLists ("ilar", nlist, code_size, then "full"
    sizes or "sprs" (list, size) pairs), followed by each non-empty list's codes then ids."""
    with open(path, "rb") as fh:
        head = fh.read(32)
        if len(head) < 32 or head[:4] != b"ilar":
            raise ValueError(f"{path} is not a faiss ArrayInvertedLists part (fourcc {head[:4]!r})")
        nlist, code_size = struct.unpack_from("<QQ", head, 4)
        kind, (count,) = head[20:24], struct.unpack_from("<Q", head, 24)
        table = np.fromfile(fh, np.uint64, count).astype(np.int64)
    if kind == b"full":
        sizes = table
    elif kind == b"sprs":
        sizes = np.zeros(nlist, np.int64)
        sizes[table[0::2]] = table[1::2]
    else:
        raise ValueError(f"{path}: unknown inverted-list layout {kind!r}")
    if len(sizes) != nlist:
        raise ValueError(f"{path}: {len(sizes)} list sizes for {nlist} lists")
    return nlist, code_size, sizes, 32 + 8 * count


def write_ivfdata(parts: list[str], nlist: int, code_size: int, ivfdata: str) -> bytes:
    """Write the local part files' lists, concatenated per list in the order given, into `ivfdata`
    laid out as `OnDiskInvertedLists.merge_from_multiple` lays it out (list j at the sum of the
    earlier lists' bytes: its codes, then its ids, capacity = size), and return the serialised
    OnDiskInvertedLists ("ilod") describing it, for faiss.read_InvertedLists.

    faiss's merge maps every part and the output file and copies through the mappings: each page
    it touches counts in the process's RSS until the merge ends, which for a large index is the
    whole index plus every part. Here each part is read (one at a time, into memory) and its
    lists are written at their places with pwrite: what the merge holds is one part, and the
    written pages sit in the page cache, not in the process. The bytes are the same as faiss's
    (tests/test_index_scale.py compares them), including its metadata: faiss leaves the whole
    file in `slots` (its free-space list), which matters only to an index that grows in place."""
    heads = [_part_lists(p) for p in parts]
    for path, (n, cs, _, _) in zip(parts, heads):
        if (n, cs) != (nlist, code_size):
            raise ValueError(f"{path} holds {n} lists of {cs}-byte codes, not {nlist} of {code_size}")
    sizes = np.sum([h[2] for h in heads], axis=0, dtype=np.int64) if heads else np.zeros(nlist, np.int64)
    ends = np.cumsum(sizes * (ID_BYTES + code_size))
    offsets, totsize = ends - sizes * (ID_BYTES + code_size), int(ends[-1]) if nlist else 0
    filled = np.zeros(nlist, np.int64)
    with open(ivfdata, "wb") as out:
        out.truncate(totsize)
        fd = out.fileno()
        for path, (_, _, part_sizes, start) in zip(parts, heads):
            data = np.fromfile(path, np.uint8, offset=start)
            pos = 0
            for j in np.flatnonzero(part_sizes).tolist():
                n, at, cap, done = int(part_sizes[j]), int(offsets[j]), int(sizes[j]), int(filled[j])
                os.pwrite(fd, data[pos : pos + n * code_size], at + done * code_size)
                pos += n * code_size
                os.pwrite(fd, data[pos : pos + n * ID_BYTES], at + cap * code_size + done * ID_BYTES)
                pos += n * ID_BYTES
                filled[j] += n
            if pos != len(data):
                raise ValueError(f"{path}: {len(data) - pos} bytes beyond its lists")
            del data
    lists = np.stack([sizes, sizes, offsets], axis=1).astype(np.uint64)  # OnDiskOneList: size, capacity, offset
    name = ivfdata.encode()
    return b"".join(
        [
            b"ilod",
            struct.pack("<QQQ", nlist, code_size, nlist),
            lists.tobytes(),
            struct.pack("<QQQ", 1, 0, totsize),  # slots: [(offset 0, capacity totsize)], as faiss leaves them
            struct.pack("<Q", len(name)),
            name,
            struct.pack("<Q", totsize),
        ]
    )


def merge_on_disk(template: faiss.Index, parts: list[str], ivfdata: str) -> faiss.Index:
    """A copy of `template` whose inverted lists live in the local file `ivfdata`, holding the
    parts stored at `parts` (local or fsspec paths; remote ones are copied to local files first),
    in that order. The lists are written with ordinary file writes (write_ivfdata), one part in
    memory at a time; the result equals `OnDiskInvertedLists.merge_from_multiple`'s, and the
    index memory-maps it as faiss's reader does."""
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
        header = write_ivfdata(local, ivf.nlist, ivf.code_size, ivfdata)
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.frombuffer(header, np.uint8), reader.data)
    ondisk = faiss.read_InvertedLists(reader)  # maps ivfdata (read-write, as faiss's merge leaves it)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # the index owns it now
    _sync_ntotal(index, ivf)
    log.info("merged %d parts on disk into %s", len(parts), ivfdata)
    return index
