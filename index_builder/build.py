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

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from encoders.errors import InputError, SettingsError
from index_builder import faiss_io, storage
from index_builder.choose import (
    ID_BYTES,
    OPQ_MIN_GAIN,
    Candidate,
    available_memory,
    candidates,
    merge_mode,
    opq_m,
    to_try,
    within_budget,
    worth_opq,
)
from index_builder.drift import blend, codec_errors, drift
from index_builder.embeddings import (
    MANIFEST,
    Shard,
    arrow_to_vectors,
    list_shards,
    read_vectors_lean,
    vector_column,
)
from index_builder.factory import choose_factory, choose_train_size
from index_builder.memory import lean_allocators
from index_builder.opq import opq_gain
from index_builder.parts import add_part, merge_in_ram, merge_on_disk, part_name
from index_builder.recall import exact_neighbours, latency, truth_width
from index_builder.settings import BuildSettings
from index_builder.split import combine, members, owners, shard_dirs, with_ids
from index_builder.tune import tune

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"  # the inverted lists of an index merged on disk, beside index.faiss
PARTS_DIR = ".parts"  # inverted-list parts written by parallel adders, removed once merged
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
    """Shard tables (id, caption, vector) read once and kept, when all of them fit in `budget_bytes`.

    Sampling, adding and measuring recall each walk every shard; below the budget the build
    reads each shard once (like a plain in-memory faiss script), above it streams every pass and
    keeps nothing, so that a build larger than the budget holds one shard at a time (a cache
    filled up to the budget would add the whole budget to the peak memory of the largest builds).
    """

    def __init__(self, vector: str, budget_bytes: int, shards: list[Shard] | None = None, dim: int | None = None):
        self.vector = vector
        self.columns = ["id", "caption", vector_column(vector)]
        need = sum(s.num_rows for s in shards) * (dim * 4 + 64) if shards is not None and dim else 0
        self.budget = budget_bytes if need <= budget_bytes else 0
        self.used = 0
        if self.budget == 0 and budget_bytes:
            log.info("%d MiB of vectors exceed the %d MiB cache: streaming the shards on every pass",
                     need >> 20, budget_bytes >> 20)  # fmt: skip
        self.kept: dict[str, pa.Table] = {}
        self.labels: dict[str, tuple[pa.ChunkedArray, pa.ChunkedArray]] = {}  # id, caption of rows with a vector

    def table(self, shard: Shard) -> pa.Table:
        if shard.path in self.kept:
            return self.kept[shard.path]
        if not self.budget:  # streaming: hand back what decoding the previous shard left in Arrow's pool
            pa.default_memory_pool().release_unused()
        table = storage.read_parquet(shard.path, self.columns)
        if self.used + table.nbytes <= self.budget:
            self.kept[shard.path] = table
            self.used += table.nbytes
        return table

    def vectors(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        if self.budget or shard.path in self.kept:
            table = self.table(shard)
            x, valid = arrow_to_vectors(table.column(2))
        else:  # streaming: decoded in batches, no table (embeddings.read_vectors_lean)
            pa.default_memory_pool().release_unused()
            table, (x, valid) = None, read_vectors_lean(shard.path, self.columns[2])
        if shard.path not in self.labels:  # ids.parquet's rows, kept from the first pass (no pass of their own)
            mask = pa.array(valid)
            table = storage.read_parquet(shard.path, self.columns[:2]) if table is None else table
            self.labels[shard.path] = (table.column("id").filter(mask), table.column("caption").filter(mask))
        return x, valid


def fresh_sample(shards: list[Shard], cache: ShardCache, size: int, seed: int) -> tuple[np.ndarray, int, int]:
    """(up to `size` vectors, seeded uniform sample, of rows whose vectors were computed rather
    than copied from a previous run: vectors a reused template has never seen; the number of
    computed rows; the number of copied rows)."""
    parts, copied_rows = [], 0
    for shard in shards:
        names = storage.read_schema(shard.path).names
        copied = (
            storage.read_parquet(shard.path, ["copied"]).column(0).to_numpy(zero_copy_only=False)
            if "copied" in names
            else np.zeros(shard.num_rows, bool)
        )
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
    out, ids, valid_counts = None, np.empty(len(chosen), np.int64), []
    row0 = id0 = filled = 0
    for shard in shards:
        x, valid = cache.vectors(shard) if cache else read_vectors(shard, vector)
        if out is None:  # filled in place: concatenating parts would hold the sample twice at its peak
            out = np.empty((len(chosen), x.shape[1]), np.float32)
        local = chosen[(chosen >= row0) & (chosen < row0 + shard.num_rows)] - row0
        local = local[valid[local]]
        out[filled : filled + len(local)] = x[local]
        ids[filled : filled + len(local)] = id0 + np.cumsum(valid)[local] - 1
        filled += len(local)
        valid_counts.append(int(valid.sum()))
        row0 += shard.num_rows
        id0 += valid_counts[-1]
    return out[:filled], ids[:filled], valid_counts


class TrainingSample:
    """The training vectors of a build, held here only: the last template trained on them lets
    them go once its coarse quantizer is trained (train_template), keeping a copy of the rows its
    codes train on; the build adds the shards without them."""

    def __init__(self, x: np.ndarray):
        self.x: np.ndarray | None = x
        self.last = False  # set before training the last template: nothing needs x after it


def train_template(factory: str, xt: np.ndarray | TrainingSample, centroids: np.ndarray | None = None) -> faiss.Index:
    """An empty trained index; the coarse quantizer trains on GPU when faiss sees one. `centroids`
    (nlist x d, an IVF factory without a pre-transform): coarse centroids already trained on `xt`
    by another candidate; the quantizer starts full and faiss trains only the codes."""
    sample, xt = (xt, xt.x) if isinstance(xt, TrainingSample) else (None, xt)
    index = new_index(xt.shape[1], factory)
    ivf = faiss.try_extract_index_ivf(index)
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


# (template path, shards, first global id of each, vector, parts directory, index shard (k, K) or
# None) -> the part paths, in shard order: a parallel adder (pipelines.index_add, a Beam stage)
AddParts = Callable[[str, list[Shard], list[int], str, str, "tuple[int, int] | None"], list[str]]


def ids_table(shards: list[Shard], cache: ShardCache) -> pa.Table:
    """id and caption of every row with a vector, in global-id order (row i = faiss id i)."""
    ids, captions = [], []
    for shard in shards:
        if shard.path not in cache.labels:
            cache.vectors(shard)
        ids.extend(cache.labels[shard.path][0].chunks)
        captions.extend(cache.labels[shard.path][1].chunks)
    return pa.table({"id": pa.chunked_array(ids, pa.string()), "caption": pa.chunked_array(captions, pa.string())})


def shard_rows(ids: pa.ChunkedArray, vectors: pa.ChunkedArray, first_id: int, only: tuple[int, int] | None):
    """(vectors [m, d], global ids [m]) of one embeddings shard's rows with a vector, numbered from
    `first_id`; with `only` = (k, K), just the rows of index shard k of K (index_builder.split)."""
    x, valid = arrow_to_vectors(vectors)
    return valid_rows(x, valid, ids.filter(pa.array(valid)) if only is not None else None, first_id, only)


def valid_rows(x: np.ndarray, valid: np.ndarray, valid_ids: pa.ChunkedArray | None, first_id: int, only):
    """shard_rows of vectors already read: `valid_ids`, the ids of the rows with a vector (needed with `only`)."""
    x, gids = (x if valid.all() else x[valid]), first_id + np.arange(int(valid.sum()), dtype=np.int64)
    if only is not None:
        mine = owners(valid_ids.to_pylist(), only[1]) == only[0]
        x, gids = x[mine], gids[mine]
    return x, gids


def parts_in_process(template, shards: list[Shard], offsets: list[int], cache: ShardCache, only=None):
    """The part of each shard, in order, added by one worker copy of the template in this process."""
    worker = faiss_io.copy(template)
    for i, (shard, first_id) in enumerate(zip(shards, offsets)):
        x, valid = cache.vectors(shard)
        yield add_part(worker, *valid_rows(x, valid, cache.labels[shard.path][0], first_id, only))
        log.info("added shard %d/%d%s", i + 1, len(shards), f" (index shard {only[0] + 1}/{only[1]})" if only else "")


def add_and_merge(
    template: faiss.Index,
    shards: list[Shard],
    valid_counts: list[int],
    cache: ShardCache,
    *,
    add_parts: AddParts | None = None,
    template_path: str | None = None,
    parts_dir: str | None = None,
    ivfdata: str | None = None,
    only: tuple[int, int] | None = None,
) -> faiss.Index:
    """Every shard's vectors with global ids (valid rows numbered in shard order) in a copy of
    `template` (with `only` = (k, K): the rows of index shard k of K). Parts come from `add_parts`
    (written under `parts_dir`; the workers read the template from `template_path`) or from this
    process; they merge in RAM, or on disk into the local file `ivfdata` when it is given."""
    offsets = np.concatenate([[0], np.cumsum(valid_counts)[:-1]]).astype(int).tolist()
    if add_parts is not None:
        paths = add_parts(template_path, shards, offsets, cache.vector, parts_dir, only)
        if ivfdata:
            return merge_on_disk(template, paths, ivfdata)
        return merge_in_ram(template, (np.frombuffer(storage.read_bytes(p), np.uint8) for p in paths))
    parts = parts_in_process(template, shards, offsets, cache, only)
    if not ivfdata:
        return merge_in_ram(template, parts)
    with tempfile.TemporaryDirectory(prefix="fusionindex-parts-") as tmp:
        paths = []
        for i, data in enumerate(parts):
            paths.append(os.path.join(tmp, part_name(i)))
            data.tofile(paths[-1])
        return merge_on_disk(template, paths, ivfdata)


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


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    for member in members(index):
        ivf = faiss.try_extract_index_ivf(member)
        if ivf is not None:
            ivf.nprobe = nprobe


def lists_of(index: faiss.Index) -> str:
    """What holds the index's vectors: "lists" (IVF), "fast-scan" (IVF fast-scan blocks) or "flat"."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return "flat"
    return "fast-scan" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan) else "lists"


def estimated_memory(template: faiss.Index, n: int) -> int:
    """Bytes in RAM of `template` once it holds n vectors: codes and ids plus the trained parts."""
    ids = ID_BYTES if faiss.try_extract_index_ivf(template) is not None else 0
    return int(n * (code_bytes(template) + ids)) + len(faiss_io.to_bytes(template))


def code_bytes(index: faiss.Index) -> float:
    """Bytes of code per stored vector (ids and lists excluded)."""
    index = members(index)[0]
    if isinstance(index, faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        return ivf.pq.M * ivf.pq.nbits / 8 if isinstance(ivf, faiss.IndexIVFPQFastScan) else float(ivf.code_size)
    return float(index.sa_code_size())


def plan(cfg: BuildSettings, n: int, d: int) -> list[str]:
    """The factories to try, in order: --factory, or the candidates of the largest code size within
    the budget (SettingsError when none fits), or the default factory for n and d."""
    if cfg.factory:
        return [cfg.factory]
    if not cfg.budgeted:
        return [choose_factory(n, d)]
    every = candidates(n, d)
    fit = within_budget(every, n, cfg.max_bytes_per_vector, cfg.max_memory_bytes)
    if not fit:
        smallest: Candidate = min(every, key=lambda c: c.memory(n))
        raise SettingsError(
            f"no index of {n} vectors of dim {d} fits --max-bytes-per-vector {cfg.max_bytes_per_vector} / "
            f"--max-memory {cfg.max_memory}: the smallest here, {smallest.factory}, needs "
            f"{smallest.code_bytes:g} B per vector and {smallest.memory(n):,} bytes in all"
        )
    return [c.factory for c in to_try(fit)]


def coarse_of(factory: str) -> str | None:
    """The coarse quantizer part of an IVF factory that is trained on the raw vectors ('IVF1024' of
    'IVF1024,PQ64x8np'), which candidates naming the same one can share; None with a pre-transform."""
    return factory.split(",")[0] if factory.startswith("IVF") else None


def _train(
    factory: str, xt: TrainingSample, total: int, cfg: BuildSettings, training: dict, coarse: dict[str, np.ndarray]
) -> tuple[faiss.Index, float]:
    """(a template of `factory` trained on xt, seconds). `coarse`: centroids by coarse_of(), shared
    between the candidates of one build (read and filled here)."""
    t = time.monotonic()
    n, d = xt.x.shape
    log.info("building %s over %d vectors (%s, dim %d), training on %d (%s)", factory, total, cfg.vector,
             d, n, training["reason"])  # fmt: skip
    key = coarse_of(factory)
    try:
        template = train_template(factory, xt, coarse.get(key))
        if key is not None and key not in coarse:
            ivf = faiss.try_extract_index_ivf(template)
            coarse[key] = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        return template, time.monotonic() - t
    except RuntimeError as exc:
        raise SettingsError(
            f"cannot train {factory!r} on {n} vectors: {exc}; pass a smaller --factory or more data"
        ) from exc


def _opq_screen(factory: str, xt: np.ndarray, seed: int, coarse: dict[str, np.ndarray]) -> dict | None:
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


def _add(cfg, template, shards, valid_counts, cache, add_parts, ondisk_dir: str | None) -> faiss.Index:
    """add_and_merge into IDX's parts directory (a parallel adder reads the template from IDX), once
    per index shard; their lists on disk under `ondisk_dir` when given."""
    k_shards = cfg.num_index_shards
    if k_shards > 1:
        template = with_ids(template)
    template_path = None
    if add_parts is not None:
        template_path = storage.join(cfg.output, TEMPLATE_FILE)
        faiss_io.write_index(template, template_path)
    parts = []
    for k, name in enumerate(shard_dirs(k_shards) if k_shards > 1 else [""]):
        ivfdata = os.path.join(ondisk_dir, name, IVFDATA_FILE) if ondisk_dir else None
        if ivfdata:
            os.makedirs(os.path.dirname(ivfdata), exist_ok=True)
        parts.append(
            add_and_merge(
                template,
                shards,
                valid_counts,
                cache,
                add_parts=add_parts,
                template_path=template_path,
                parts_dir=storage.join(cfg.output, PARTS_DIR),
                ivfdata=ivfdata,
                only=(k, k_shards) if k_shards > 1 else None,
            )  # fmt: skip
        )
    return combine(parts)


def write_members(index: faiss.Index, output: str, ondisk: str | None, k_shards: int) -> list[dict]:
    """Write the index (or each index shard, in its own directory) under IDX, with its on-disk lists
    when they were merged on disk (built under `ondisk`); remove what an earlier build of another
    shape left. Returns [{"path", "ntotal", "bytes"}] (path "" is IDX itself)."""
    names = shard_dirs(k_shards) if k_shards > 1 else [""]
    for stale in [n for n in storage.listdir(output) if n.startswith("shard-") and n not in names]:
        storage.remove(storage.join(output, stale), recursive=True)
    if k_shards > 1:
        storage.remove(storage.join(output, INDEX_FILE))
    out = []
    for name, member in zip(names, members(index)):
        where = storage.join(output, name) if name else output
        lists = storage.join(where, IVFDATA_FILE)
        if ondisk:
            storage.put(os.path.join(ondisk, name, IVFDATA_FILE), lists)
        else:
            storage.remove(lists)
        faiss_io.write_index(member, storage.join(where, INDEX_FILE))
        size = storage.size(storage.join(where, INDEX_FILE)) + (storage.size(lists) if ondisk else 0)
        out.append({"path": name, "ntotal": int(member.ntotal), "bytes": size})
    return out


def _trial(factory, index, recall, train_s, add_s, recall_s, merge) -> dict:
    """One candidate's record in the manifest's `choice.tried`."""
    log.info("%s: recall@%d %.3f at nprobe %s (%s)", factory, recall["k"], recall["recall_at_k"], recall["nprobe"],
             "target reached" if recall["reached"] else f"below the target {recall['target']}")  # fmt: skip
    return {"factory": factory, "bytes_per_vector": code_bytes(index), "nprobe": recall["nprobe"],
            "recall_at_k": recall["recall_at_k"], "reached": recall["reached"], "train_s": round(train_s, 3),
            "add_merge_s": round(add_s, 3), "recall_s": round(recall_s, 3), "merge": merge}  # fmt: skip


def build_index(cfg: BuildSettings, add_parts: AddParts | None = None) -> dict:
    """Build and commit IDX (index.faiss [+ index.ivfdata], ids.parquet, template.faiss,
    manifest.json last); return the manifest. With a budget, candidates are built in order
    (index_builder.choose) until one reaches the recall target; the best one is kept either way and
    the manifest says which. `add_parts`: a parallel adder (the Beam stage); else this process adds."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    lean_allocators()  # freed shard buffers go back to the system (index_builder.memory)
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
    factories = plan(cfg, total, d)
    new_index(d, factories[0])  # a bad --factory fails here, before any vector is read
    train_size = cfg.train_size or choose_train_size(total, factories[0])
    spare = total - train_size  # held-out vectors measure the codec on data it did not train on
    held_out = min(HELD_OUT, spare) if spare >= MIN_SPARE else min(HELD_OUT, total // 10)
    train_size = min(train_size, total - held_out)

    t = time.monotonic()
    cache = ShardCache(cfg.vector, cfg.cache_bytes, shards, d)
    sample, sample_ids, valid_counts = sample_training_set(shards, cfg.vector, train_size + held_out, cfg.seed, cache)
    n_valid = sum(valid_counts)
    if n_valid == 0:
        raise InputError(f"no row has a {cfg.vector} vector (e.g. --vector text with no captions)")
    # shuffled in place (the same permutation for both: it depends on the length and the seed only),
    # then split into views: copies would hold the training set twice
    np.random.default_rng(cfg.seed + 2).shuffle(sample)
    np.random.default_rng(cfg.seed + 2).shuffle(sample_ids)
    xt, xt_ids = sample[: len(sample) - held_out], sample_ids[: len(sample) - held_out]
    if held_out:  # the baseline and the recall queries on vectors the codec did not train on
        # copies (held_out rows): the training sample is freed once the last template is trained
        xh, xh_ids = sample[len(sample) - held_out :].copy(), sample_ids[len(sample) - held_out :].copy()
    else:
        xh, xh_ids = xt, xt_ids
    pick = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(xh), min(cfg.recall_queries, len(xh)), replace=False))
    queries, query_ids = xh[pick], xh_ids[pick]
    n_train, xt = len(xt), TrainingSample(xt)
    sample = None  # xt holds the training vectors (and, without held-out vectors, xh's)
    timings = {"sample_s": time.monotonic() - t}

    t = time.monotonic()
    fresh, fresh_rows, copied_rows = (
        fresh_sample(shards, cache, FRESH_SAMPLE, cfg.seed + 3) if cfg.template else (np.zeros((0, d)), 0, 0)
    )
    reused, training = reusable_template(cfg, d, fresh, fresh_rows, copied_rows)
    if reused is not None:
        factories = [training["factory"]]
        log.info("building %s over %d vectors (%s, dim %d) on the template of %s (%s)", factories[0], total,
                 cfg.vector, d, cfg.template, training["reason"])  # fmt: skip
    timings["drift_s"] = time.monotonic() - t

    table = ids_table(shards, cache)
    with tempfile.TemporaryDirectory(prefix="fusionindex-build-") as scratch:  # on-disk lists are built here
        best, tried, coarse, skipped, gt = None, [], {}, [], None
        for number, factory in enumerate(factories):
            if reused is None and tried and (skip := _opq_screen(factory, xt.x, cfg.seed, coarse)) is not None:
                skipped.append(skip)
                continue
            xt.last = number == len(factories) - 1 and bool(held_out)  # nothing reads xt after this training
            template, train_s = (
                (reused, 0.0) if reused is not None else _train(factory, xt, total, cfg, training, coarse)
            )
            if xt.last:
                xt.x = None  # not held while adding (a reused template trained nothing)
            if gt is None:  # after the last training when there is one candidate: not beside the training sample
                t = time.monotonic()
                gt = exact_neighbours(queries, query_ids, (cache.vectors(s) for s in shards),
                                      truth_width(cfg.recall_k, n_valid))  # fmt: skip
                timings["ground_truth_s"] = time.monotonic() - t
            t = time.monotonic()
            merge = merge_mode(cfg.merge, estimated_memory(template, n_valid), available_memory(), lists_of(template))
            ondisk = os.path.join(scratch, str(number)) if merge == "disk" else None
            index = _add(cfg, template, shards, valid_counts, cache, add_parts, ondisk)
            add_s = time.monotonic() - t
            t = time.monotonic()
            recall = tune(index, queries, query_ids, gt, cfg.recall_k, cfg.target_recall, cfg.nprobe)
            tried.append(_trial(factory, index, recall, train_s, add_s, time.monotonic() - t, merge))
            if best is None or recall["recall_at_k"] > best[3]["recall_at_k"]:
                best = (factory, template, index, recall, ondisk, train_s, add_s)
            if recall["reached"]:
                break
        factory, template, index, recall, ondisk, train_s, add_s = best
        best = None  # one index in memory from here on
        storage.remove(storage.join(cfg.output, PARTS_DIR), recursive=True)
        kept = next(t for t in tried if t["factory"] == factory)
        timings.update(
            train_s=train_s,
            add_merge_s=add_s,
            recall_s=timings["ground_truth_s"] + kept["recall_s"],  # measuring the kept index, truth included
            trials_s=sum(t["train_s"] + t["add_merge_s"] + t["recall_s"] for t in tried),
        )
        if reused is None:
            training["baseline_errors"] = training["estimated_errors"] = codec_errors(template, xh)
            training["baseline_on"] = (
                f"{len(xh)} held-out vectors" if held_out else "the training sample (too few vectors)"
            )
        else:
            training["baseline_errors"] = training.get("baseline_errors") or codec_errors(template, xh)
        nprobe = recall["nprobe"]
        if nprobe is not None:
            set_nprobe(index, nprobe)  # the default a server gets when it loads index.faiss as is
        t = time.monotonic()
        speed = latency(index, queries, recall["k"], nprobe)
        timings["latency_s"] = time.monotonic() - t
        choice = {
            "budget": {"max_bytes_per_vector": cfg.max_bytes_per_vector, "max_memory": cfg.max_memory},
            "tried": tried,
            "skipped": skipped,
            "reason": _choice_reason(cfg, factory, tried, reused is not None, len(factories)),
        }
        if not recall["reached"]:
            log.warning(
                "no index tried reaches recall@%d %.3f; kept %s (%.3f at nprobe %s)",
                recall["k"],
                cfg.target_recall,
                factory,
                recall["recall_at_k"],
                nprobe,
            )

        manifest = {
            "kind": "fusionindex.index",
            "format_version": 2,
            "factory": factory,
            "metric": "inner_product",
            "vector": cfg.vector,
            "dim": d,
            "ntotal": int(index.ntotal),
            "skipped_null_vectors": total - n_valid,
            "nprobe": nprobe,
            "bytes_per_vector": code_bytes(index),
            "merge": "disk" if ondisk else "ram",  # disk: index.faiss + index.ivfdata (faiss.IO_FLAG_ONDISK_SAME_DIR)
            "train_size": int(n_train),
            "seed": cfg.seed,
            "training": training,
            "choice": choice,
            "recall": recall,
            "latency": speed,
            "gpu_training": faiss.get_num_gpus() > 0 and faiss.try_extract_index_ivf(template) is not None,
            "source": {"path": cfg.embeddings, "manifest": source},
            "started_at": started.isoformat(),
            "finished_at": None,
            "timings": {},
        }
        storage.remove(storage.join(cfg.output, MANIFEST))
        storage.remove_temporaries(cfg.output)
        t = time.monotonic()
        manifest["shards"] = write_members(index, cfg.output, ondisk, cfg.num_index_shards)
        faiss_io.write_index(template, storage.join(cfg.output, TEMPLATE_FILE))
        with storage.atomic_open(storage.join(cfg.output, IDS_FILE)) as fh:
            pq.write_table(table, fh)
        timings["write_s"] = time.monotonic() - t
        timings["total_s"] = time.monotonic() - t0
        manifest["memory_bytes"] = sum(part["bytes"] for part in manifest["shards"])
        manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
        manifest["finished_at"] = datetime.now(UTC).isoformat()
        storage.write_json(storage.join(cfg.output, MANIFEST), manifest)
        log.info(
            "index %s: %s, %d vectors, %g B/vector, nprobe %s, recall@%d %.3f (target %.3f)",
            cfg.output,
            factory,
            index.ntotal,
            manifest["bytes_per_vector"],
            nprobe,
            recall["k"],
            recall["recall_at_k"],
            cfg.target_recall,
        )
        return manifest


def _choice_reason(cfg: BuildSettings, factory: str, tried: list[dict], reused: bool, fitting: int) -> str:
    if reused:
        return "the earlier index's template was reused"
    if cfg.factory:
        return "--factory"
    if not cfg.budgeted:
        return "the default for the vector count and dimension (no budget given)"
    done = tried[-1]
    if done["reached"] and done["factory"] == factory:
        return (
            f"the first of the {fitting} candidates of the largest code size within the budget to reach "
            f"recall@{cfg.recall_k} {cfg.target_recall} (tried {len(tried)})"
        )
    return (
        f"no candidate of the largest code size within the budget reached recall@{cfg.recall_k} "
        f"{cfg.target_recall} ({len(tried)} tried, {fitting - len(tried)} skipped); kept the best"
    )
