"""Embedding work units and committing their shards: engine-agnostic, no Beam here.

Units are embedded one at a time, or, with read/decode-ahead, as one stream (`process_many`)
whose batches cross unit boundaries so that the pipeline never drains between units, and whose
shards are committed in a write thread (`Commits`);
`UnitFeeder` runs that stream in a thread for an engine that hands units over one call at a time.

The Beam DoFn (pipelines/embed/beam.py) and the Spark task (pipelines/embed/spark.py) are thin
drivers over `UnitWorker`: each hands over a model loader that loads once per worker process
(Beam's `shared.Shared` / `MultiProcessShared`; a module-level cache in the Spark Python worker)
and turns `UnitReport`s into its metrics. Reuse after a crash is decided here, per shard: a
committed shard is reused only when the Runtime it records equals the one this worker resolves.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

from encoders import storage
from encoders.errors import InputError
from encoders.models import ResolvedModel
from encoders.stages import StageClock
from encoders.towers import Towers
from index_builder.embeddings import shard_name
from pipelines.embed.embedder import Embedder
from pipelines.embed.outcomes import ItemInput, Outcome, Rejected
from pipelines.embed.rows import RowPlan, RowResult, classify, content_hash
from pipelines.embed.settings import EmbedSettings, Runtime
from pipelines.embed.shards import commit_unit, committed_runtime, previous_rows, shard_paths
from pipelines.inputs import Row, WorkUnit, iter_unit
from pipelines.threads import ThreadLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitJob:
    """What every worker needs to know about the run (small and picklable)."""

    settings: EmbedSettings
    unit_paths: tuple[str, ...]  # unit index -> its source file, for messages
    dim: int
    resume: bool  # the directory's committed shards belong to this run (equal run key)
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
    # unit_ms; `ahead` on the read-ahead and decode-ahead threads (read; probe, decode, tokenize),
    # overlapping the first
    stages: dict[str, float] = field(default_factory=dict)
    ahead: dict[str, float] = field(default_factory=dict)


@dataclass
class _InFlight:
    """A unit being embedded: its results so far, and one stage clock per thread that works on it."""

    unit: WorkUnit
    name: str
    plans: dict[int, RowPlan]
    report: UnitReport
    results: list[RowResult] = field(default_factory=list)
    reuse: list[tuple[Row, tuple[int, int]]] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"read": 0, "skipped": 0})
    clock: StageClock = field(default_factory=StageClock)  # the unit's thread
    reader: StageClock = field(default_factory=StageClock)  # the read-ahead thread
    decoder: StageClock = field(default_factory=StageClock)  # the decode-ahead thread
    writer: StageClock = field(default_factory=StageClock)  # the write thread (with read/decode-ahead)
    error: InputError | None = None  # reading its row group failed
    reused: bool = False  # an identical run committed its shard: nothing to do


class UnitWorker:
    """Embeds units and commits their shards. `load_model` returns the towers, loading them at
    most once per process (or per machine); it is called only when a unit needs the model."""

    def __init__(self, job: UnitJob, handler: Embedder, load_model: Callable[[], Towers]):
        self.job, self.handler, self._load = job, handler, load_model
        self.runtime = handler.runtime()
        self._model: Towers | None = None

    def process(self, unit: WorkUnit, plans: Iterable[RowPlan] = ()) -> UnitReport:
        """Embed `unit` following the join's plans for its rows (duplicates to reject, unchanged
        rows to copy from the previous run) and commit its shard, or reuse the shard an identical
        run committed."""
        (report,) = self.process_many([(unit, plans)])
        return report

    def process_many(self, units: Iterable[tuple[WorkUnit, Iterable[RowPlan]]]) -> Iterator[UnitReport]:
        """`process` of each (unit, plans), in order, yielding each unit's report once its shard is
        committed (or found reusable). `units` is consumed lazily, a unit when its rows are
        needed. With --decode-ahead the units stream through the same read-ahead and
        decode-ahead threads: the next unit's first batch is read and decoded while the last
        batch of the one before runs forward, so a unit boundary does not drain the pipeline
        (with row groups of one batch nothing would overlap otherwise), and each shard is
        committed in a write thread."""
        runs = (self._in_flight(unit, plans) for unit, plans in units)
        for report in self._stream(runs):
            if self.job.after_commit is not None:
                self.job.after_commit(report.unit)
            yield report

    def _in_flight(self, unit: WorkUnit, plans: Iterable[RowPlan]) -> _InFlight:
        name = shard_name(unit.index, len(self.job.unit_paths))
        return _InFlight(
            unit, name, {p.row: p for p in plans}, UnitReport(unit.index), reused=self._reusable(unit, name)
        )

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

    def _stream(self, runs: Iterator[_InFlight]) -> Iterator[UnitReport]:
        """Embed the units of `runs` as one stream of model batches; commit each unit once its
        last batch is done. Each unit's time runs from the previous commit (or the start) to its
        own, the model load excluded, so the units' times add up to the stream's."""
        ahead = self.reads_ahead()
        with (
            cf.ThreadPoolExecutor(1, thread_name_prefix="read") if ahead else nullcontext() as reader,
            cf.ThreadPoolExecutor(1, thread_name_prefix="decode") if ahead else nullcontext() as decoder,
            cf.ThreadPoolExecutor(1, thread_name_prefix="write") if ahead else nullcontext() as writer,
        ):
            batches = self._batches(runs, ahead)
            if reader is not None:
                batches = read_ahead(batches, reader)
            commits = Commits(self._commit, writer)
            ended: list[_InFlight] = []  # units read to the end, not yet committed
            pending = None  # (unit, batch, items, future): the batch being prepared ahead
            since = time.perf_counter()
            while True:
                t = time.perf_counter()
                nxt = next(batches, None)
                if nxt is None:
                    break
                run, batch = nxt
                if reader is not None:  # waiting for the read-ahead thread (else read is timed inside)
                    run.clock.add("wait", time.perf_counter() - t)
                if batch is None:  # the unit's rows are all in batches: commit it once they are done
                    ended.append(run)
                else:
                    pending = self._embed_batch(run, batch, pending, decoder)
                since = yield from self._commit_ended(ended, pending, since, commits)
            if pending is not None:
                self._completed(pending, self._model)
                pending = None
            yield from self._commit_ended(ended, None, since, commits)
            yield from commits.finish()

    def _embed_batch(self, run: _InFlight, batch: list, pending: tuple | None, decoder: cf.Executor | None):
        """Embed `batch` now (no decode thread), or hand it to the decode thread and complete the
        batch handed over before; returns the batch now in flight (None without a decode thread)."""
        model = self._get_model(run.report)
        with run.clock("assemble"):
            items = [ItemInput(r.id, r.caption, r.image) for r, _ in batch]
        if decoder is None:
            t = time.perf_counter()
            prepared = self.handler.prepare(items, model, run.clock)
            self._done(run, batch, self.handler.complete(prepared, items, model, run.clock), t)
            return None
        future = decoder.submit(self.handler.prepare_ahead, items, model, run.decoder)
        if pending is not None:
            self._completed(pending, model)
        return run, batch, items, future

    def _batches(self, runs: Iterator[_InFlight], ahead: bool) -> Iterator[tuple[_InFlight, list | None]]:
        """(unit, model batch) for each unit in turn, and (unit, None) for its end: rows read,
        classified and grouped in batches of --batch-size (in the read-ahead thread with
        read-ahead, timed on that thread's clocks). A row group that cannot be read ends its unit
        with `error` set; a reused unit has only its end. With read-ahead a unit's end comes after
        the next unit's first batch, so that this batch is read (and then decoded) while the
        unit's last batch runs forward."""
        s = self.job.settings
        held = None  # with read-ahead: the previous unit's end, until this unit's first batch is out
        for run in runs:
            clock = run.reader if ahead else run.clock
            try:
                if not run.reused:
                    rows = clock.timed(iter_unit(run.unit, s.batch_size), "read")
                    for batch in batches_of(self._classified(rows, run, clock), s.batch_size):
                        yield run, batch
                        if held is not None:
                            yield held
                            held = None
            except InputError as exc:
                run.error = exc
            if held is not None:
                yield held
            held = (run, None)
            if not ahead:
                yield held
                held = None
        if held is not None:
            yield held

    def _classified(self, row_batches: Iterator[list[Row]], run: _InFlight, clock: StageClock) -> Iterator:
        """Classify rows as they stream in; yield (row, class) for the model, collect rows to copy."""
        for rows in row_batches:
            with clock("classify"):
                c = classify(rows, run.plans, self.job.unit_paths)
                run.counts["read"] += len(rows)
                run.counts["skipped"] += c.skipped
                run.results.extend(c.decided)
                run.reuse.extend(c.reuse)
            yield from c.todo

    def _completed(self, pending: tuple, model: Towers) -> None:
        """`complete` of a batch the decode thread prepared (the wait for it is a stage)."""
        run, batch, items, future = pending
        t = time.perf_counter()
        with run.clock("wait"):
            prepared = future.result()
        self._done(run, batch, self.handler.complete(prepared, items, model, run.clock), t)

    def _done(self, run: _InFlight, batch: list, outcomes: list[Outcome], t: float) -> None:
        run.report.batch_ms.append(int((time.perf_counter() - t) * 1000))
        with run.clock("assemble"):
            run.results.extend(
                RowResult(r.row_index, r.id, r.caption, o, content_hash(r.image), kind)
                for (r, kind), o in zip(batch, outcomes)
            )

    def _commit_ended(self, ended: list[_InFlight], pending: tuple | None, since: float, commits: Commits):
        """Commit the ended units none of whose batches is still in flight (in the write thread,
        with read/decode-ahead), and yield the reports of commits done; returns when the last
        commit was handed over or done (the next unit's time starts there)."""
        while ended and (pending is None or pending[0] is not ended[0]):
            run = ended.pop(0)
            commits.submit(run)
            if not run.reused:
                now = time.perf_counter()
                run.report.unit_ms = int((now - since) * 1000) - (run.report.load_ms or 0)
                since = now
        yield from commits.done()
        return since

    def _commit(self, run: _InFlight, clock: StageClock) -> None:
        """Commit `run`'s shard (a row group that could not be read: all its rows rejected, with
        --skip-bad-files; else its InputError is raised), timed on `clock` (that of the thread
        committing). A reused unit's report keeps counts None."""
        if run.reused:
            return
        try:
            self._commit_shard(run, clock)
        finally:
            run.report.stages = run.clock.seconds
            threads = (run.reader.seconds, run.decoder.seconds, run.writer.seconds)
            run.report.ahead = {k: sum(t.get(k, 0.0) for t in threads) for k in set().union(*threads)}

    def _commit_shard(self, run: _InFlight, clock: StageClock) -> None:
        s = self.job.settings
        commit = dict(dim=self.job.dim, runtime=self.runtime)
        if run.error is None and run.reuse:
            try:
                with clock("copy"):
                    run.results.extend(self._copied(run.reuse))
            except InputError as exc:
                run.error = exc
        if run.error is None:
            run.report.counts = commit_unit(
                s.output, run.name, run.unit, run.results, read=run.counts["read"], skipped=run.counts["skipped"],
                clock=clock, **commit,
            )  # fmt: skip
            return
        if not s.skip_bad_files:
            raise run.error
        log.warning("skipping unreadable row group: %s", run.error)
        bad = Rejected("unreadable_row_group", str(run.error))
        results = [RowResult(run.unit.first_row + i, None, None, bad) for i in range(run.unit.num_rows)]
        run.report.counts = commit_unit(
            s.output, run.name, run.unit, results, read=run.unit.num_rows, skipped=0, bad_file=str(run.error), **commit
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
            out += [RowResult(r.row_index, r.id, r.caption, v, c, "unchanged") for (r, _), (v, c) in zip(pairs, copied)]
        return out

    def reads_ahead(self) -> bool:
        """Whether batches are read and decoded ahead in threads (--decode-ahead; auto: on CUDA),
        and so whether consecutive units gain from one stream (`process_many`). On a CPU they run
        in turn (the cores are busy either way, and torch work in a second thread slowed the
        forward passes, docs/performance.md)."""
        s = self.job.settings
        return s.decode_ahead in ("on", "stream") or (
            s.decode_ahead == "auto" and self.runtime.device.startswith("cuda")
        )

    def _get_model(self, report: UnitReport) -> Towers:
        if self._model is None:
            t = time.perf_counter()
            self._model = self._load()
            report.load_ms = int((time.perf_counter() - t) * 1000)
        return self._model


class Commits:
    """Units' commits in unit order: in `writer`'s thread (timed on each unit's write clock), or,
    without one, at once in the caller's (on its own clock). `done` yields the reports of the
    commits finished so far, in order; `finish` waits for the rest. A commit's error is raised
    where its report would have been yielded."""

    def __init__(self, commit: Callable[[_InFlight, StageClock], None], writer: cf.Executor | None):
        self._commit, self._writer = commit, writer
        self._queued: deque[tuple[_InFlight, cf.Future | None]] = deque()

    def submit(self, run: _InFlight) -> None:
        if self._writer is None:
            self._commit(run, run.clock)
            self._queued.append((run, None))
        else:
            self._queued.append((run, self._writer.submit(self._commit, run, run.writer)))

    def done(self) -> Iterator[UnitReport]:
        while self._queued and (self._queued[0][1] is None or self._queued[0][1].done()):
            yield self._next()

    def finish(self) -> Iterator[UnitReport]:
        while self._queued:
            yield self._next()

    def _next(self) -> UnitReport:
        run, future = self._queued.popleft()
        if future is not None:
            future.result()
        return run.report


class UnitFeeder:
    """`worker.process_many` in a thread of its own, fed one unit at a time: for an engine that
    hands over units one call at a time (a Beam DoFn's process), so that consecutive units still
    stream through one pipeline. At most `depth` units wait in the queue, so the engine hands
    over units at the pace they are embedded (a runner can still split off those it has not).

    `put` queues a unit and returns the reports committed since; `close` waits for the rest.
    An error in the thread is raised by the next `put` or by `close`."""

    _END = object()

    def __init__(self, worker: UnitWorker, depth: int = 1):
        self._in: queue.Queue = queue.Queue(maxsize=depth)
        self._out: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(worker,), name="units", daemon=True)
        self._thread.start()

    def _run(self, worker: UnitWorker) -> None:
        try:
            for report in worker.process_many(iter(self._in.get, self._END)):
                self._out.put(report)
        except BaseException as exc:  # handed to the engine's thread by put / close
            self._error = exc
        finally:
            self._done.set()

    def put(self, unit: WorkUnit, plans: Iterable[RowPlan] = ()) -> list[UnitReport]:
        while True:
            self._raise()
            try:
                self._in.put((unit, plans), timeout=0.5)
                break
            except queue.Full:
                continue
        return self._drain()

    def close(self) -> list[UnitReport]:
        while not self._done.is_set():
            try:
                self._in.put(self._END, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise()
        return self._drain()

    def abandon(self) -> None:
        """Drop the units still queued and end the stream after the one in hand (its shard is
        committed as usual): for an engine whose bundle failed before `close`."""
        while True:
            try:
                self._in.get_nowait()
            except queue.Empty:
                break
        try:
            self._in.put_nowait(self._END)
        except queue.Full:  # the thread queued nothing since: it is gone or will see the queue empty
            pass

    def _raise(self) -> None:
        if self._done.is_set() and self._error is not None:
            raise self._error

    def _drain(self) -> list[UnitReport]:
        out = []
        while True:
            try:
                out.append(self._out.get_nowait())
            except queue.Empty:
                return out


def read_ahead(items: Iterator, pool: cf.Executor) -> Iterator:
    """`items`, the next one produced in `pool`'s thread while the caller works on the current one
    (pyarrow decodes pages without the GIL). An error is raised to the caller where it asks for
    that item."""
    end = object()

    def step():
        return next(items, end)

    pending = pool.submit(step)
    while (item := pending.result()) is not end:
        pending = pool.submit(step)
        yield item


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
