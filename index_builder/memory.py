"""What the build does to keep its resident memory near what it holds (docs: the on-disk build's
figures in README).

Two allocator settings, for the process (build_index calls `lean_allocators`):

- Arrow's default pool (mimalloc in the pyarrow wheels) keeps freed pages for reuse: reading 64
  shards of 31 MiB vectors one after the other left ~170 MiB of them resident after the shards
  were gone; Arrow's system pool (glibc malloc) hands large blocks back when they are freed.
- glibc raises its mmap threshold to the size of the last large block freed (up to 32 MiB), after
  which blocks of a shard's size come from its heaps (one per thread) and stay resident when the
  heap is fragmented (2 x 31 MiB seen); a fixed threshold keeps larger blocks in their own
  mappings, returned to the system on free. It is 16 MiB + 4 KiB, not lower: faiss's blocked
  distance computations (k-means, the ground truth) allocate 16 MiB tiles (4096 x 1024 floats)
  over and over, and as fresh mappings each is zeroed page by page again (at 1 MiB: 8.1M minor
  faults instead of 3.5M and 16 s more system CPU at 2M x 256, for 5 MiB less peak RSS).

And one for memory-mapped inverted lists (`release_mapped_lists`): pages of an `.ivfdata` that a
search touched stay mapped, and count in the process's RSS (RssFile), until they are unmapped;
measuring recall over every nprobe of the ladder touches the whole file. Dropping the mapping of
those pages (madvise MADV_DONTNEED) leaves them in the page cache, where the next search finds
them (a minor fault, no disk read), and takes them out of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import sys

import faiss
import numpy as np

from index_builder.split import members

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = (16 << 20) + 4096
RELEASE_BYTES = 64 << 20  # mapped list bytes a batch of queries may touch before they are released
_NO_LISTS = np.zeros(1, np.int64)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def lean_allocators() -> None:
    """Arrow's system memory pool, and glibc's mmap threshold fixed at MMAP_THRESHOLD (see the module docstring)."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    if _libc is not None and hasattr(_libc, "mallopt"):
        _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


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
