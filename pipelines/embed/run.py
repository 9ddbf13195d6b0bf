"""The `embed` driver, whatever the engine: resolve the model and runtime once, plan the input,
prepare the output (run key, resume), hand the units to an `Engine` (engine.py), check the
accounting, write the manifest last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

from encoders import storage
from encoders.errors import InputError
from encoders.loading import ModelLoadError
from encoders.models import ResolvedModel, resolve_model
from index_builder.embeddings import list_shards
from index_builder.records import Counts, EmbedManifest, EmbedTimings, ModelSpec, PreviousRun
from pipelines.embed.engine import Engine, EngineMetrics, EngineRun, EngineWork, make_engine
from pipelines.embed.output import prepare_output, run_key
from pipelines.embed.progress import Watcher
from pipelines.embed.settings import (
    TENSOR_REVISION,
    EmbedSettings,
    Runtime,
    pixels_path,
    resolve_preprocess,
    resolve_runtime,
    shared_model_tag,
)
from pipelines.embed.shards import sum_counts
from pipelines.embed.timings import manifest_timings
from pipelines.embed.worker import UnitJob
from pipelines.inputs import InputPlan, plan_inputs

log = logging.getLogger(__name__)


JOIN_FILE = ".join.json"  # the join's counts (deleted), written by the pipeline when there is a previous run


def previous_run(
    path: str, model_fingerprint: str, fusion_params: dict, pixels: str
) -> tuple[tuple[str, ...], PreviousRun]:
    """The shards of a previous embed run and what the manifest records of it. `comparable`: it
    used the same weights, fusion and pixels (`pixels`: this run's `pixels_path`, "pil" or
    "tensor rN"; the pixels are part of what a vector means) and stored content hashes, so its
    vectors may be copied. Its threads and device are not compared."""
    m = EmbedManifest.load(path)
    shards = tuple(s.path for s in list_shards(path))
    hashed = all("content_hash" in storage.read_schema(p).names for p in shards[:1])
    theirs = m.model.fingerprint if m.model else None
    reasons = []
    if theirs != model_fingerprint:
        reasons.append("the model's weights or preprocessing changed")
    fusion = m.fusion or {}
    if fusion != fusion_params:
        changed = sorted(k for k in {*fusion, *fusion_params} if fusion.get(k) != fusion_params.get(k))
        reasons.append("the fusion settings changed (" + ", ".join(changed) + ")")
    before = previous_pixels(m.runtime)
    if before != pixels:
        reasons.append(f"the preprocessing changed ({before} -> {pixels})")
    if not hashed:
        reasons.append("its shards carry no content hashes (written before incremental runs)")
    if reasons:
        log.warning("every row seen in %s counts as changed: %s", path, "; ".join(reasons))
    info = PreviousRun(path, m.finished_at, theirs, m.fusion, comparable=not reasons, reason="; ".join(reasons) or None)
    return shards, info


def previous_pixels(runtime: dict | list | None) -> str:
    """The `pixels_path` a manifest's runtime records ("pil" or "tensor rN"), or its shards' joined
    by "+" when they were made several ways. A manifest without the preprocessing path (none, or
    a runtime without the field) was made when auto meant the PIL path on a CPU: "pil"."""
    runtimes = runtime if isinstance(runtime, list) else [runtime or {}]
    paths = {pixels_path((r or {}).get("preprocess") or "pil", (r or {}).get("tensor_revision")) for r in runtimes}
    return "+".join(sorted(paths))


@dataclass(frozen=True)
class Resolved:
    """What the driver resolves once and hands down: the model, the fusion it runs with, and the
    Runtime when the workers are this machine (None: each remote worker resolves its own)."""

    model: ResolvedModel
    fusion: dict
    runtime: Runtime | None


def resolve(s: EmbedSettings, engine: Engine) -> Resolved:
    """The model (resolved, described, fingerprinted) and, for local workers, the Runtime: a
    runtime that cannot work here fails now, before any output is touched."""
    model = resolve_model(s.model, allow_pickle=s.allow_pickle)
    if s.fusion == "attention" and not model.fusion:
        raise ModelLoadError(
            f"--fusion attention: {s.model} has no learned attention fusion; fine-tune it with "
            "`fusionindex finetune --fusion attention`, or use --fusion weighted"
        )
    fusion = s.weighted_fusion().params() if s.fusion == "weighted" else model.fusion
    runtime = None
    if engine.workers_on_this_machine():  # the workers are this machine: its runtime is theirs
        import torch

        runtime = resolve_runtime(
            s, cuda_available=torch.cuda.is_available(), tensor_recipe=model.tensor_recipe is not None
        )
        log.info("runtime: %s", runtime)
        engine.check_runtime(runtime, s)
    return Resolved(model, fusion, runtime)


@dataclass(frozen=True)
class Output:
    """The output directory made ready for this run: its run key, whether committed shards are
    reused (`resume`), and the previous run compared against (its shards and manifest summary)."""

    resume: bool
    previous_shards: tuple[str, ...]
    previous: PreviousRun | None


def prepare(s: EmbedSettings, plan: InputPlan, r: Resolved, previous: str | None, companions, dry_run: bool) -> Output:
    """Key the run, compare against `previous`, and prepare the output directory (left untouched,
    unread, by a dry run)."""
    previous_shards, previous_info = (), None
    if previous:
        preprocess = resolve_preprocess(s, tensor_recipe=r.model.tensor_recipe is not None)
        pixels = pixels_path(preprocess, TENSOR_REVISION)
        previous_shards, previous_info = previous_run(previous, r.model.fingerprint, r.fusion, pixels)
    key = run_key(s, plan, r.model.fingerprint, r.fusion)
    if previous_info is not None:
        key["previous"] = previous_info.to_dict()
    resume = False
    if not dry_run:
        resume = prepare_output(s.output, key, s.restart, companions)
        storage.remove(storage.join(s.output, JOIN_FILE))
    committed = len(list_shards(s.output, require_complete=False)) if resume else 0
    if committed:
        log.info("resuming an interrupted run: %d of %d shards are committed", committed, len(plan.units))
    return Output(resume, previous_shards, previous_info)


def check_accounting(counts: dict, plan: InputPlan) -> None:
    """RuntimeError (no manifest) unless every planned row is embedded, rejected or skipped once."""
    if (
        counts["read"] != plan.total_rows
        or counts["read"] != counts["embedded"] + counts["rejected"] + counts["skipped"]
        or counts["embedded"] != counts["new"] + counts["changed"] + counts["unchanged"]
    ):
        raise RuntimeError(
            f"row accounting failed: planned {plan.total_rows} rows, shards report {counts}; no manifest written"
        )


def engine_work(s: EmbedSettings, plan: InputPlan, r: Resolved, out: Output, after_commit) -> EngineWork:
    """What the engine runs: the units, and what each worker needs (the UnitJob: the records resolved here)."""
    job = UnitJob(
        s, tuple(u.path for u in plan.units), r.model.dim, out.resume, model=r.model, runtime=r.runtime,
        previous_shards=out.previous_shards, after_commit=after_commit,
    )  # fmt: skip
    comparable = bool(out.previous and out.previous.comparable)
    return EngineWork(
        plan, job, shared_model_tag(s, r.model.fingerprint), comparable, storage.join(s.output, JOIN_FILE)
    )


def run_embed(
    settings: EmbedSettings,
    beam_args: list[str] | None = None,
    *,
    previous: str | None = None,
    companions: tuple[str, ...] = (),
    after_commit: Callable[[int], None] | None = None,
) -> EmbedManifest:
    """Run the whole embed job; return the manifest written to `settings.output/manifest.json`.

    `previous`: the output directory of an earlier run to compare against (a nightly reindex):
    rows unchanged since then copy its vectors instead of being embedded again. `companions`:
    names the caller keeps in the output directory (see prepare_output). `after_commit`: a seam
    for tests (fault injection), called on the worker with each unit's index once it is committed.

    With `--dry_run=True` (DataflowRunner) the job is built, nothing is submitted and the output
    directory is left untouched; raises DryRun instead of returning (there is no manifest)."""
    started, t0 = datetime.now(UTC), time.monotonic()
    engine = make_engine(settings, beam_args)
    s = engine.localize(settings)
    previous = previous and engine.localize_path(previous)
    r = resolve(s, engine)
    plan = plan_inputs(list(s.inputs), s.columns, skip_bad_files=s.skip_bad_files, threads=s.plan_threads)
    if not plan.units:
        raise InputError(f"the input files hold no rows: {', '.join(plan.files) or '(all unreadable)'}")
    dry_run = engine.dry_run()
    out = prepare(s, plan, r, previous, companions, dry_run)
    work = engine_work(s, plan, r, out, after_commit)
    join_path = work.join_counts
    t_pipeline = time.monotonic()
    with nullcontext() if dry_run else Watcher(s.output, plan.units):  # rows done / total, rows/s, ETA
        done = engine.run(work)
    pipeline_s = time.monotonic() - t_pipeline
    counts, bad_row_groups, runtimes = sum_counts(s.output)
    check_accounting(counts, plan)
    if out.previous is not None:
        counts["deleted"] = storage.read_json(join_path)["deleted"]
    if len(runtimes) > 1:
        log.warning("shards were made with %d different runtimes: %s", len(runtimes), runtimes)
    manifest = EmbedManifest(
        inputs=plan.files,
        columns=s.as_dict()["columns"],
        counts=Counts.from_dict(counts),
        bad_files=plan.bad_files + bad_row_groups,
        shards=len(plan.units),
        reused_shards=None if done.metrics is None else done.metrics.shards_reused,  # None: no metrics
        previous=out.previous,
        dim=r.model.dim,
        model=ModelSpec(s.model, r.model.family, r.model.model_type, r.model.fingerprint),
        fusion=r.fusion,
        settings=s.as_dict(),
        runtime=runtimes[0] if len(runtimes) == 1 else runtimes,
        engine=s.engine,
        runner=done.runner,  # the Beam runner, or the Spark master
        started_at=started.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
        timings=run_timings(done, time.monotonic() - t0, pipeline_s),
    )
    manifest.save(s.output)
    c = manifest.counts
    log.info("embedded %d of %d rows (%d rejected, %d skipped) into %s", c.embedded, c.read, c.rejected, c.skipped,
             s.output)  # fmt: skip
    return manifest


def run_timings(done: EngineRun, total_s: float, pipeline_s: float) -> EmbedTimings:
    """The manifest's timings: the driver's wall times, and the workers' summed over units
    (model load excluded from units_s) with where the units' time went (encoders/stages.py;
    no stage figures when the engine reports no metrics)."""
    m = done.metrics or EngineMetrics()
    units_s = m.unit_ms / 1000
    return EmbedTimings.from_dict(
        {
            "total_s": round(total_s, 3),
            "pipeline_s": round(pipeline_s, 3),
            "units_s": units_s,
            "model_load_s": m.load_model_ms / 1000,
            "inference_s": m.inference_ms / 1000,
            **manifest_timings(dict(m.stage_us), units_s, m.rows_read),
        }
    )
