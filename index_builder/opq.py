"""Is an OPQ rotation worth its training? A bound computed in milliseconds, before the training.

Training `OPQm,IVF...,PQm` costs several times a plain PQ of the same code size (faiss's
OPQMatrix alternates 50 rotations and PQ trainings), and where the PQ's sub-spaces already share
the variance evenly it buys nothing. For Gaussian data the PQ distortion is bounded, up to a
constant, by the sum over the m sub-spaces of det(cov_i)^(1/dsub); the best rotation reaches
m * det(cov)^(1/d) (Ge et al., "Optimized Product Quantization", 2013, the parametric solution).
`opq_gain` is the share of the bound that a rotation removes. An IVF index encodes residuals
(vector minus its coarse centroid), so with the coarse centroids the bound is taken on those
(docs/performance.md, "Choosing an index for a budget", for what it predicted and what training found).
"""

from __future__ import annotations

import faiss
import numpy as np

SAMPLE = 65_536  # vectors the covariance is estimated on
FLOOR = 1e-9  # eigenvalues below this share of the largest count as this (rank-deficient data)


def _log_det(cov: np.ndarray) -> float:
    w = np.linalg.eigvalsh(cov)
    return float(np.log(np.maximum(w, FLOOR * max(float(w.max()), FLOOR))).sum())


def opq_gain(x: np.ndarray, m: int, centroids: np.ndarray | None = None, seed: int = 0) -> float:
    """The share (0 = none, 1 = all) of the PQ{m} distortion bound of `x` [n, d] (of its residuals
    to the nearest of `centroids` by inner product, the IVF's metric, when given) that the best
    rotation removes. Seeded sample of at most SAMPLE rows."""
    if len(x) > SAMPLE:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), SAMPLE, replace=False))]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if centroids is not None:
        quantizer = faiss.IndexFlatIP(x.shape[1])
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        _, nearest = quantizer.search(x, 1)
        x = x - centroids[nearest[:, 0]]
    x = x.astype(np.float64) - x.mean(axis=0)
    cov = x.T @ x / max(1, len(x) - 1)
    d = cov.shape[0]
    dsub = d // m
    per_subspace = sum(np.exp(_log_det(cov[i : i + dsub, i : i + dsub]) / dsub) for i in range(0, dsub * m, dsub))
    return float(1.0 - m * np.exp(_log_det(cov) / d) / per_subspace)
