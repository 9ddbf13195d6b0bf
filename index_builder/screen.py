"""Rank candidates cheaply: each trained and measured on a subsample, so that only the winner is
built on everything.

The screen works on the build's own training sample: its coarse centroids are trained once on it
(the same k-means the final build needs, which reuses them), each candidate's codes train on its
first SCREEN_TRAIN rows (an OPQ rotation is the parametric one of index_builder.opq, from the
covariance of those rows' residuals to the shared centroids, and its coarse centroids are the
shared ones projected through it; the final build reuses the rotation), the next rows (at most
SCREEN_BASE) are the database, and the build's held-out recall queries (at most SCREEN_QUERIES)
are searched against it with exact truth, at every power-of-two nprobe up to MAX_NPROBE. A
candidate's figure is its best recall@k there; the winner is the candidate of the highest, where
candidates within TOLERANCE of it count as equal and the smaller code, then the more lists, then
the faster search, wins. The records are the frontier the manifest and the nightly report show
(recall@k against bytes per vector).
"""

from __future__ import annotations

import copy
import logging
import time

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from index_builder.candidates import Candidate
from index_builder.choose import TOLERANCE, opq_m, worth_opq
from index_builder.factory import nlist_of
from index_builder.opq import (
    gain_of,
    opq_of,
    pca_of,
    residual_covariance,
    residuals,
    rotation_for,
    set_rotation,
    train_pca,
)
from index_builder.params import search_parameters

log = logging.getLogger(__name__)

SCREEN_TRAIN = 10_000  # rows each candidate's codes train on (39 per centroid of an 8-bit PQ codebook)
# k-means iterations of a screened PQ codebook (faiss: 25): its rank, not its best codebook; 10 gave
# +0.005-0.008 recall on the frontier sets for 1.6x the CPU
PQ_NITER = 6
SCREEN_BASE = 50_000  # rows the candidates are measured on, at most
SCREEN_QUERIES = 500
MAX_NPROBE = 64
METRIC = faiss.METRIC_INNER_PRODUCT


class ScreenData:
    """The vectors a screen trains and measures on (see the module docstring)."""

    def __init__(self, xt: np.ndarray, queries: np.ndarray, centroids: np.ndarray, k: int):
        cut = SCREEN_TRAIN if len(xt) >= 2 * SCREEN_TRAIN else len(xt) // 2
        self.train = np.ascontiguousarray(xt[:cut], dtype=np.float32)
        self.base = np.ascontiguousarray(xt[cut : cut + SCREEN_BASE], dtype=np.float32)
        self.queries = np.ascontiguousarray(queries[:SCREEN_QUERIES], dtype=np.float32)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.k = min(k, len(self.base))
        self.gt = faiss.knn(self.queries, self.base, self.k, METRIC)[1]
        self.rotations: dict[str, np.ndarray] = {}  # by rotation_key: the OPQ rotations screened
        self._covariance: np.ndarray | None = None

    def with_centroids(self, centroids: np.ndarray) -> ScreenData:
        """The same rows, queries and truth over other coarse centroids (no rotations screened yet)."""
        other = copy.copy(self)
        other.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        other.rotations, other._covariance = {}, None
        return other

    @property
    def covariance(self) -> np.ndarray:
        """The covariance of self.train's residuals to the shared centroids (computed once)."""
        if self._covariance is None:
            self._covariance = residual_covariance(self.train, self.centroids)
        return self._covariance


def rotation_key(factory: str) -> str | None:
    """The OPQ part of a factory ('OPQ96_480' of 'OPQ96_480,IVF1024,PQ96x8np'): candidates naming
    the same one share its rotation; None without one."""
    first = factory.split(",")[0]
    return first if first.startswith("OPQ") else None


def coarse_centroids(xt: np.ndarray, nlist: int, seed: int = 0, niter: int | None = None) -> np.ndarray:
    """nlist k-means centroids of `xt` by inner product, as IndexIVF.train would train them
    (`niter` iterations instead of faiss's 25: a quick estimate, no warning for few points)."""
    index = faiss.index_factory(xt.shape[1], f"IVF{nlist},Flat", METRIC)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    if niter is not None:
        ivf.cp.niter, ivf.cp.min_points_per_centroid = niter, 1
    ivf.train_q1(len(xt), faiss.swig_ptr(np.ascontiguousarray(xt, dtype=np.float32)), False, METRIC)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def residual_energy(x: np.ndarray, centroids: np.ndarray) -> float:
    """The mean squared distance of `x`'s rows to their nearest centroid by inner product (what
    the codes of an IVF index must encode)."""
    return float((residuals(x, centroids) ** 2).sum(axis=1).mean())


def _trained(c: Candidate, data: ScreenData) -> faiss.Index:
    """A template of `c` with the shared coarse centroids, its codes (and rotation) trained on data.train."""
    index = faiss.index_factory(data.train.shape[1], c.factory, METRIC)
    centroids = data.centroids
    if (opq := opq_of(index)) is not None:
        key = rotation_key(c.factory)
        if key not in data.rotations:  # one eigendecomposition per rotation, shared by its candidates
            data.rotations[key] = rotation_for(index, data.covariance)
        set_rotation(index, data.rotations[key])
        centroids = opq.apply(centroids)
    elif (pca := pca_of(index)) is not None:
        train_pca(pca, data.train)
        centroids = pca.apply(centroids)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    pq = getattr(ivf, "pq", None)
    if pq is not None:
        pq.cp.niter, pq.cp.min_points_per_centroid = PQ_NITER, 1  # 10k rows for 256 centroids: no warning
    ivf.quantizer.add(centroids)  # IndexIVF.train skips k-means with nlist centroids in its quantizer
    index.train(data.train)
    return index


def _recall(index: faiss.Index, data: ScreenData, nprobe: int) -> tuple[float, float]:
    """(recall@k of data.queries against the exact truth, seconds of the search) at `nprobe`."""
    t = time.monotonic()
    found = index.search(data.queries, data.k, params=search_parameters(index, nprobe))[1]
    return float(knn_intersection_measure(found, data.gt)), time.monotonic() - t


def screen_one(c: Candidate, data: ScreenData, max_nprobe: int = MAX_NPROBE) -> dict:
    """The frontier record of `c`: trained and filled on the subsample, recall@k at every
    power-of-two nprobe up to max_nprobe (and nlist), its best, and what each step took."""
    t = time.monotonic()
    index = _trained(c, data)
    train_s = time.monotonic() - t
    t = time.monotonic()
    index.add(data.base)
    add_s = time.monotonic() - t
    curve, best = [], None
    for p in [1 << i for i in range(max_nprobe.bit_length()) if 1 << i <= min(max_nprobe, c.nlist)]:
        recall, search_s = _recall(index, data, p)
        curve.append({"nprobe": p, "recall_at_k": round(recall, 4)})
        if best is None or recall > best[1] + 1e-9:
            best = (p, recall, search_s)
    record = {"factory": c.factory, "family": c.family, "bytes_per_vector": c.bytes_per_vector,
              "on_disk": c.on_disk, "nprobe": best[0], "recall_at_k": round(best[1], 4),
              "search_ms_per_query": round(best[2] / len(data.queries) * 1e3, 4), "by_nprobe": curve,
              "train_s": round(train_s, 3), "add_s": round(add_s, 3)}  # fmt: skip
    log.info("screened %s (%g B): recall@%d %.3f at nprobe %d (train %.1f s)", c.factory, c.bytes_per_vector,
             data.k, best[1], best[0], train_s)  # fmt: skip
    return record


def rank(records: list[dict], tolerance: float = TOLERANCE) -> list[dict]:
    """`records` best first: the highest recall; among those within `tolerance` of the best, the
    fewest bytes per vector, then the most coarse lists, then the fastest search; the others by
    recall. More lists before a faster search: they are screened only where they remove residual
    energy (index_builder.more_lists), the 50k-row subsample undervalues them (150k x 512 in 9.7 MB:
    OPQ48_144 over 1408 lists 0.855 on the screen against 0.854 over 1024, 0.838 against 0.828
    built, 10k queries), and a search time measured on 500 queries is noise within a tolerance."""
    if not records:
        return []
    top = max(r["recall_at_k"] for r in records)
    near = [r for r in records if r["recall_at_k"] >= top - tolerance]
    near.sort(key=lambda r: (r["bytes_per_vector"], -(nlist_of(r["factory"]) or 0), r["search_ms_per_query"]))
    rest = sorted((r for r in records if r["recall_at_k"] < top - tolerance), key=lambda r: -r["recall_at_k"])
    return near + rest


def ranked(records: list[dict]) -> list[dict]:
    """`records` (screen's, of one or several screens) ranked (rank), those with an error last."""
    return rank([r for r in records if "error" not in r]) + [r for r in records if "error" in r]


def _opq_not_worth(c: Candidate, data: ScreenData) -> dict | None:
    """None unless `c` has an OPQ rotation whose bound gain (index_builder.opq) is not worth its
    training: then the record saying so (ranked last, not trained)."""
    m = opq_m(c.factory)
    if m is None:
        return None
    gain = gain_of(data.covariance, m)
    if worth_opq(gain):
        return None
    why = f"not trained: the best rotation removes {gain:.1%} of PQ{m}'s distortion bound"
    return {"factory": c.factory, "family": c.family, "bytes_per_vector": c.bytes_per_vector,
            "opq_gain": round(gain, 4), "error": why}  # fmt: skip


def _twin_of(c: Candidate, cands: list[Candidate]) -> dict | None:
    """None unless `c` is a fast-scan RaBitQ whose plain twin (the same codes in lists faiss can
    also keep on disk) is a candidate too: then the record saying so (ranked last, not trained).
    Packing the codes in blocks changes their search speed, not what they can recall."""
    if c.family != "RaBitQfs":
        return None
    twin = c.factory.replace("RaBitQfs", "RaBitQ")
    if not any(o.factory == twin for o in cands):
        return None
    return {"factory": c.factory, "family": c.family, "bytes_per_vector": c.bytes_per_vector,
            "error": f"not screened: the same codes as {twin}, packed for fast-scan"}  # fmt: skip


def screen(cands: list[Candidate], data: ScreenData) -> list[dict]:
    """Every candidate's frontier record (screen_one), ranked (rank); a candidate faiss cannot
    train on the subsample, an OPQ rotation not worth training, or a fast-scan twin of another
    candidate is recorded with why and ranked last."""
    records, failed = [], []
    for c in cands:
        if (skip := _opq_not_worth(c, data) or _twin_of(c, cands)) is not None:
            failed.append(skip)
            continue
        try:
            records.append(screen_one(c, data))
        except RuntimeError as exc:
            log.warning("screening %s failed: %s", c.factory, exc)
            failed.append({"factory": c.factory, "family": c.family, "bytes_per_vector": c.bytes_per_vector,
                           "error": str(exc).splitlines()[-1][:200]})  # fmt: skip
    return ranked(records + failed)
