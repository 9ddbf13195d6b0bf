"""Templates: an empty index trained on the sample (its coarse centroids shared between candidates
naming the same IVF), the OPQ screen that skips a rotation not worth training, and the decision to
reuse an earlier build's template instead (index_builder.drift).
"""

from __future__ import annotations

import logging
import re
import time

import faiss
import numpy as np

from encoders import storage
from encoders.errors import SettingsError
from index_builder import faiss_io
from index_builder.choose import OPQ_MIN_GAIN, opq_m, worth_opq
from index_builder.drift import blend, codec_errors, drift
from index_builder.factory import nlist_of
from index_builder.layout import TEMPLATE_FILE
from index_builder.opq import opq_gain, opq_of, pca_of, residual_covariance, rotation_for, set_rotation, train_pca
from index_builder.records import IndexManifest
from index_builder.screen import coarse_centroids, rotation_key
from index_builder.settings import BuildSettings

log = logging.getLogger(__name__)

METRIC = faiss.METRIC_INNER_PRODUCT


def new_index(d: int, factory: str) -> faiss.Index:
    """An empty index of `factory`; a string faiss cannot parse, or an index the shard-merging
    build cannot fill, is a SettingsError."""
    try:
        index = faiss.index_factory(d, factory, METRIC)
    except RuntimeError as exc:
        why = (
            re.split(r"\.(?:cpp|h):\d+: ", str(exc))[-1].strip().strip("'") or type(exc).__name__
        )  # not the C++ location
        raise SettingsError(f"--factory {factory!r} is not a faiss index_factory string for dim {d} ({why})") from exc
    top = faiss.downcast_index(index)
    inner = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexPreTransform) else top
    if not isinstance(inner, faiss.IndexIVF | faiss.IndexFlat):
        # shards are added into copies of the trained template and merged: faiss has no
        # add_with_ids / merge_from for refinement wrappers (RFlat) or HNSW graphs
        raise SettingsError(
            f"--factory {factory!r} builds a {type(inner).__name__}, which the shard-merging build cannot fill; "
            "use an IVF factory (optionally after OPQ/PCA, e.g. IVF4096,PQ64np) or Flat"
        )
    return index


class TrainingSample:
    """The training vectors of a build, held here only: the last template trained on them lets
    them go once its coarse quantizer is trained (train_template), keeping a copy of the rows its
    codes train on; the build adds the shards without them."""

    def __init__(self, x: np.ndarray):
        self.x: np.ndarray | None = x
        self.last = False  # set before training the last template: nothing needs x after it


def train_template(
    factory: str,
    xt: np.ndarray | TrainingSample,
    centroids: np.ndarray | None = None,
    rotation: np.ndarray | None = None,
) -> faiss.Index:
    """An empty trained index; the coarse quantizer trains on GPU when faiss sees one. `centroids`
    (nlist x d): coarse centroids already trained on `xt` by another candidate; the quantizer
    starts full and faiss trains only the codes. An OPQ rotation is the parametric one
    (index_builder.opq): `rotation` when given (the screen's), else computed here from the
    residuals of xt to `centroids` (trained here when not given); the centroids are rotated with it."""
    sample, xt = (xt, xt.x) if isinstance(xt, TrainingSample) else (None, xt)
    index = new_index(xt.shape[1], factory)
    ivf = faiss.try_extract_index_ivf(index)
    opq, pca = opq_of(index), pca_of(index)
    if opq is not None or pca is not None:  # the shared centroids, moved as the vectors will be
        centroids = coarse_centroids(xt, ivf.nlist) if centroids is None else centroids
        if opq is not None:
            set_rotation(
                index, rotation_for(index, residual_covariance(xt, centroids)) if rotation is None else rotation
            )
        else:
            train_pca(pca, xt)
        centroids = (opq if opq is not None else pca).apply(np.ascontiguousarray(centroids, dtype=np.float32))
    if centroids is not None:
        ivf.quantizer.add(centroids)  # IndexIVF.train skips k-means when the quantizer holds nlist centroids
    pq = getattr(faiss.downcast_index(ivf if ivf is not None else index), "pq", None)
    if pq is not None and len(xt) < 39 * pq.ksub:
        # faiss would print this once per sub-quantizer (64 lines for PQ64): say it once
        log.warning(
            "training %d PQ codebooks of %d centroids on %d vectors (faiss advises >= %d)",
            pq.M,
            pq.ksub,
            len(xt),
            39 * pq.ksub,
        )
        pq.cp.min_points_per_centroid = 1
    if ivf is not None and faiss.get_num_gpus() > 0:
        # k-means assignment on the GPU: the coarse centroids, and each PQ sub-quantizer's codebook
        # (faiss's own benchmarks do the same); not exercised here: no machine with GPU faiss was lent
        log.info("training the coarse quantizer%s on %d GPU(s)", " and PQ" if pq else "", faiss.get_num_gpus())
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, METRIC))
        if pq is not None:
            pq.assign_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(pq.dsub))
    cap = ivf.train_encoder_num_vectors() if ivf is not None and ivf.by_residual else 0
    if isinstance(faiss.downcast_index(index), faiss.IndexIVF) and 0 < cap < len(xt):  # no pre-transform
        # what IndexIVF.train does, but for a copy: it trains the coarse quantizer on every vector,
        # then copies a random `cap` of them (100k for SQ, 64k for PQ) and computes their residuals
        # to train the codes; xt is shuffled, so its first `cap` rows are a uniform sample (a view)
        if ivf.quantizer.ntotal < ivf.nlist:
            ivf.train_q1(len(xt), faiss.swig_ptr(xt), ivf.verbose, ivf.metric_type)
        if sample is not None and sample.last:  # the rest of the sample is freed before the residuals
            xt, sample.x = xt[:cap].copy(), None
        index.train(xt[:cap])  # the quantizer is full: only the codes train
    else:
        index.train(xt)
    if ivf is not None:
        ivf.clustering_index = None
    if pq is not None:
        pq.assign_index = None
    return index


def coarse_of(factory: str) -> str | None:
    """The coarse quantizer part of an IVF factory that is trained on the raw vectors ('IVF1024' of
    'IVF1024,PQ64x8np'), which candidates naming the same one can share; None with a pre-transform."""
    return factory.split(",")[0] if factory.startswith("IVF") else None


def train_candidate(
    factory: str, xt: TrainingSample, total: int, cfg: BuildSettings, training: dict, coarse: dict[str, np.ndarray]
) -> tuple[faiss.Index, float]:
    """(a template of `factory` trained on xt, seconds). `coarse`: centroids by coarse_of(), shared
    between the candidates of one build (read and filled here)."""
    t = time.monotonic()
    n, d = xt.x.shape
    log.info("building %s over %d vectors (%s, dim %d), training on %d (%s)", factory, total, cfg.vector,
             d, n, training["reason"])  # fmt: skip
    key, behind = coarse_of(factory), coarse_of(factory.split(",", 1)[-1])  # the IVF behind an OPQ rotation
    try:
        if opq_m(factory) is not None and behind not in coarse:  # an OPQ factory: key is None
            coarse[behind] = coarse_centroids(xt.x, nlist_of(factory), cfg.seed)
        template = train_template(factory, xt, coarse.get(key or behind), coarse.get(rotation_key(factory)))
        if key is not None and key not in coarse:
            ivf = faiss.try_extract_index_ivf(template)
            coarse[key] = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        return template, time.monotonic() - t
    except RuntimeError as exc:
        raise SettingsError(
            f"cannot train {factory!r} on {n} vectors: {exc}; pass a smaller --factory or more data"
        ) from exc


def opq_screen(factory: str, xt: np.ndarray, seed: int, coarse: dict[str, np.ndarray]) -> dict | None:
    """None when `factory` has no OPQ rotation or one worth training (index_builder.opq), else
    the record of why it is skipped. `coarse`: centroids other candidates trained (by coarse_of):
    with those of this factory's IVF the bound is taken on the residuals the PQ encodes."""
    m = opq_m(factory)
    if m is None:
        return None
    t = time.monotonic()
    centroids = coarse.get(coarse_of(factory.split(",", 1)[1]))  # the IVF behind the rotation
    gain = opq_gain(xt, m, centroids, seed=seed)
    if worth_opq(gain):
        return None
    on = "IVF residuals" if centroids is not None else "vectors"
    why = f"the best rotation removes {gain:.1%} of PQ{m}'s distortion bound on the sampled {on} (< {OPQ_MIN_GAIN:.0%})"
    log.info("skipping %s: %s", factory, why)
    return {"factory": factory, "opq_gain": round(gain, 4), "screen_s": round(time.monotonic() - t, 3), "reason": why}


def reusable_template(
    cfg: BuildSettings, d: int, fresh: np.ndarray, fresh_rows: int, copied_rows: int
) -> tuple[faiss.Index | None, dict]:
    """The earlier build's template when it may be reused, else None; and the decision record
    ({"mode", "reason", "from", "errors"...}) for the manifest. `fresh`: a sample of the vectors the
    template has not seen (computed today, not copied), on which the drift test measures."""
    if cfg.template is None:
        return None, {"mode": "trained", "reason": "no earlier index to reuse"}
    if cfg.retrain == "always":
        return None, {"mode": "trained", "reason": "--retrain always", "from": cfg.template}
    path = storage.join(cfg.template, TEMPLATE_FILE)
    if not storage.exists(path):
        return None, {"mode": "trained", "reason": f"{cfg.template} holds no {TEMPLATE_FILE}", "from": cfg.template}
    earlier = IndexManifest.load(cfg.template)
    for what, theirs, ours in (
        ("dimension", earlier.dim, d),
        ("vector", earlier.vector, cfg.vector),
        ("factory", earlier.factory, cfg.factory or earlier.factory),
    ):
        if theirs != ours:
            return None, {"mode": "trained", "reason": f"{what} changed ({theirs} -> {ours})", "from": cfg.template}
    template = faiss_io.read_index(path)
    decision = {"mode": "reused", "from": cfg.template, "factory": earlier.factory}
    baseline = earlier.training.baseline_errors
    if cfg.retrain == "never" or not baseline:
        reason = "--retrain never" if cfg.retrain == "never" else "no baseline errors recorded: reused as is"
        return template, {**decision, "reason": reason}
    previous = earlier.training.estimated_errors or baseline
    if not len(fresh):
        record = {"baseline_errors": baseline, "estimated_errors": previous}
        return template, {**decision, **record, "reason": "no drift test: every vector was copied from the earlier run"}
    now = codec_errors(template, fresh)
    estimate = blend(previous, now, copied_rows, fresh_rows)
    drifted, why = drift(baseline, estimate, cfg.drift_threshold)
    why = f"index estimate {why}; the {fresh_rows} vectors computed today: " + ", ".join(
        f"{k} {v:.4g}" for k, v in now.items()
    )
    record = {
        "errors": now,
        "estimated_errors": estimate,
        "baseline_errors": baseline,
        "fresh_rows": fresh_rows,
        "copied_rows": copied_rows,
        "reason": ("drifted: " if drifted else "no drift: ") + why,
    }
    if drifted:
        return None, {**decision, **record, "mode": "trained"}
    return template, {**decision, **record}
