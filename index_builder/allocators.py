"""Process-wide allocator settings that keep a build's resident memory near what it holds (the
on-disk build's figures: docs/performance.md). They change the whole process, so library code
never applies them: the CLI entry point does, for the commands that build indexes (build-index,
reindex); a program calling `build_index` itself may call `lean_allocators` first.

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

Imports neither faiss nor pyarrow until called: the CLI imports it before parsing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = (16 << 20) + 4096

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def lean_allocators() -> None:
    """Arrow's system memory pool, and glibc's mmap threshold fixed at MMAP_THRESHOLD (see the
    module docstring), for the rest of the process."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
