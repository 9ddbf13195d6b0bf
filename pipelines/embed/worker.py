"""Embedding work units and committing their shards: engine-agnostic, no Beam here.

`UnitWorker.process_many` embeds units in turn. On a CPU (--decode-ahead auto/off) it is a plain
loop in the caller's thread: read a unit's rows, embed them batch by batch, commit its shard.
With read/decode-ahead (--decode-ahead on/stream; auto: on CUDA) the units flow through the
threads of pipelines/embed/stream.py instead (read, decode, the caller's forward passes, write),
as one stream whose batches cross unit boundaries; `UnitFeeder` runs that stream for an engine
that hands units over one call at a time. Both paths share the steps below, so either gives the
same shards.

The Beam DoFn (pipelines/embed/beam.py) and the Spark task (pipelines/embed/spark.py) are thin
drivers over `UnitWorker`: each hands over a model loader that loads once per worker process
(Beam's `shared.Shared` / `MultiProcessShared`; a module-level cache in the Spark Python worker)
and turns `UnitReport`s into its metrics. Reuse after a crash is decided here, per shard: a
committed shard is reused only when the Runtime it records equals the one this worker resolves.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import KW_ONLY, dataclass, field

from encoders import storage
from encoders.errors import InputError
from encoders.models import ResolvedModel
from encoders.stages import StageClock
from encoders.towers import Towers
from index_builder.embeddings import shard_name
from pipelines.embed.embedder import Embedder, Prepared
from pipelines.embed.outcomes import ItemInput, Rejected
from pipelines.embed.rows import RowPlan, RowResult, classify, content_hash
from pipelines.embed.settings import EmbedSettings, Runtime
from pipelines.embed.shards import commit_unit, committed_runtime, previous_rows, shard_paths
from pipelines.inputs import Row, WorkUnit, iter_unit
from pipelines.threads import ThreadLayout

log = logging.getLogger(__name__)

Batch = list[tuple[Row, str]]  # a model batch: rows to embed, each with its class (new, changed)


@dataclass(frozen=True)
class UnitJob:
    """What every worker needs to know about the run (small and picklable)."""

    settings: EmbedSettings
    unit_paths: tuple[str, ...]  # unit index -> its source file, for messages
    dim: int
    resume: bool  # the directory's committed shards belong to this run (equal run key)
    _: KW_ONLY
    model: ResolvedModel | None = None  # the --model the driver resolved (None: each worker resolves it)
    runtime: Runtime | None = None  # the driver's Runtime when the workers are its machine (None: resolved per worker)
    previous_shards: tuple[str, ...] = ()  # the previous run's shards, which `unchanged` plans point into
    threads: ThreadLayout = ThreadLayout("beam")  # how the engine runs processes on a machine (their torch threads)
    # a seam for tests to inject faults: called on the worker with a unit's index once its shard is committed
    after_commit: Callable[[int], None] | None = None


@dataclass
class UnitReport:
    """What processing one unit did, for metrics: counts None when the shard was reused."""

    unit: int
    counts: dict | None = None
    unit_ms: int = 0  # read + embed + commit, model load excluded
    load_ms: int | None = None  # when this unit loaded the model
    batch_ms: list[int] = field(default_factory=list)  # one entry per model call
    # exclusive seconds per stage (encoders.stages): `stages` on the unit's thread, adding up to
    # unit_ms; `ahead` on the read, decode and write threads (read; probe, decode, tokenize; write),
    # overlapping the first
    stages: dict[str, float] = field(default_factory=dict)
    ahead: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitRun:
    """A unit being processed: which shard it commits, the join's plans for its rows, and whether
    an identical run committed that shard already (`reused`: nothing to do). Its `report` belongs
    to the units' thread until the unit is handed to its commit, and to the commit after."""

    unit: WorkUnit
    name: str
    plans: dict[int, RowPlan]
    reused: bool
    report: UnitReport


@dataclass
class UnitRows:
    """What reading a unit's rows decided before the model: counts, rows rejected or copied, or
    the error that stopped the read. Owned by the thread that reads the unit (timed on `clock`),
    until it hands the whole over with the unit's end."""

    clock: StageClock
    read: int = 0
    skipped: int = 0
    metadata_changed: int = 0
    decided: list[RowResult] = field(default_factory=list)
    reuse: list[tuple[Row, tuple[int, int]]] = field(default_factory=list)
    error: InputError | None = None  # reading the row group failed


@dataclass
class Finished:
    """A unit whose rows are all read and embedded, handed whole to its commit: the rows' results
    (`embedded`), the units' thread's clock and the other threads' clocks (`ahead`)."""

    run: UnitRun
    rows: UnitRows
    embedded: list[RowResult]
    clock: StageClock
    ahead: tuple[StageClock, ...] = ()


class UnitWorker:
    """Embeds units and commits their shards. `load_model` returns the towers, loading them at
    most once per process (or per machine); it is called only when a unit needs the model."""

    def __init__(self, job: UnitJob, handler: Embedder, load_model: Callable[[], Towers]):
        self.job, self.handler, self._load = job, handler, load_model
        self.runtime = handler.runtime()
        self._model: Towers | None = None  # the thread that runs `prepare` loads and owns it

    def process(self, unit: WorkUnit, plans: Iterable[RowPlan] = ()) -> UnitReport:
        """Embed `unit` following the join's plans for its rows (duplicates to reject, unchanged
        rows to copy from the previous run) and commit its shard, or reuse the shard an identical
        run committed."""
        (report,) = self.process_many([(unit, plans)])
        return report

    def process_many(self, units: Iterable[tuple[WorkUnit, Iterable[RowPlan]]]) -> Iterator[UnitReport]:
        """`process` of each (unit, plans), in order, yielding each unit's report once its shard is
        committed (or found reusable). `units` is consumed lazily, a unit when its rows are
        needed. With read/decode-ahead they stream through pipelines/embed/stream.py."""
        if self.reads_ahead():
            from pipelines.embed.stream import stream

            reports = stream(self, units)
        else:
            reports = self._loop(units)
        for report in reports:
            if self.job.after_commit is not None:
                self.job.after_commit(report.unit)
            yield report

    def reads_ahead(self) -> bool:
        """Whether batches are read and decoded ahead in threads (--decode-ahead; auto: on CUDA).
        On a CPU units run in a plain loop (the cores are busy either way, and torch work in a
        second thread slowed the forward passes, docs/performance.md)."""
        s = self.job.settings
        return s.decode_ahead in ("on", "stream") or (
            s.decode_ahead == "auto" and self.runtime.device.startswith("cuda")
        )

    def _loop(self, units: Iterable[tuple[WorkUnit, Iterable[RowPlan]]]) -> Iterator[UnitReport]:
        """The plain loop: each unit read, embedded and committed in this thread. A unit's time
        runs from the previous commit (or the start) to its own, the model load excluded."""
        since = time.perf_counter()
        for unit, plans in units:
            run = self.start(unit, plans)
            clock = StageClock()
            rows = UnitRows(clock)
            embedded: list[RowResult] = []
            for batch in self.read(run, rows):
                model, load_ms = self.towers()
                if load_ms is not None:
                    run.report.load_ms = load_ms
                items = self.items(batch, clock)
                t = time.perf_counter()
                prepared = self.handler.prepare(items, model, clock)
                embedded += self.complete(run, batch, items, prepared, model, clock, t)
            self.commit(Finished(run, rows, embedded, clock), clock)
            if not run.reused:
                since = self.timed(run, since)
            yield run.report

    def start(self, unit: WorkUnit, plans: Iterable[RowPlan]) -> UnitRun:
        name = shard_name(unit.index, len(self.job.unit_paths))
        return UnitRun(unit, name, {p.row: p for p in plans}, self._reusable(unit, name), UnitReport(unit.index))

    def _reusable(self, unit: WorkUnit, name: str) -> bool:
        """Whether an identical run committed this unit's shard with the Runtime this worker runs."""
        shard_path, _ = shard_paths(self.job.settings.output, name)
        if not (self.job.resume and storage.exists(shard_path)):
            return False
        made = committed_runtime(shard_path)
        if made == self.runtime:
            log.info("reusing committed %s", name)
            return True
        log.info("recomputing %s: it was made with %s, this worker runs %s", name, made, self.runtime)
        return False

    def read(self, run: UnitRun, rows: UnitRows) -> Iterator[Batch]:
        """The unit's rows to embed in model batches of --batch-size, read and classified as they
        stream in (timed on rows.clock); rows skipped, rejected or to copy go to `rows`. A row
        group that cannot be read ends the batches with rows.error set; a reused unit has none."""
        if run.reused:
            return
        size = self.job.settings.batch_size
        try:
            yield from batches_of(
                self._classified(rows.clock.timed(iter_unit(run.unit, size), "read"), run, rows), size
            )
        except InputError as exc:
            rows.error = exc

    def _classified(self, row_batches: Iterator[list[Row]], run: UnitRun, rows: UnitRows) -> Iterator:
        for batch in row_batches:
            with rows.clock("classify"):
                c = classify(batch, run.plans, self.job.unit_paths)
                rows.read += len(batch)
                rows.skipped += c.skipped
                rows.metadata_changed += c.metadata_changed
                rows.decided.extend(c.decided)
                rows.reuse.extend(c.reuse)
            yield from c.todo

    def towers(self) -> tuple[Towers, int | None]:
        """The towers, loaded on first use: (towers, the load's milliseconds when this call loaded them)."""
        if self._model is not None:
            return self._model, None
        t = time.perf_counter()
        self._model = self._load()
        return self._model, int((time.perf_counter() - t) * 1000)

    @staticmethod
    def items(batch: Batch, clock: StageClock) -> list[ItemInput]:
        with clock("assemble"):
            return [ItemInput(r.id, r.caption, r.image) for r, _ in batch]

    def complete(
        self, run: UnitRun, batch: Batch, items: list, prepared: Prepared, model: Towers, clock: StageClock, t: float
    ) -> list[RowResult]:
        """The forward passes of a prepared batch, as the rows' results; the model call's time
        (since `t`) goes to the unit's report."""
        outcomes = self.handler.complete(prepared, items, model, clock)
        run.report.batch_ms.append(int((time.perf_counter() - t) * 1000))
        with clock("assemble"):
            return [
                RowResult(r.row_index, r.id, r.caption, o, content_hash(r.image), kind, r.carried)
                for (r, kind), o in zip(batch, outcomes)
            ]

    @staticmethod
    def timed(run: UnitRun, since: float) -> float:
        """Set the unit's time (since the previous unit's end, its model load excluded); returns now."""
        now = time.perf_counter()
        run.report.unit_ms = int((now - since) * 1000) - (run.report.load_ms or 0)
        return now

    def commit(self, done: Finished, clock: StageClock) -> UnitReport:
        """Commit the unit's shard (a row group that could not be read: all its rows rejected, with
        --skip-bad-files; else its InputError is raised), timed on `clock` (that of the thread
        committing); returns its report (counts None for a reused unit)."""
        report = done.run.report
        if done.run.reused:
            return report
        try:
            self._commit_shard(done, clock)
        finally:
            report.stages = done.clock.seconds
            threads = [c.seconds for c in done.ahead]
            report.ahead = {k: sum(t.get(k, 0.0) for t in threads) for k in set().union(*threads)}
        return report

    def _commit_shard(self, done: Finished, clock: StageClock) -> None:
        s, run, rows = self.job.settings, done.run, done.rows
        commit = dict(dim=self.job.dim, runtime=self.runtime)
        results = rows.decided + done.embedded
        if rows.error is None and rows.reuse:
            try:
                with clock("copy"):
                    results += self._copied(rows.reuse)
            except InputError as exc:
                rows.error = exc
        if rows.error is None:
            run.report.counts = commit_unit(
                s.output, run.name, run.unit, results, read=rows.read, skipped=rows.skipped, clock=clock,
                metadata_changed=rows.metadata_changed, **commit,
            )  # fmt: skip
            return
        if not s.skip_bad_files:
            raise rows.error
        log.warning("skipping unreadable row group: %s", rows.error)
        bad = Rejected("unreadable_row_group", str(rows.error))
        results = [RowResult(run.unit.first_row + i, None, None, bad) for i in range(run.unit.num_rows)]
        run.report.counts = commit_unit(
            s.output, run.name, run.unit, results, read=run.unit.num_rows, skipped=0, bad_file=str(rows.error), **commit
        )

    def _copied(self, reuse: list[tuple[Row, tuple[int, int]]]) -> list[RowResult]:
        """Unchanged rows with the vectors (and content hash) the previous run stored for them,
        each previous shard read once."""
        by_shard: dict[int, list[tuple[Row, int]]] = defaultdict(list)
        for row, (shard, prev_row) in reuse:
            by_shard[shard].append((row, prev_row))
        out = []
        for shard, pairs in sorted(by_shard.items()):
            copied = previous_rows(self.job.previous_shards[shard], [prev_row for _, prev_row in pairs])
            out += [
                RowResult(r.row_index, r.id, r.caption, v, c, "unchanged", r.carried)
                for (r, _), (v, c) in zip(pairs, copied)
            ]
        return out


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
