"""`build-index`: train an index template on a sample, add shards into copies, merge, measure.

    shards --sample--> train template --copy per shard--> add_with_ids(global ids) --> merge_from
                       (or reuse an earlier IDX's)                                 --> nprobe, recall
    IDX/index.faiss, IDX/ids.parquet (row i = faiss id i: id, caption), IDX/template.faiss (the
    trained empty template), IDX/manifest.json (last)

This module is the order of the steps; each step lives in the module named for its job:
index_builder.sampling (the sample, held-out vectors, recall queries, the shard cache),
.training (templates, the OPQ screen, reusing an earlier build's template), .adding (parts and
their merge, in RAM or on disk), .budget (the candidates tried, the best kept) and .layout (the
files of IDX and their commit).

An earlier build's template (`template=`) is reused unless the dimension, vector or factory
differ, or (retrain "auto") the vectors drifted away from it (index_builder.drift: codec and
coarse errors on today's sample against the errors on held-out vectors when it was trained).
Shards can be added in parallel processes (`add_parts`, the Beam stage of pipelines/). The build
changes nothing process-wide: the allocator settings it is measured with (index_builder.allocators)
are the caller's, set by the CLI.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime

import faiss
import numpy as np

from encoders import storage
from encoders.errors import InputError
from index_builder.adding import AddParts, code_bytes, ids_table, lists_of
from index_builder.budget import Choice, Inputs, Trials, choice_reason, choose, plan, train_size, try_candidates
from index_builder.choose import merge_mode
from index_builder.drift import codec_errors
from index_builder.embeddings import Shard, list_shards
from index_builder.layout import PARTS_DIR, commit, set_nprobe
from index_builder.measure import latency
from index_builder.records import (
    EmbedManifest,
    IndexChoice,
    IndexManifest,
    IndexShard,
    IndexTimings,
    Latency,
    Recall,
    Source,
    Training,
)
from index_builder.sampling import FRESH_SAMPLE, Samples, ShardCache, draw, fresh_sample, sample_sizes
from index_builder.settings import BuildSettings
from index_builder.training import new_index, reusable_template

log = logging.getLogger(__name__)


def build_index(cfg: BuildSettings, add_parts: AddParts | None = None) -> IndexManifest:
    """Build and commit IDX (index.faiss [+ index.ivfdata], ids.parquet, template.faiss,
    manifest.json last); return the manifest. With a budget, candidates are built in order
    (index_builder.budget) until one reaches the recall target; the best one is kept either way and
    the manifest says which. `add_parts`: a parallel adder (the Beam stage); else this process adds."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    source, shards = _source(cfg.embeddings)
    total, d = sum(s.num_rows for s in shards), int(source.dim)
    factories = plan(cfg, total, d)
    first = new_index(d, factories[0])  # a bad --factory fails here, before any vector is read
    if cfg.merge == "disk":  # and one faiss cannot keep on disk, before any training
        merge_mode("disk", 0, 0, lists_of(first))
    sizes = sample_sizes(total, train_size(cfg, total, factories))

    t = time.monotonic()
    cache = ShardCache(cfg.vector, cfg.cache_bytes, shards, d)
    samples = draw(shards, cache, cfg.vector, sizes, cfg.seed, cfg.recall_queries)
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
    choice = (
        choose(cfg, samples, factories, total, d) if reused is None else Choice(factories, _screened_by(cfg.template))
    )
    timings["screen_s"], fitting, factories = choice.screen_s, len(factories), choice.factories

    table = ids_table(shards, cache)
    with tempfile.TemporaryDirectory(prefix="fusionindex-build-") as scratch:  # on-disk lists are built here
        job = Inputs(cfg, shards, cache, samples, add_parts, scratch)
        trials = try_candidates(job, factories, reused, training, choice.coarse)
        storage.remove(storage.join(cfg.output, PARTS_DIR), recursive=True)
        timings["ground_truth_s"] = trials.ground_truth_s
        manifest = _manifest(cfg, source, d, total, samples, trials, training, reused is not None, fitting,
                             started, timings)  # fmt: skip
        t = time.monotonic()
        best = trials.best
        written = commit(cfg.output, best.index, best.template, table, best.ondisk, cfg.num_index_shards)
        timings["write_s"] = time.monotonic() - t
        timings["total_s"] = time.monotonic() - t0
        manifest = replace(
            manifest,
            choice=IndexChoice.from_dict({**manifest.choice.to_dict(), "screened": choice.screened}),
            shards=tuple(IndexShard.from_dict(part) for part in written),
            memory_bytes=sum(part["bytes"] for part in written),
            timings=IndexTimings.from_dict({k: round(v, 3) for k, v in timings.items()}),
            finished_at=datetime.now(UTC).isoformat(),
        )
        manifest.save(cfg.output)
        recall = best.recall
        log.info("index %s: %s, %d vectors, %g B/vector, nprobe %s, recall@%d %.3f (target %.3f)", cfg.output,
                 best.factory, best.index.ntotal, manifest.bytes_per_vector, recall["nprobe"], recall["k"],
                 recall["recall_at_k"], cfg.target_recall)  # fmt: skip
        return manifest


def _screened_by(template: str | None) -> list[dict]:
    """The frontier of the build whose template is reused (the night that chose it), [] without one."""
    earlier = IndexManifest.load_if_any(template) if template else None
    return earlier.choice.screened if earlier else []


def _source(embeddings: str) -> tuple[EmbedManifest, list[Shard]]:
    """(the embeddings manifest, the shards) of a finished embed run; InputError when it did not
    finish, records no dimension or holds no rows."""
    source = EmbedManifest.load(embeddings)
    if source.dim is None:
        raise InputError(f"{EmbedManifest.path(embeddings)} records no dim; add the vectors' dimension as `dim`")
    shards = list_shards(embeddings)
    if sum(s.num_rows for s in shards) == 0:
        raise InputError(f"{embeddings} holds no embedded rows; nothing to index")
    return source, shards


def _manifest(cfg: BuildSettings, source: EmbedManifest, d: int, total: int, samples: Samples, trials: Trials,
              training: dict, reused: bool, fitting: int, started: datetime,
              timings: dict) -> IndexManifest:  # fmt: skip
    """The manifest of the kept trial, but its files' fields (shards, memory_bytes) and the last
    timings; sets the kept index's default nprobe, records the template's baseline errors in
    `training` and times the kept index's search latency."""
    best, kept = trials.best, trials.kept
    recall, nprobe = best.recall, best.recall["nprobe"]
    timings.update(
        train_s=best.train_s,
        add_merge_s=best.add_s,
        recall_s=timings["ground_truth_s"] + kept["recall_s"],  # measuring the kept index, truth included
        trials_s=sum(t["train_s"] + t["add_merge_s"] + t["recall_s"] for t in trials.tried),
    )
    if not reused:
        training["baseline_errors"] = training["estimated_errors"] = codec_errors(best.template, samples.xh)
        training["baseline_on"] = (
            f"{len(samples.xh)} held-out vectors" if samples.held_out else "the training sample (too few vectors)"
        )
    else:
        training["baseline_errors"] = training.get("baseline_errors") or codec_errors(best.template, samples.xh)
    if nprobe is not None:
        set_nprobe(best.index, nprobe)  # the default a server gets when it loads index.faiss as is
    t = time.monotonic()
    speed = latency(best.index, samples.queries, recall["k"], nprobe)
    timings["latency_s"] = time.monotonic() - t
    choice = {
        "budget": {"max_bytes_per_vector": cfg.max_bytes_per_vector, "max_memory": cfg.max_memory},
        "tried": trials.tried,
        "skipped": trials.skipped,
        "reason": choice_reason(cfg, best.factory, trials.tried, reused, fitting),
    }
    if not recall["reached"]:
        log.warning("no index tried reaches recall@%d %.3f; kept %s (%.3f at nprobe %s)", recall["k"],
                    cfg.target_recall, best.factory, recall["recall_at_k"], nprobe)  # fmt: skip
    return IndexManifest(
        factory=best.factory,
        metric="inner_product",
        vector=cfg.vector,
        dim=d,
        ntotal=int(best.index.ntotal),
        skipped_null_vectors=total - samples.n_valid,
        nprobe=nprobe,
        bytes_per_vector=code_bytes(best.index),
        merge="disk" if best.ondisk else "ram",  # disk: index.faiss + index.ivfdata (faiss.IO_FLAG_ONDISK_SAME_DIR)
        train_size=int(samples.n_train),
        seed=cfg.seed,
        training=Training.from_dict(training),
        choice=IndexChoice.from_dict(choice),
        recall=Recall.from_dict(recall),
        latency=Latency.from_dict(speed),
        gpu_training=faiss.get_num_gpus() > 0 and faiss.try_extract_index_ivf(best.template) is not None,
        source=Source(cfg.embeddings, source),
        started_at=started.isoformat(),
    )
