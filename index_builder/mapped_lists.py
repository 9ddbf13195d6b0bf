"""Memory-mapped inverted lists taken out of the process's RSS once searched: pages of an
`.ivfdata` that a search touched stay mapped, and count in the process's RSS (RssFile), until they are unmapped;
measuring recall over every nprobe of the ladder touches the whole file. Dropping the mapping of
those pages (madvise MADV_DONTNEED) leaves them in the page cache, where the next search finds
them (a minor fault, no disk read), and takes them out of the process.
"""

from __future__ import annotations

import ctypes
import logging
import mmap

import faiss
import numpy as np

from index_builder.allocators import libc as _libc
from index_builder.split import members

log = logging.getLogger(__name__)

RELEASE_BYTES = 64 << 20  # mapped list bytes a batch of queries may touch before they are released
_NO_LISTS = np.zeros(1, np.int64)


def mapped_lists(index: faiss.Index) -> list[faiss.OnDiskInvertedLists]:
    """The memory-mapped on-disk inverted lists `index` (or its index shards) searches."""
    out = []
    for member in members(index):
        ivf = faiss.try_extract_index_ivf(member)
        lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
        if isinstance(lists, faiss.OnDiskInvertedLists) and lists.totsize and lists.ptr is not None:
            out.append(lists)
    return out


def release_mapped_lists(lists: list[faiss.OnDiskInvertedLists]) -> None:
    """Unmap the pages of `lists` this process touched, keeping the mappings (see the module docstring).
    A search hands the lists it probes to prefetch threads, which may still be reading them when it
    returns: they are waited for first (prefetching no list), or they would map pages again."""
    for od in lists:
        od.prefetch_lists(faiss.swig_ptr(_NO_LISTS), 0)
        if _libc is None or _libc.madvise(ctypes.c_void_p(int(od.ptr)), ctypes.c_size_t(od.totsize),
                                          mmap.MADV_DONTNEED) != 0:  # fmt: skip
            log.debug("madvise failed on %s: %s", od.filename, ctypes.get_errno())


def query_batch(lists: list[faiss.OnDiskInvertedLists], nprobe: int | None, floor: int = 1) -> int | None:
    """Queries per search that touch at most about RELEASE_BYTES of `lists` at `nprobe` (probing
    lists of average size), at least `floor`; None when nothing is mapped (search them all at once)."""
    if not lists or not nprobe:
        return None
    per_query = sum(od.totsize / max(1, od.nlist) for od in lists) * nprobe
    return max(floor, int(RELEASE_BYTES // max(per_query, 1.0)))
