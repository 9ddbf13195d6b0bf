"""The parametric OPQ rotation (index_builder.opq): the allocation, the rotation, and what it buys."""

from __future__ import annotations

import faiss
import numpy as np

from index_builder.opq import allocate, opq_of, parametric_rotation, residual_covariance
from index_builder.screen import coarse_centroids
from index_builder.training import train_template


def test_allocate_balances_the_products_of_each_bucket():
    values = np.array([8.0, 4.0, 2.0, 1.0])
    assert sorted(map(sorted, allocate(values, 2))) == [[0, 3], [1, 2]]  # 8*1 = 4*2
    w = (1.0 + np.arange(64)) ** -1.4  # a power-law spectrum, as CLIP vectors have
    buckets = allocate(w, 8)
    assert sorted(i for b in buckets for i in b) == list(range(64)) and {len(b) for b in buckets} == {8}
    spread = [np.log(w[b]).sum() for b in buckets]
    contiguous = [np.log(w[i : i + 8]).sum() for i in range(0, 64, 8)]
    assert np.ptp(spread) < 0.5 * np.ptp(contiguous), (spread, contiguous)


def _anisotropic(n: int, d: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = rng.standard_normal((n, d)) * (1 + np.arange(d)) ** -1.0 @ basis.T
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def test_the_rotation_is_orthonormal_and_may_drop_dimensions():
    x = _anisotropic(4000, 48)
    cov = residual_covariance(x)
    for m, d_out in ((8, 48), (10, 40)):
        a = parametric_rotation(cov, m, d_out)
        assert a.shape == (d_out, 48) and np.allclose(a @ a.T, np.eye(d_out), atol=1e-4)


def test_an_opq_template_encodes_anisotropic_vectors_better_than_plain_pq():
    x = _anisotropic(12_000, 64)
    centroids = coarse_centroids(x, 32)
    errors = {}
    for factory in ("IVF32,PQ8x8np", "OPQ8,IVF32,PQ8x8np"):
        index = train_template(factory, x, centroids)
        index.add(x[:2000])
        errors[factory] = float(((index.reconstruct_n(0, 2000) - x[:2000]) ** 2).sum(1).mean())
    assert opq_of(index) is not None and opq_of(index).is_trained
    assert errors["OPQ8,IVF32,PQ8x8np"] < 0.7 * errors["IVF32,PQ8x8np"], errors
    assert faiss.downcast_index(index).index.ntotal == 2000


def test_a_pca_about_the_origin_keeps_inner_products_that_faiss_centred_one_does_not():
    import faiss

    from index_builder.opq import train_pca

    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((32, 32)))[0].T  # orthonormal rows
    x = (rng.standard_normal((2000, 8)) @ basis[:8] + 3 * basis[8]).astype(np.float32)  # 9 dims, a shared offset
    ours, centred = faiss.PCAMatrix(32, 9), faiss.PCAMatrix(32, 9)
    train_pca(ours, x)
    centred.train(x)
    exact = x[:50] @ x[:50].T
    assert np.allclose(ours.apply(x[:50]) @ ours.apply(x[:50]).T, exact, atol=1e-3)
    assert not np.allclose(centred.apply(x[:50]) @ centred.apply(x[:50]).T, exact, atol=1.0)
    assert ours.is_orthonormal and np.allclose(ours.reverse_transform(ours.apply(x[:5])), x[:5], atol=1e-4)
