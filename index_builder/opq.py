"""OPQ rotations: whether one is worth training (a bound, in milliseconds), and the rotation itself.

Where the PQ's sub-spaces already share the variance evenly, a rotation buys nothing. For
Gaussian data the PQ distortion is bounded, up to a constant, by the sum over the m sub-spaces
of det(cov_i)^(1/dsub); the best rotation reaches m * det(cov)^(1/d) (Ge et al., "Optimized
Product Quantization", 2013, the parametric solution). `opq_gain` is the share of the bound that
a rotation removes. An IVF index encodes residuals (vector minus its coarse centroid), so with
the coarse centroids the bound is taken on those.

`parametric_rotation` is that paper's parametric solution (OPQ-P): the principal axes of the
residuals, dealt to the m sub-spaces so that their eigenvalue products balance (`allocate`). It
costs one d x d eigendecomposition where faiss's OPQMatrix alternates 50 PQ trainings and SVDs;
on the benchmark's anisotropic 150k x 512 set it reached recall@10 0.848 for OPQ64 against
faiss's 0.838 in a fifth of the training time, and 0.740 against 0.755 for OPQ32
(docs/index-building.md). Every OPQ rotation the builder trains is this one (`set_rotation`).
"""

from __future__ import annotations

import faiss
import numpy as np

SAMPLE = 65_536  # vectors the covariance is estimated on
FLOOR = 1e-9  # eigenvalues below this share of the largest count as this (rank-deficient data)


def _log_det(cov: np.ndarray) -> float:
    w = np.linalg.eigvalsh(cov)
    return float(np.log(np.maximum(w, FLOOR * max(float(w.max()), FLOOR))).sum())


def residuals(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """x [n, d] minus the nearest of `centroids` by inner product (the IVF's metric): what an IVF
    index's codes encode."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(x.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    nearest = quantizer.search(x, 1)[1][:, 0]
    return x - centroids[nearest]


def residual_covariance(x: np.ndarray, centroids: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The covariance (float64, d x d) of `x` [n, d], or of its residuals to the nearest of
    `centroids` by inner product (the IVF's metric) when given; seeded sample of at most SAMPLE rows."""
    if len(x) > SAMPLE:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), SAMPLE, replace=False))]
    x = np.ascontiguousarray(x, dtype=np.float32) if centroids is None else residuals(x, centroids)
    x = x.astype(np.float64) - x.mean(axis=0)
    return x.T @ x / max(1, len(x) - 1)


def opq_gain(x: np.ndarray, m: int, centroids: np.ndarray | None = None, seed: int = 0) -> float:
    """The share (0 = none, 1 = all) of the PQ{m} distortion bound of `x` [n, d] (of its residuals
    to the nearest of `centroids` when given) that the best rotation removes."""
    return gain_of(residual_covariance(x, centroids, seed), m)


def gain_of(cov: np.ndarray, m: int) -> float:
    """opq_gain from the covariance (residual_covariance's)."""
    d = cov.shape[0]
    dsub = d // m
    per_subspace = sum(np.exp(_log_det(cov[i : i + dsub, i : i + dsub]) / dsub) for i in range(0, dsub * m, dsub))
    return float(1.0 - m * np.exp(_log_det(cov) / d) / per_subspace)


def allocate(eigenvalues: np.ndarray, m: int) -> list[list[int]]:
    """Ge et al.'s eigenvalue allocation: the indices of `eigenvalues` (sorted descending, len a
    multiple of m) dealt to m buckets of equal size: the m largest one each, then each next one to
    the open bucket of the smallest product so far, so that the products come out balanced."""
    size = len(eigenvalues) // m
    logs = np.zeros(m)
    buckets: list[list[int]] = [[] for _ in range(m)]
    floor = FLOOR * max(float(eigenvalues[0]), FLOOR)
    for i, value in enumerate(eigenvalues[: size * m]):
        open_ = [j for j in range(m) if len(buckets[j]) < size]
        j = i if i < m else min(open_, key=lambda b: logs[b])
        buckets[j].append(i)
        logs[j] += np.log(max(float(value), floor))
    return buckets


def parametric_rotation(cov: np.ndarray, m: int, d_out: int) -> np.ndarray:
    """OPQ-P's rotation for PQ{m} on d_out dims (d_out <= d, a multiple of m): float32 [d_out, d],
    row-major as faiss's LinearTransform.A (y = A x): the d_out principal axes of `cov` (the
    residuals' covariance, residual_covariance's), sub-space by sub-space as `allocate` deals them."""
    w, v = np.linalg.eigh(cov)
    order = np.argsort(-w)[:d_out]
    buckets = allocate(w[order], m)
    rows = [v[:, order[i]] for bucket in buckets for i in bucket]
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def _first_transform(index: faiss.Index, kind: type) -> faiss.VectorTransform | None:
    """The `kind` transform that `index` starts with, None when it starts with none."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return None
    first = faiss.downcast_VectorTransform(index.chain.at(0))
    return first if isinstance(first, kind) else None


def opq_of(index: faiss.Index) -> faiss.OPQMatrix | None:
    """The OPQ matrix that `index` ('OPQm[_D],IVF...') starts with, None when it has none."""
    return _first_transform(index, faiss.OPQMatrix)


def pca_of(index: faiss.Index) -> faiss.PCAMatrix | None:
    """The PCA that `index` ('PCA{D},IVF...') starts with, None when it has none."""
    return _first_transform(index, faiss.PCAMatrix)


def train_pca(pca: faiss.PCAMatrix, x: np.ndarray) -> None:
    """Fit `pca` to the principal axes of x about the origin (the eigenvectors of x'x / n), with no
    mean and no bias: y = A x, so inner products are those of the projections. faiss's own
    PCAMatrix.train centres first, and <q - m, x - m> ranks x by <q, x> - <m, x>, which is wrong by
    <m, x> where the vectors share a direction (CLIP's do; the anisotropic frontier set at 32 B:
    recall@10 0.475 centred, 0.499 not)."""
    d, dims = pca.d_in, pca.d_out
    x = np.asarray(x, dtype=np.float64)
    values, vectors = np.linalg.eigh(x.T @ x / len(x))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    faiss.copy_array_to_vector(np.zeros(d, dtype=np.float32), pca.mean)
    faiss.copy_array_to_vector(values.astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(np.ascontiguousarray(vectors.T, dtype=np.float32).ravel(), pca.PCAMat)
    faiss.copy_array_to_vector(np.ascontiguousarray(vectors[:, :dims].T, dtype=np.float32).ravel(), pca.A)
    faiss.copy_array_to_vector(np.zeros(dims, dtype=np.float32), pca.b)
    pca.is_trained = True
    pca.set_is_orthonormal()  # A's rows are eigenvectors: reverse_transform (reconstruction) is A'


def rotation_for(index: faiss.Index, cov: np.ndarray) -> np.ndarray:
    """parametric_rotation for the OPQ matrix of `index` (its M and d_out), from `cov`."""
    opq = opq_of(index)
    return parametric_rotation(cov, opq.M, opq.d_out)


def set_rotation(index: faiss.Index, rotation: np.ndarray) -> None:
    """Install `rotation` (parametric_rotation's) as the trained OPQ matrix of `index`
    ('OPQm[_D],IVF...'); IndexPreTransform.train then leaves it and trains the rest."""
    opq = opq_of(index)
    if opq is None or rotation.shape != (opq.d_out, opq.d_in):
        raise ValueError(f"a rotation of shape {rotation.shape} does not fit this index's first transform")
    faiss.copy_array_to_vector(np.ascontiguousarray(rotation, dtype=np.float32).ravel(), opq.A)
    opq.is_trained = True
    opq.is_orthonormal = True
