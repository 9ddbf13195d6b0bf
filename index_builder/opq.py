"""Is an OPQ rotation worth its training? A short screen on a sample, before the full training.

Training `OPQm,IVF...,PQm` costs several times a plain PQ of the same code size (faiss's
OPQMatrix alternates 50 rotations and PQ trainings), and on data whose variance is already
spread evenly over the PQ sub-spaces it buys nothing. The screen trains a brief rotation (a few
iterations on at most `SAMPLE` vectors) and compares the PQ's squared error on held-out vectors
with and without it: `gain` is the share of the error the rotation removes.
"""

from __future__ import annotations

import faiss
import numpy as np

SAMPLE = 12_288  # vectors: enough for 256-centroid sub-quantizers (faiss asks 39 each), seconds to train
HELD_OUT = 2_048
ROTATIONS = 4  # OPQ iterations of the screen (faiss trains 50)
PQ_ITERATIONS = 10


def _pq_error(train: np.ndarray, test: np.ndarray, m: int, nbits: int) -> float:
    pq = faiss.ProductQuantizer(train.shape[1], m, nbits)
    pq.cp.niter = PQ_ITERATIONS
    pq.cp.min_points_per_centroid = 1  # a short screen: faiss's warning for small samples is not news
    pq.train(train)
    return float(((test - pq.decode(pq.compute_codes(test))) ** 2).sum(1).mean())


def opq_gain(x: np.ndarray, m: int, nbits: int = 8, seed: int = 0) -> float:
    """The relative reduction (0 = none, 0.2 = a fifth) of PQ{m}x{nbits}'s mean squared error on
    held-out rows of `x` [n, d] that a briefly trained OPQ rotation brings (seeded, deterministic)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), min(len(x), SAMPLE + HELD_OUT), replace=False)
    x = np.ascontiguousarray(x[pick], dtype=np.float32)
    cut = len(x) - min(HELD_OUT, len(x) // 5)
    train, test = x[:cut], x[cut:]
    plain = _pq_error(train, test, m, nbits)
    opq = faiss.OPQMatrix(x.shape[1], m)
    opq.niter, opq.niter_pq, opq.niter_pq_0 = ROTATIONS, 4, PQ_ITERATIONS
    opq.max_train_points = len(train)
    opq.train(train)
    rotated = _pq_error(opq.apply(train), opq.apply(test), m, nbits)
    return 1.0 - rotated / plain if plain > 0 else 0.0
