"""`build-index`: train an index template on a sample, add shards into copies, merge, measure.

    shards --sample--> train template --copy per shard--> add_with_ids(global ids) --> merge_from
                       (or reuse an earlier IDX's)                                 --> nprobe, recall
    IDX/index.faiss, IDX/ids.parquet (row i = faiss id i: id, caption), IDX/template.faiss (the
    trained empty template), IDX/manifest.json (last)

An earlier build's template (`template=`) is reused unless the dimension, vector or factory
differ, or (retrain "auto") the vectors drifted away from it (index_builder.drift: codec and
coarse errors on today's sample against the errors on held-out vectors when it was trained).

Global ids are assigned in shard order, so a merged index equals one built by adding every
vector to one copy of the template. Shards can be added in parallel processes (`workers`),
each with its own OpenMP thread budget.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import re
import time
from datetime import UTC, datetime

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from encoders.errors import InputError, SettingsError
from index_builder import faiss_io, storage
from index_builder.drift import blend, codec_errors, drift
from index_builder.embeddings import MANIFEST, Shard, arrow_to_vectors, list_shards, vector_column
from index_builder.factory import choose_factory, choose_nprobe, choose_train_size
from index_builder.params import nprobe_ladder
from index_builder.recall import measure_recall
from index_builder.settings import BuildSettings

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
TEMPLATE_FILE = "template.faiss"
HELD_OUT = 10_000  # vectors kept out of training to measure the codec's errors (the drift baseline)
MIN_SPARE = 1_000  # fewer vectors beyond the training sample than this: hold out a tenth of the data instead
FRESH_SAMPLE = 10_000  # vectors computed today (not copied) on which a reused template is tested
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


def read_vectors(shard: Shard, vector: str) -> tuple[np.ndarray, np.ndarray]:
    """([n, d] float32 vectors, valid mask [n]) of one shard; text vectors are all-zero without caption."""
    return arrow_to_vectors(storage.read_parquet(shard.path, [vector_column(vector)]).column(0))


class ShardCache:
    """Shard tables (id, caption, vector) read once and kept while they fit in `budget_bytes`.

    Sampling, adding and measuring recall each walk every shard; below the budget the build
    reads each shard once (like a plain in-memory faiss script), above it streams.
    """

    def __init__(self, vector: str, budget_bytes: int):
        self.columns = ["id", "caption", vector_column(vector)]
        self.budget, self.used = budget_bytes, 0
        self.kept: dict[str, pa.Table] = {}

    def table(self, shard: Shard) -> pa.Table:
        if shard.path in self.kept:
            return self.kept[shard.path]
        table = storage.read_parquet(shard.path, self.columns)
        if self.used + table.nbytes <= self.budget:
            self.kept[shard.path] = table
            self.used += table.nbytes
        return table

    def vectors(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        return arrow_to_vectors(self.table(shard).column(2))


def fresh_sample(shards: list[Shard], cache: ShardCache, size: int, seed: int) -> tuple[np.ndarray, int, int]:
    """(up to `size` vectors, seeded uniform sample, of rows whose vectors were computed rather
    than copied from a previous run: vectors a reused template has never seen; the number of
    computed rows; the number of copied rows)."""
    parts, copied_rows = [], 0
    for shard in shards:
        names = storage.read_schema(shard.path).names
        copied = (storage.read_parquet(shard.path, ["copied"]).column(0).to_numpy(zero_copy_only=False)
                  if "copied" in names else np.zeros(shard.num_rows, bool))  # fmt: skip
        x, valid = cache.vectors(shard)
        copied = copied.astype(bool)
        parts.append(x[valid & ~copied])
        copied_rows += int((valid & copied).sum())
    fresh = np.concatenate(parts)
    fresh_rows = len(fresh)
    if len(fresh) > size:
        fresh = fresh[np.sort(np.random.default_rng(seed).choice(len(fresh), size, replace=False))]
    return fresh, fresh_rows, copied_rows


def sample_training_set(
    shards: list[Shard], vector: str, size: int, seed: int, cache: ShardCache | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A seeded uniform sample of `size` valid vectors across all shards.

    Returns (vectors [s, d], their global faiss ids [s], valid count per shard). Global ids
    number the valid rows in shard order, the same numbering `add_shard` uses.
    """
    rng = np.random.default_rng(seed)
    total = sum(s.num_rows for s in shards)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    parts, ids, valid_counts = [], [], []
    row0 = id0 = 0
    for shard in shards:
        x, valid = cache.vectors(shard) if cache else read_vectors(shard, vector)
        local = chosen[(chosen >= row0) & (chosen < row0 + shard.num_rows)] - row0
        local = local[valid[local]]
        parts.append(x[local])
        ids.append(id0 + np.cumsum(valid)[local] - 1)
        valid_counts.append(int(valid.sum()))
        row0 += shard.num_rows
        id0 += valid_counts[-1]
    return np.concatenate(parts), np.concatenate(ids).astype(np.int64), valid_counts


def train_template(factory: str, xt: np.ndarray) -> faiss.Index:
    """An empty trained index; the coarse quantizer trains on GPU when faiss sees one."""
    index = new_index(xt.shape[1], factory)
    ivf = faiss.try_extract_index_ivf(index)
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
        log.info("training the coarse quantizer on %d GPU(s)", faiss.get_num_gpus())
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, METRIC))
    index.train(xt)
    if ivf is not None:
        ivf.clustering_index = None
    return index


def _init_worker(threads: int) -> None:
    faiss.omp_set_num_threads(threads)


def add_shard(template_bytes, shard: Shard, vector: str, first_id: int, table: pa.Table | None = None):
    """Add one shard's valid vectors with ids first_id.. into a copy of the template.

    Returns (serialised part index, ids, captions) for the valid rows.
    """
    index = faiss_io.from_bytes(template_bytes)
    if table is None:
        table = storage.read_parquet(shard.path, ["id", "caption", vector_column(vector)])
    x, valid = arrow_to_vectors(table.column(2))
    x = x[valid]
    if faiss.try_extract_index_ivf(index) is not None:
        index.add_with_ids(x, np.arange(first_id, first_id + len(x), dtype=np.int64))
    else:
        index.add(x)  # flat codes: ids are positions, numbered in merge order
    mask = pa.array(valid)
    return faiss_io.to_bytes(index), table.column("id").filter(mask), table.column("caption").filter(mask)


def add_and_merge(
    template: faiss.Index,
    shards: list[Shard],
    vector: str,
    valid_counts: list[int],
    workers: int,
    cache: ShardCache | None = None,
):
    """Add every shard into a copy of `template` (in `workers` processes) and merge in shard order."""
    offsets = np.concatenate([[0], np.cumsum(valid_counts)[:-1]]).astype(int).tolist()
    template_bytes = faiss_io.to_bytes(template)
    merged = faiss_io.from_bytes(template_bytes)
    ids, captions = [], []
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = cf.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(threads,)
        )
        parts = pool.map(add_shard, [template_bytes] * len(shards), shards, [vector] * len(shards), offsets)
    else:
        pool = None
        parts = (
            add_shard(template_bytes, s, vector, o, cache.table(s) if cache else None) for s, o in zip(shards, offsets)
        )
    try:
        for i, (part_bytes, part_ids, part_captions) in enumerate(parts):
            merged.merge_from(faiss_io.from_bytes(part_bytes), 0)
            ids.append(part_ids)
            captions.append(part_captions)
            log.info("added shard %d/%d (ntotal %d)", i + 1, len(shards), merged.ntotal)
    finally:
        if pool is not None:
            pool.shutdown()
    table = pa.table(
        {
            "id": pa.chunked_array([chunk for c in ids for chunk in c.chunks], pa.string()),
            "caption": pa.chunked_array([chunk for c in captions for chunk in c.chunks], pa.string()),
        }
    )
    return merged, table


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
    earlier = storage.read_json(storage.join(cfg.template, MANIFEST))
    for what, theirs, ours in (
        ("dimension", earlier["dim"], d),
        ("vector", earlier["vector"], cfg.vector),
        ("factory", earlier["factory"], cfg.factory or earlier["factory"]),
    ):
        if theirs != ours:
            return None, {"mode": "trained", "reason": f"{what} changed ({theirs} -> {ours})", "from": cfg.template}
    template = faiss_io.read_index(path)
    decision = {"mode": "reused", "from": cfg.template, "factory": earlier["factory"]}
    baseline = earlier.get("training", {}).get("baseline_errors")
    if cfg.retrain == "never" or not baseline:
        reason = "--retrain never" if cfg.retrain == "never" else "no baseline errors recorded: reused as is"
        return template, {**decision, "reason": reason}
    previous = earlier["training"].get("estimated_errors") or baseline
    if not len(fresh):
        record = {"baseline_errors": baseline, "estimated_errors": previous}
        return template, {**decision, **record, "reason": "no drift test: every vector was copied from the earlier run"}
    now = codec_errors(template, fresh)
    estimate = blend(previous, now, copied_rows, fresh_rows)
    drifted, why = drift(baseline, estimate, cfg.drift_threshold)
    why = f"index estimate {why}; the {fresh_rows} vectors computed today: " + ", ".join(
        f"{k} {v:.4g}" for k, v in now.items()
    )
    record = {"errors": now, "estimated_errors": estimate, "baseline_errors": baseline, "fresh_rows": fresh_rows,
              "copied_rows": copied_rows, "reason": ("drifted: " if drifted else "no drift: ") + why}  # fmt: skip
    if drifted:
        return None, {**decision, **record, "mode": "trained"}
    return template, {**decision, **record}


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def build_index(cfg: BuildSettings) -> dict:
    """Build and commit IDX (index.faiss, ids.parquet, manifest.json last); return the manifest."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    source_path = storage.join(cfg.embeddings, MANIFEST)
    if not storage.exists(source_path):
        raise InputError(
            f"{cfg.embeddings} has no {MANIFEST}: the embed run did not finish; re-run `fusionindex embed`"
        )
    source = storage.read_json(source_path)
    shards = list_shards(cfg.embeddings)
    total = sum(s.num_rows for s in shards)
    if total == 0:
        raise InputError(f"{cfg.embeddings} holds no embedded rows; nothing to index")
    d = int(source["dim"])
    factory = cfg.factory or choose_factory(total, d)
    new_index(d, factory)  # a bad --factory fails here, before any vector is read
    train_size = cfg.train_size or choose_train_size(total, factory)
    spare = total - train_size  # held-out vectors measure the codec on data it did not train on
    held_out = min(HELD_OUT, spare) if spare >= MIN_SPARE else min(HELD_OUT, total // 10)
    train_size = min(train_size, total - held_out)

    t = time.monotonic()
    cache = ShardCache(cfg.vector, cfg.cache_bytes)
    sample, sample_ids, valid_counts = sample_training_set(shards, cfg.vector, train_size + held_out, cfg.seed, cache)
    n_valid = sum(valid_counts)
    if n_valid == 0:
        raise InputError(f"no row has a {cfg.vector} vector (e.g. --vector text with no captions)")
    split = np.random.default_rng(cfg.seed + 2).permutation(len(sample))
    xt, xt_ids = sample[split[: len(sample) - held_out]], sample_ids[split[: len(sample) - held_out]]
    xh = sample[split[len(sample) - held_out :]] if held_out else xt  # baseline on held-out vectors when there are some
    timings = {"sample_s": time.monotonic() - t}
    t = time.monotonic()
    fresh, fresh_rows, copied_rows = (
        fresh_sample(shards, cache, FRESH_SAMPLE, cfg.seed + 3) if cfg.template else (np.zeros((0, d)), 0, 0)
    )
    template, training = reusable_template(cfg, d, fresh, fresh_rows, copied_rows)
    if template is None:
        log.info(
            "building %s over %d vectors (%s, dim %d), training on %d (%s)",
            factory,
            total,
            cfg.vector,
            d,
            len(xt),
            training["reason"],
        )
        try:
            template = train_template(factory, xt)
        except RuntimeError as exc:
            raise SettingsError(
                f"cannot train {factory!r} on {len(xt)} vectors: {exc}; pass a smaller --factory or more data"
            ) from exc
        training["baseline_errors"] = training["estimated_errors"] = codec_errors(template, xh)
        training["baseline_on"] = f"{len(xh)} held-out vectors" if held_out else "the training sample (too few vectors)"
    else:
        factory = training["factory"]
        log.info(
            "building %s over %d vectors (%s, dim %d) on the template of %s (%s)",
            factory,
            total,
            cfg.vector,
            d,
            cfg.template,
            training["reason"],
        )
        training["baseline_errors"] = training.get("baseline_errors") or codec_errors(template, xh)
    timings["train_s"] = time.monotonic() - t
    t = time.monotonic()
    index, ids_table = add_and_merge(template, shards, cfg.vector, valid_counts, cfg.workers, cache)
    timings["add_merge_s"] = time.monotonic() - t
    ivf = faiss.try_extract_index_ivf(index)
    nprobe = (cfg.nprobe or choose_nprobe(ivf.nlist)) if ivf is not None else None
    if nprobe is not None:
        set_nprobe(index, min(nprobe, ivf.nlist))
        nprobe = ivf.nprobe
    t = time.monotonic()
    rng = np.random.default_rng(cfg.seed + 1)
    pick = rng.choice(len(xt), size=min(cfg.recall_queries, len(xt)), replace=False)
    ladder = nprobe_ladder(ivf.nlist) if ivf is not None else []
    recall = measure_recall(index, xt[pick], xt_ids[pick], (cache.vectors(s) for s in shards), k=10, nprobes=ladder)
    timings["recall_s"] = time.monotonic() - t

    manifest = {
        "kind": "fusionindex.index",
        "format_version": 1,
        "factory": factory,
        "metric": "inner_product",
        "vector": cfg.vector,
        "dim": d,
        "ntotal": int(index.ntotal),
        "skipped_null_vectors": total - n_valid,
        "nprobe": nprobe,
        "train_size": int(len(xt)),
        "seed": cfg.seed,
        "training": training,
        "recall": recall,
        "gpu_training": faiss.get_num_gpus() > 0 and ivf is not None,
        "source": {"path": cfg.embeddings, "manifest": source},
        "started_at": started.isoformat(),
        "finished_at": None,
        "timings": {},
    }
    storage.remove(storage.join(cfg.output, MANIFEST))
    storage.remove_temporaries(cfg.output)
    t = time.monotonic()
    faiss_io.write_index(index, storage.join(cfg.output, INDEX_FILE))
    faiss_io.write_index(template, storage.join(cfg.output, TEMPLATE_FILE))
    with storage.atomic_open(storage.join(cfg.output, IDS_FILE)) as fh:
        pq.write_table(ids_table, fh)
    timings["write_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0
    manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
    manifest["finished_at"] = datetime.now(UTC).isoformat()
    storage.write_json(storage.join(cfg.output, MANIFEST), manifest)
    log.info(
        "index %s: %d vectors, nprobe %s, recall@%d %.3f, self@1 %.3f",
        cfg.output,
        index.ntotal,
        nprobe,
        recall["k"],
        recall["recall_at_k"],
        recall["self_at_1"],
    )
    return manifest
