"""The `embed` driver, whatever the engine: plan the input, prepare the output (run key, resume), hand the
units to the engine's driver (beam.run_beam or spark.run_spark), check the accounting, write the manifest last."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from datetime import UTC, datetime

from encoders.errors import InputError, SettingsError
from encoders.loading import ModelLoadError, fingerprint, resolve_model_dir
from encoders.models import describe_checkpoint
from index_builder import storage
from index_builder.embeddings import MANIFEST, list_shards
from pipelines.embed.beam import is_dry_run, is_local, pipeline_options, run_beam, thread_layout, warn_model_copies
from pipelines.embed.handler import EmbeddingModelHandler
from pipelines.embed.output import prepare_output, run_key
from pipelines.embed.progress import Watcher
from pipelines.embed.settings import EmbedSettings, shared_model_tag
from pipelines.embed.shards import sum_counts
from pipelines.embed.timings import manifest_timings
from pipelines.embed.worker import EngineRun, UnitJob
from pipelines.inputs import plan_inputs

log = logging.getLogger(__name__)


JOIN_FILE = ".join.json"  # the join's counts (deleted), written by the pipeline when there is a previous run


def previous_run(path: str, model_fingerprint: str, fusion_params: dict) -> tuple[tuple[str, ...], dict]:
    """The shards of a previous embed run and what the manifest records of it. `comparable`: it
    used the same weights and fusion and stored content hashes, so its vectors may be copied."""
    manifest_path = storage.join(path, MANIFEST)
    if not storage.exists(manifest_path):
        raise InputError(f"previous run {path} has no {MANIFEST}: it did not finish; it cannot be compared against")
    m = storage.read_json(manifest_path)
    shards = tuple(s.path for s in list_shards(path))
    hashed = all("content_hash" in storage.read_schema(p).names for p in shards[:1])
    reasons = []
    if m["model"]["fingerprint"] != model_fingerprint:
        reasons.append("the model's weights or preprocessing changed")
    if m["fusion"] != fusion_params:
        changed = sorted(k for k in {*m["fusion"], *fusion_params} if m["fusion"].get(k) != fusion_params.get(k))
        reasons.append("the fusion settings changed (" + ", ".join(changed) + ")")
    if not hashed:
        reasons.append("its shards carry no content hashes (written before incremental runs)")
    if reasons:
        log.warning("every row seen in %s counts as changed: %s", path, "; ".join(reasons))
    info = {
        "path": path,
        "finished_at": m.get("finished_at"),
        "model_fingerprint": m["model"]["fingerprint"],
        "fusion": m["fusion"],
        "comparable": not reasons,
        "reason": "; ".join(reasons) or None,
    }
    return shards, info


def run_embed(
    settings: EmbedSettings,
    beam_args: list[str] | None = None,
    *,
    previous: str | None = None,
    companions: tuple[str, ...] = (),
) -> dict:
    """Run the whole embed job; return the manifest written to `settings.output/manifest.json`.

    `previous`: the output directory of an earlier run to compare against (a nightly reindex):
    rows unchanged since then copy its vectors instead of being embedded again. `companions`:
    names the caller keeps in the output directory (see prepare_output).

    With `--dry_run=True` (DataflowRunner) the job is built, nothing is submitted and the output
    directory is left untouched; raises DryRun instead of returning (there is no manifest)."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    s = settings
    if s.engine == "spark":
        if beam_args:
            raise SettingsError(
                f"Beam options ({' '.join(beam_args)}) apply to --engine beam only; "
                "with --engine spark use --spark-master and --spark-conf KEY=VALUE"
            )
        from pipelines.embed import spark

        problem = spark.spark_missing()  # before the output directory is touched
        if problem:
            raise SettingsError(problem)
        s, previous = spark.with_absolute_paths(s), previous and spark.absolute(previous)
        options, local = None, spark.is_local(s.spark_master)
        threads = spark.thread_layout(s.spark_master or spark.DEFAULT_MASTER, s.spark_properties())
    else:
        options = pipeline_options(beam_args or [])
        local, threads = is_local(options), thread_layout(options)
    model_dir = resolve_model_dir(s.model, allow_pickle=s.allow_pickle)
    info = describe_checkpoint(model_dir)
    if s.fusion == "attention" and not info["fusion"]:
        raise ModelLoadError(
            f"--fusion attention: {s.model} has no learned attention fusion; fine-tune it with "
            "`fusionindex finetune --fusion attention`, or use --fusion weighted"
        )
    fusion_params = s.weighted_fusion().params() if s.fusion == "weighted" else info["fusion"]
    recipe = info["tensor_recipe"] is not None
    handler = EmbeddingModelHandler(s, tensor_recipe=recipe, threads=threads)
    if local:  # the workers are this machine: a runtime that cannot work fails now
        log.info("runtime: %s", handler.runtime())
        if options is not None:
            warn_model_copies(options, handler.runtime().device, s.large_model)
    model_fp = fingerprint(model_dir)
    plan = plan_inputs(list(s.inputs), s.columns, skip_bad_files=s.skip_bad_files, threads=s.plan_threads)
    if not plan.units:
        raise InputError(f"the input files hold no rows: {', '.join(plan.files) or '(all unreadable)'}")
    previous_shards, previous_info = previous_run(previous, model_fp, fusion_params) if previous else ((), None)
    key = run_key(s, plan, model_fp, fusion_params)
    if previous_info is not None:
        key["previous"] = previous_info
    dry_run = options is not None and is_dry_run(options)
    join_path = storage.join(s.output, JOIN_FILE)
    resume = False  # a dry run writes nothing: the output directory is left as it is, unread
    if not dry_run:
        resume = prepare_output(s.output, key, s.restart, companions)
        storage.remove(join_path)
    committed = len(list_shards(s.output, require_complete=False)) if resume else 0
    if committed:
        log.info("resuming an interrupted run: %d of %d shards are committed", committed, len(plan.units))
    job = UnitJob(s, tuple(u.path for u in plan.units), info["dim"], resume, recipe, previous_shards, threads)
    model_tag = shared_model_tag(s, model_fp)
    t_pipeline = time.monotonic()
    comparable = bool(previous_info and previous_info["comparable"])
    engine = dict(comparable=comparable, join_counts=join_path)
    with nullcontext() if dry_run else Watcher(s.output, plan.units):  # rows done / total, rows/s, ETA
        done: EngineRun = (
            spark.run_spark(s, plan, job, model_tag, **engine)
            if s.engine == "spark"
            else run_beam(options, plan, job, model_tag, **engine)
        )
    pipeline_s = time.monotonic() - t_pipeline
    metrics = done.metrics
    work = metrics or {}
    counts, bad_row_groups, runtimes = sum_counts(s.output)
    if (
        counts["read"] != plan.total_rows
        or counts["read"] != counts["embedded"] + counts["rejected"] + counts["skipped"]
        or counts["embedded"] != counts["new"] + counts["changed"] + counts["unchanged"]
    ):
        raise RuntimeError(
            f"row accounting failed: planned {plan.total_rows} rows, shards report {counts}; no manifest written"
        )
    if previous_info is not None:
        counts["deleted"] = storage.read_json(join_path)["deleted"]
    if len(runtimes) > 1:
        log.warning("shards were made with %d different runtimes: %s", len(runtimes), runtimes)
    manifest = {
        "kind": "fusionindex.embeddings",
        "format_version": 2,
        "inputs": plan.files,
        "columns": s.as_dict()["columns"],
        "counts": counts,
        "bad_files": plan.bad_files + bad_row_groups,
        "shards": len(plan.units),
        "reused_shards": None if metrics is None else metrics.get("shards_reused", 0),  # None: no metrics
        "previous": previous_info,
        "dim": info["dim"],
        "model": {"spec": s.model, "family": info["family"], "model_type": info["model_type"], "fingerprint": model_fp},
        "fusion": fusion_params,
        "settings": s.as_dict(),
        "runtime": runtimes[0] if len(runtimes) == 1 else runtimes,
        "engine": s.engine,
        "runner": done.runner,  # the Beam runner, or the Spark master
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "timings": {
            "total_s": round(time.monotonic() - t0, 3),
            "pipeline_s": round(pipeline_s, 3),
            # summed over workers: time in row groups (model load excluded), model loads, model calls
            "units_s": work.get("unit_ms", 0) / 1000,
            "model_load_s": work.get("load_model_ms", 0) / 1000,
            "inference_s": work.get("inference_batch_latency_ms", 0) / 1000,
            # where the units' time went (encoders/stages.py); absent when the engine reports no metrics
            **manifest_timings(work, work.get("unit_ms", 0) / 1000, work.get("rows_read", 0)),
        },
    }
    storage.write_json(storage.join(s.output, MANIFEST), manifest)
    log.info(
        "embedded %d of %d rows (%d rejected, %d skipped) into %s",
        counts["embedded"],
        counts["read"],
        counts["rejected"],
        counts["skipped"],
        s.output,
    )
    return manifest
