"""The nightly reindex driver: lock ROOT, pick (or resume) a run, embed it against the published
run, build its index on the published template, check the gates, write the report, and only then
publish (LATEST) and prune.

Counts of a run (run.json, docs/nightly.md): `new`, `changed`, `unchanged` split the
embedded rows by comparison with the published run (same id, image bytes and caption under the
same model and fusion: unchanged); `deleted` counts ids of the published run with no success row
today; `rejected` and `skipped` are as in `embed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from encoders import storage
from index_builder.build import build_index
from index_builder.index_duplicates import write_duplicates
from index_builder.records import EmbedManifest, IndexManifest, RunCounts, Training
from pipelines.dry_run import DryRun
from pipelines.embed.run import run_embed
from pipelines.index_add import adder_for
from pipelines.reindex.canary import canary_overlap, load_queries
from pipelines.reindex.gates import Gate, check_gates, failed
from pipelines.reindex.lock import RunLock
from pipelines.reindex.report import REPORT_HTML, REPORT_JSON, write_report
from pipelines.reindex.root import (
    INDEX,
    RUN_JSON,
    Latest,
    RunIndex,
    RunRecord,
    new_run_id,
    prune,
    publish,
    read_run,
    run_ids,
    run_path,
)
from pipelines.reindex.settings import ReindexSettings

log = logging.getLogger(__name__)

EXIT_PUBLISHED = 0
EXIT_GATE_FAILED = 3
COMPANIONS = (INDEX, RUN_JSON, REPORT_HTML, REPORT_JSON)  # kept in a run directory beside the embed output


@dataclass
class ReindexResult:
    run_id: str
    status: str  # published | rejected | unchanged (LATEST already holds this input and settings)
    exit_code: int
    record: RunRecord  # the run's run.json


# Settings that change how a night is kept or shown, never what it computes: a night re-run with
# another --keep or --report-queries is still "nothing to do" (or the same killed run to resume).
OPERATIONAL = ("keep", "lock_stale_after", "report_queries")


def inputs_key(s: ReindexSettings) -> str:
    """What a night computes from: the settings (less OPERATIONAL) and every input file's size and
    change marker."""
    files = storage.expand(list(s.embed.inputs))
    settings = {k: v for k, v in s.as_dict().items() if k not in OPERATIONAL}
    doc = {"settings": settings, "inputs": {f: storage.version(f) for f in files}}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def run_reindex(s: ReindexSettings, beam_args: list[str] | None = None) -> ReindexResult:
    """One night: returns how it ended (exit code 0 published or unchanged, 3 a gate failed)."""
    storage.makedirs(s.root)
    queries = load_queries(s.canary_queries) if s.canary_queries else None  # a bad file fails before any work
    with RunLock(s.root, run_id=None, stale_after=s.lock_stale_after) as lock:
        return _night(s, beam_args or [], queries, lock)


def _resumable(root: str, key: str, published: str | None) -> str | None:
    """The newest unfinished run of the same input, settings and published run (a killed night)."""
    for run_id in reversed(run_ids(root)):
        rec = read_run(root, run_id)
        if rec and rec.status == "running" and rec.inputs_key == key and rec.previous == published:
            return run_id
    return None


def _stage(stages: dict, name: str, started: float, **figures) -> None:
    stages[name] = {"seconds": round(time.monotonic() - started, 3), **figures}


@dataclass
class _Night:
    """The run a night works on and what it has written so far."""

    s: ReindexSettings
    beam_args: list[str]
    run_id: str
    run: str  # the run's directory
    published: str | None  # the run LATEST names, if any
    previous_dir: str | None  # its directory
    resumed: bool  # an unfinished run of the same input and settings, picked up again
    record: RunRecord  # the run's run.json, as it grows
    stages: dict = field(default_factory=dict)  # stage -> seconds and figures, in order


def _night(s: ReindexSettings, beam_args: list[str], queries: list[str] | None, lock: RunLock) -> ReindexResult:
    """One night under the lock: nothing to do where LATEST already holds this input and these
    settings; otherwise embed, index, check the gates, write the report, then publish or reject."""
    root = s.root
    latest = Latest.load_if_any(root)
    published = latest.run_id if latest else None
    key = inputs_key(s)
    published_record = read_run(root, published) if published else None
    if published_record and published_record.inputs_key == key:
        log.info("LATEST (run %s) already holds this input and these settings: nothing to do", published)
        return ReindexResult(published, "unchanged", EXIT_PUBLISHED, published_record)
    night = _open_run(s, beam_args, key, published, lock)
    em = _embed(night)
    comparable = bool(em.previous and em.previous.comparable)
    why_not = (
        f"not comparable with the published run: {em.previous.reason}" if night.previous_dir and not comparable else ""
    )
    im, training = _index(night, comparable, why_not)
    _duplicates(night, comparable)
    canary, gates = _gates(night, em, im, queries, comparable, why_not)
    bad = failed(gates)
    _record_outcome(night, em, im, training, canary, gates, bad)
    _report(night, em, im, queries)
    if bad:
        return _reject(night, bad)
    return _publish(night, em, lock)


def _open_run(s: ReindexSettings, beam_args: list[str], key: str, published: str | None, lock: RunLock) -> _Night:
    """The unfinished run of the same input to resume, or a new one; its run.json written as running."""
    root = s.root
    run_id = _resumable(root, key, published)
    resumed = run_id is not None
    if run_id:
        log.info("resuming the unfinished run %s", run_id)
    run_id = run_id or new_run_id(datetime.now(UTC), set(run_ids(root)))
    lock.record["run"] = run_id
    run = run_path(root, run_id)
    record = read_run(root, run_id) or RunRecord(
        run_id, "running", key, published, datetime.now(UTC).isoformat(), s.as_dict()
    )
    record.save(run)
    previous_dir = run_path(root, published) if published else None
    return _Night(s, beam_args, run_id, run, published, previous_dir, resumed, record)


def _embed(night: _Night) -> EmbedManifest:
    """Embed the input into the run against the published run; its manifest. A dry run leaves no
    new run behind."""
    s, run = night.s, night.run
    t = time.monotonic()
    try:
        em = run_embed(
            replace(s.embed, output=run), night.beam_args, previous=night.previous_dir, companions=COMPANIONS
        )
    except DryRun:  # --dry_run=True: the embed job was only built; leave no run behind to resume
        if not night.resumed:
            storage.remove(run, recursive=True)
        raise
    c = em.counts
    _stage(
        night.stages,
        "embed",
        t,
        rows=c.read,
        rows_per_s=round(c.read / max(time.monotonic() - t, 1e-9), 1),
        computed=c.embedded - c.unchanged,  # rows that went through the model
        timings=em.timings.to_dict(),
    )
    return em


def _index(night: _Night, comparable: bool, why_not: str) -> tuple[IndexManifest, Training]:
    """Build the run's index, on the published index as template where the runs are comparable:
    its manifest and the training figures run.json keeps."""
    s, run, previous_dir = night.s, night.run, night.previous_dir
    t = time.monotonic()
    template = storage.join(previous_dir, INDEX) if comparable else None
    im = build_index(
        replace(s.build, embeddings=run, output=storage.join(run, INDEX), template=template),
        adder_for(s.build.workers, night.beam_args),
    )
    training = replace(im.training, factory=None, baseline_on=None, extra={})  # run.json keeps the rest
    if previous_dir and not comparable:
        training = replace(training, reason=f"{why_not}: trained anew")
    _stage(night.stages, "index", t, vectors=im.ntotal, timings=im.timings.to_dict())
    return im, training


def _duplicates(night: _Night, comparable: bool) -> None:
    """With --duplicates: the run's IDX/duplicates.parquet (incremental against the published run's
    groups when its vectors are comparable) and its counts in run.json, before the gates."""
    s = night.s
    if s.duplicates is None:
        return
    t = time.monotonic()
    previous = storage.join(night.previous_dir, INDEX) if night.previous_dir and comparable else None
    counts = write_duplicates(storage.join(night.run, INDEX), s.duplicates, previous=previous)
    night.record = replace(night.record, duplicates=counts)
    _stage(night.stages, "duplicates", t, groups=counts["groups"], rows_in_groups=counts["rows_in_groups"])


def _gates(
    night: _Night, em: EmbedManifest, im: IndexManifest, queries: list[str] | None, comparable: bool, why_not: str
) -> tuple[dict | None, list[Gate]]:
    """The canary (where there are queries) and every gate's outcome."""
    s = night.s
    t = time.monotonic()
    canary = _canary(night, queries, comparable, why_not)
    gates = check_gates(
        em.counts,
        im,
        max_reject_rate=s.max_reject_rate,
        min_recall=s.min_recall,
        canary=canary,
        min_canary_overlap=s.min_canary_overlap,
        duplicates=night.record.duplicates,
        max_duplicate_rate=s.max_duplicate_rate,
    )
    _stage(night.stages, "gates", t)
    return canary, gates


def _canary(night: _Night, queries: list[str] | None, comparable: bool, why_not: str) -> dict | None:
    """The canary queries' overlap with the published index, or why it was skipped; None without queries."""
    if queries is None:
        return None
    if not night.published:
        return {"skipped": "no published run to compare with (first night)"}
    if not comparable:
        return {"skipped": f"{why_not}: rankings may change on purpose"}
    from pipelines.search.searcher import Searcher

    s, run = night.s, night.run
    searcher = Searcher.open(storage.join(run, INDEX), s.embed.model, s.embed.device)
    return canary_overlap(searcher, storage.join(night.previous_dir, INDEX), queries)


def _record_outcome(
    night: _Night,
    em: EmbedManifest,
    im: IndexManifest,
    training: Training,
    canary: dict | None,
    gates: list[Gate],
    bad: list[Gate],
) -> None:
    """Put the night's outcome in its run.json record (not yet written)."""
    c = em.counts
    night.record = replace(
        night.record,
        status="rejected" if bad else "published",
        counts=RunCounts(
            c.read, c.embedded, c.new, c.changed, c.unchanged, c.metadata_changed, c.deleted or 0, c.rejected, c.skipped
        ),
        rejects_by_reason=c.rejects_by_reason,
        gates=[g.as_dict() for g in gates],
        failed_gates=[g.name for g in bad],
        index=RunIndex(im.factory, im.ntotal, im.nprobe, im.recall, training),
        canary=canary,
        model=em.model,
        runtime=em.runtime,
        finished_at=datetime.now(UTC).isoformat(),
    )


def _report(night: _Night, em: EmbedManifest, im: IndexManifest, queries: list[str] | None) -> None:
    """Write the report, then run.json with every stage's time (the report's own included)."""
    stages = night.stages
    t = time.monotonic()
    shown = replace(night.record, stages=dict(stages))  # the report shows the stages before its own
    write_report(night.run, shown, em, im, night.s, queries)
    _stage(stages, "report", t)
    night.record = replace(night.record, stages=stages, seconds=round(sum(v["seconds"] for v in stages.values()), 3))
    night.record.save(night.run)


def _reject(night: _Night, bad: list[Gate]) -> ReindexResult:
    """Say which gates failed; LATEST stays; old runs pruned, this one and the published kept."""
    for g in bad:
        log.error("gate %s failed: %s (limit %s): %s", g.name, g.value, g.limit, g.detail)
    protect = {night.run_id} | ({night.published} if night.published else set())
    prune(night.s.root, night.s.keep, protect=protect)
    return ReindexResult(night.run_id, "rejected", EXIT_GATE_FAILED, night.record)


def _publish(night: _Night, em: EmbedManifest, lock: RunLock) -> ReindexResult:
    """Point LATEST at the run (the lock still held), then prune old runs."""
    root, run_id, record = night.s.root, night.run_id, night.record
    lock.ensure_held()
    publish(root, Latest(f"runs/{run_id}", datetime.now(UTC).isoformat(), record.counts, em.model.spec,
                         f"runs/{run_id}/{INDEX}"))  # fmt: skip
    prune(root, night.s.keep, protect={run_id})
    log.info("published run %s: %s", run_id, ", ".join(f"{k} {v}" for k, v in record.counts.to_dict().items()))
    return ReindexResult(run_id, "published", EXIT_PUBLISHED, record)
