"""Process-wide faiss settings for the commands that build indexes. They change the whole process,
so library code never applies them: the CLI entry point does (build-index, reindex), and so does
the benchmark that calls `build_index` in process; a program calling `build_index` itself may call
`apply` first.

- `distance_compute_blas_threshold` (faiss 1.15's default: 128,000 queries) picks faiss's
  sequential distance kernel below that many queries. For 2-d sub-quantizers (`OPQ192_384`,
  `PQ{d/2}`) that kernel makes k-means 6-10x slower than BLAS: training `OPQ192_384,IVF1024,
  PQ192x8np` on 39,936 anisotropic 512-d vectors took 116.2 CPU s, 13.8 with the threshold at 20,
  at the same recall (0.9326 / 0.9320 at nprobe 64). Coarse k-means at d=512 and 256 and PQ with
  8-d sub-quantizers were unchanged (2.7-2.9 / 1.3 / 5.8-6.1 CPU s either way), flat and IVF
  searches of 1,000 queries within 5% (docs/performance.md, "Measurements behind design choices").
"""

from __future__ import annotations

BLAS_THRESHOLD = 20  # queries from which faiss computes distances with BLAS (faiss's own default before 1.15)


def apply() -> None:
    """faiss's distance kernels as BLAS_THRESHOLD says, for the rest of the process."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
