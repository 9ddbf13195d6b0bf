"""index_builder.faiss_defaults: BLAS distances from 20 queries, and PQ codebooks as good as faiss's default kernel."""

import faiss
import numpy as np

from index_builder import faiss_defaults


def _relative_error(threshold: int, x: np.ndarray) -> float:
    """Train a PQ of 2-d sub-quantizers (the case the setting is for) with `threshold`; its reconstruction error."""
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        pq = faiss.ProductQuantizer(x.shape[1], x.shape[1] // 2, 6)
        pq.cp.niter = 8
        pq.train(x)
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
    return float(((pq.decode(pq.compute_codes(x)) - x) ** 2).sum() / (x**2).sum())


def test_apply_sets_the_threshold_and_the_codebooks_stay_as_good():
    before = faiss.cvar.distance_compute_blas_threshold
    try:
        faiss_defaults.apply()
        assert faiss.cvar.distance_compute_blas_threshold == faiss_defaults.BLAS_THRESHOLD
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
    x = np.random.default_rng(0).standard_normal((6000, 8)).astype("float32") * np.array(
        [4, 3, 2, 2, 1, 1, 0.5, 0.5], "float32"
    )
    blas, sequential = _relative_error(faiss_defaults.BLAS_THRESHOLD, x), _relative_error(10**9, x)
    assert 0 < blas < 0.05 and abs(blas - sequential) < 0.1 * sequential
