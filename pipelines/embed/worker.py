"""Embedding one work unit and committing its shard: engine-agnostic, no Beam here.

The Beam DoFn (pipelines/embed/beam.py) and the Spark task (pipelines/embed/spark.py) are thin
drivers over `UnitWorker`: each hands over a model loader that loads once per worker process
(Beam's `shared.Shared` / `MultiProcessShared`; a module-level cache in the Spark Python worker)
and turns `UnitReport`s into its metrics. Reuse after a crash is decided here, per shard: a
committed shard is reused only when the Runtime it records equals the one this worker resolves.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

from encoders.errors import InputError
from encoders.stages import StageClock
from encoders.towers import Towers
from index_builder import storage
from index_builder.embeddings import shard_name
from pipelines.embed.handler import EmbeddingModelHandler
from pipelines.embed.outcomes import ItemInput, Outcome, Rejected
from pipelines.embed.rows import RowPlan, RowResult, classify, content_hash
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.shards import commit_unit, committed_runtime, previous_rows, shard_paths
from pipelines.inputs import Row, WorkUnit, iter_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitJob:
    """What every worker needs to know about the run (small and picklable)."""

    settings: EmbedSettings
    unit_paths: tuple[str, ...]  # unit index -> its source file, for messages
    dim: int
    resume: bool  # the directory's committed shards belong to this run (equal run key)
    tensor_recipe: bool | None = None  # the checkpoint's processor is resize + center crop (None: look it up)
    previous_shards: tuple[str, ...] = ()  # the previous run's shards, which `unchanged` plans point into


@dataclass(frozen=True)
class EngineRun:
    """What an engine's driver hands back to the shared embed driver (run.py) once every unit is done.

    `metrics`: counters summed over the units' reports (rows_read, shards_reused, unit_ms,
    load_model_ms, inference_batch_latency_ms, ...); None when the engine reports none.
    `runner`: the Beam runner or the Spark master, as recorded in the manifest."""

    metrics: dict[str, int] | None
    runner: str


@dataclass
class UnitReport:
    """What processing one unit did, for metrics: counts None when the shard was reused."""

    unit: int
    counts: dict | None = None
    unit_ms: int = 0  # read + embed + commit, model load excluded
    load_ms: int | None = None  # when this unit loaded the model
    batch_ms: list[int] = field(default_factory=list)  # one entry per model call
    # exclusive seconds per stage (encoders.stages): `stages` on the unit's thread, adding up to
    # unit_ms; `ahead` on the read-ahead and decode-ahead threads (read; probe, decode, tokenize),
    # overlapping the first
    stages: dict[str, float] = field(default_factory=dict)
    ahead: dict[str, float] = field(default_factory=dict)


class UnitWorker:
    """Embeds units and commits their shards. `load_model` returns the towers, loading them at
    most once per process (or per machine); it is called only when a unit needs the model."""

    def __init__(self, job: UnitJob, handler: EmbeddingModelHandler, load_model: Callable[[], Towers]):
        self.job, self.handler, self._load = job, handler, load_model
        self.runtime = handler.runtime()
        self._model: Towers | None = None

    def process(self, unit: WorkUnit, plans: Iterable[RowPlan] = ()) -> UnitReport:
        """Embed `unit` following the join's plans for its rows (duplicates to reject, unchanged
        rows to copy from the previous run) and commit its shard, or reuse the shard an identical
        run committed."""
        name = shard_name(unit.index, len(self.job.unit_paths))
        shard_path, _ = shard_paths(self.job.settings.output, name)
        report = UnitReport(unit.index)
        if self.job.resume and storage.exists(shard_path):
            made = committed_runtime(shard_path)
            if made == self.runtime:
                log.info("reusing committed %s", name)
                return report
            log.info("recomputing %s: it was made with %s, this worker runs %s", name, made, self.runtime)
        t = time.perf_counter()
        report.counts = self._embed_unit(unit, name, {p.row: p for p in plans}, report)
        report.unit_ms = int((time.perf_counter() - t) * 1000) - (report.load_ms or 0)
        return report

    def _embed_unit(self, unit: WorkUnit, name: str, plans: dict[int, RowPlan], report: UnitReport) -> dict:
        s = self.job.settings
        results: list[RowResult] = []
        reuse: list[tuple[Row, tuple[int, int]]] = []
        counts = {"read": 0, "skipped": 0}
        commit = dict(dim=self.job.dim, runtime=self.runtime)
        clock = StageClock()  # the unit's thread; the read-ahead and decode-ahead threads have their own
        reader, decoder = StageClock(), StageClock()
        report.stages = clock.seconds
        try:
            with cf.ThreadPoolExecutor(1, thread_name_prefix="read") if self._ahead() else nullcontext() as pool:
                if pool is None:
                    rows = clock.timed(iter_unit(unit, s.batch_size), "read")
                else:  # the unit's thread waits for batches read in the read-ahead thread
                    rows = clock.timed(read_ahead(iter_unit(unit, s.batch_size), pool, reader), "wait")
                todo = self._classified(rows, plans, results, reuse, counts, clock)
                for batch, outcomes in self._embed_batches(batches_of(todo, s.batch_size), report, clock, decoder):
                    with clock("assemble"):
                        results.extend(
                            RowResult(r.row_index, r.id, r.caption, o, content_hash(r.image), kind)
                            for (r, kind), o in zip(batch, outcomes)
                        )
            report.ahead = {k: reader.seconds.get(k, 0.0) + decoder.seconds.get(k, 0.0)
                            for k in {**reader.seconds, **decoder.seconds}}  # fmt: skip
            if reuse:
                with clock("copy"):
                    results.extend(self._copied(reuse))
        except InputError as exc:
            if not s.skip_bad_files:
                raise
            log.warning("skipping unreadable row group: %s", exc)
            bad = Rejected("unreadable_row_group", str(exc))
            results = [RowResult(unit.first_row + i, None, None, bad) for i in range(unit.num_rows)]
            return commit_unit(
                s.output, name, unit, results, read=unit.num_rows, skipped=0, bad_file=str(exc), **commit
            )
        return commit_unit(
            s.output, name, unit, results, read=counts["read"], skipped=counts["skipped"], clock=clock, **commit
        )

    def _classified(
        self,
        row_batches: Iterator[list[Row]],
        plans: dict[int, RowPlan],
        results: list[RowResult],
        reuse: list[tuple[Row, tuple[int, int]]],
        counts: dict,
        clock: StageClock,
    ) -> Iterator[tuple[Row, str]]:
        """Classify rows as they stream in; yield (row, class) for the model, collect rows to copy."""
        for rows in row_batches:
            with clock("classify"):
                c = classify(rows, plans, self.job.unit_paths)
                counts["read"] += len(rows)
                counts["skipped"] += c.skipped
                results.extend(c.decided)
                reuse.extend(c.reuse)
            yield from c.todo

    def _copied(self, reuse: list[tuple[Row, tuple[int, int]]]) -> list[RowResult]:
        """Unchanged rows with the vectors (and content hash) the previous run stored for them,
        each previous shard read once."""
        by_shard: dict[int, list[tuple[Row, int]]] = defaultdict(list)
        for row, (shard, prev_row) in reuse:
            by_shard[shard].append((row, prev_row))
        out = []
        for shard, pairs in sorted(by_shard.items()):
            copied = previous_rows(self.job.previous_shards[shard], [prev_row for _, prev_row in pairs])
            out += [RowResult(r.row_index, r.id, r.caption, v, c, "unchanged") for (r, _), (v, c) in zip(pairs, copied)]
        return out

    def _embed_batches(
        self, batches: Iterator[list[tuple[Row, str]]], report: UnitReport, clock: StageClock, decoder: StageClock
    ) -> Iterator[tuple[list[tuple[Row, str]], list[Outcome]]]:
        """Yield (batch, outcomes). With decode-ahead (default on CUDA) batch k+1 is decoded in a
        thread (timed on `decoder`, that thread's clock) while batch k runs forward; on a CPU they
        run in turn (the cores are busy either way, and torch work in a second thread slowed the
        forward passes, docs/performance.md)."""
        pool = cf.ThreadPoolExecutor(1, thread_name_prefix="decode") if self._ahead() else None
        ahead = None
        try:
            for batch in batches:
                model = self._get_model(report)
                with clock("assemble"):
                    items = [ItemInput(r.id, r.caption, r.image) for r, _ in batch]
                if pool is None:
                    t = time.perf_counter()
                    outcomes = self.handler.complete(self.handler.prepare(items, model, clock), items, model, clock)
                    report.batch_ms.append(int((time.perf_counter() - t) * 1000))
                    yield batch, outcomes
                    continue
                nxt = (batch, items, pool.submit(self.handler.prepare_ahead, items, model, decoder))
                if ahead is not None:
                    yield ahead[0], self._completed(report, clock, ahead, model)
                ahead = nxt
            if ahead is not None:
                yield ahead[0], self._completed(report, clock, ahead, self._model)
        finally:
            if pool is not None:
                pool.shutdown()

    def _ahead(self) -> bool:
        """Whether batches are read and decoded ahead in threads (--decode-ahead; auto: on CUDA)."""
        s = self.job.settings
        return s.decode_ahead in ("on", "stream") or (
            s.decode_ahead == "auto" and self.runtime.device.startswith("cuda")
        )

    def _completed(self, report: UnitReport, clock: StageClock, ahead: tuple, model: Towers) -> list[Outcome]:
        """`complete` of a batch the decode thread prepared (the wait for it is a stage)."""
        t = time.perf_counter()
        with clock("wait"):
            prepared = ahead[2].result()
        out = self.handler.complete(prepared, ahead[1], model, clock)
        report.batch_ms.append(int((time.perf_counter() - t) * 1000))
        return out

    def _get_model(self, report: UnitReport) -> Towers:
        if self._model is None:
            t = time.perf_counter()
            self._model = self._load()
            report.load_ms = int((time.perf_counter() - t) * 1000)
        return self._model


def read_ahead(batches: Iterator, pool: cf.Executor, clock: StageClock) -> Iterator:
    """`batches`, the next one read in `pool`'s thread (timed as "read" on `clock`, that thread's)
    while the caller works on the current one: pyarrow decodes pages without the GIL. A reading
    error is raised to the caller where it asks for that batch."""
    it = clock.timed(batches, "read")
    end = object()

    def step():
        return next(it, end)

    pending = pool.submit(step)
    while (batch := pending.result()) is not end:
        pending = pool.submit(step)
        yield batch


def batches_of(items: Iterable, size: int) -> Iterator[list]:
    """`items` in consecutive lists of `size` (the last may be shorter): model batches stay full
    when most rows of a read batch are copied or rejected instead of embedded."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
