"""Units as one stream through threads (--decode-ahead on/stream; auto: on CUDA), and `UnitFeeder`.

    read thread --ToDecode--> decode thread --Decoded--> units' thread (forward) --Finished--> write thread
          (Batch, UnitEnd, Stop: bounded queues, in order)                      (a one-thread executor)

Each thread owns its state and hands it on in typed messages through bounded queues, so no
state is shared and order is the queues' FIFO order:
- the read thread owns the units iterator and each unit's `UnitRows` (counts, rows rejected or
  to copy, its clock): it sends a unit's model batches (`Batch`), then the unit's `UnitEnd`
  carrying its UnitRows;
- the decode thread owns the model's loading (it is the first to need it), `prepare` and its
  clock per unit: it sends `Decoded` batches, and passes `UnitEnd` on with its clock added;
- the units' thread (the caller's) owns the forward passes, each unit's embedded rows and its
  clock; on `UnitEnd` every batch of the unit is done (FIFO), so it hands the unit, whole, as
  `Finished` to the write thread, whose commits come back in unit order (`Commits`).
The next unit's first batch is read and decoded while the previous unit's last batch runs
forward: a unit boundary does not drain the pipeline. `Stop` ends a stream: after the last unit,
or carrying the error that ended it. Nothing polls: every wait is a blocking get or put.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from encoders.stages import StageClock
from encoders.towers import Towers
from pipelines.embed.embedder import Prepared
from pipelines.embed.rows import RowPlan
from pipelines.embed.worker import Batch as Rows
from pipelines.embed.worker import Finished, UnitReport, UnitRows, UnitRun, UnitWorker
from pipelines.inputs import WorkUnit

DEPTH = 1  # batches waiting in each queue (one more is being worked on by each thread)


@dataclass(frozen=True)
class Batch:
    """A model batch of `run`'s rows, read and classified (read thread -> decode thread)."""

    run: UnitRun
    rows: Rows


@dataclass(frozen=True)
class Decoded:
    """A batch prepared for the forward passes (decode thread -> units' thread); `load_ms`: the
    model was loaded for it, in that time."""

    run: UnitRun
    rows: Rows
    items: list
    prepared: Prepared
    model: Towers
    load_ms: int | None = None


@dataclass(frozen=True)
class UnitEnd:
    """Every batch of `run` was sent before this: the unit's UnitRows and the clocks of the
    threads it passed (read thread -> decode thread -> units' thread)."""

    run: UnitRun
    rows: UnitRows
    decoder: StageClock | None = None


@dataclass(frozen=True)
class Stop:
    """The stream's last message: after the last unit (`error` None), or the error that ended it."""

    error: BaseException | None = None


def stream(worker: UnitWorker, units: Iterable[tuple[WorkUnit, Iterable[RowPlan]]]) -> Iterator[UnitReport]:
    """`worker.process_many` with read/decode-ahead: the reports in unit order, each once its
    shard is committed. An error in any thread is raised here, where the stream reaches it."""
    to_decode: queue.Queue = queue.Queue(DEPTH)
    decoded: queue.Queue = queue.Queue(DEPTH)
    stopping = threading.Event()  # the units' thread stopped early: the others skip their work
    threads = [
        threading.Thread(target=_read, args=(worker, units, to_decode, stopping), name="read", daemon=True),
        threading.Thread(target=_decode, args=(worker, to_decode, decoded, stopping), name="decode", daemon=True),
    ]
    for thread in threads:
        thread.start()
    ended = False
    try:
        with cf.ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
            commits = Commits(worker, writer)
            clocks: dict[int, StageClock] = {}  # this thread's clock of each unit in flight
            embedded: dict[int, list] = {}  # this thread's results of each unit in flight
            since = time.perf_counter()
            while True:
                t = time.perf_counter()
                msg = decoded.get()
                if isinstance(msg, Stop):
                    ended = True
                    if msg.error is not None:
                        raise msg.error
                    break
                i = msg.run.unit.index
                clock = clocks.setdefault(i, StageClock())
                if isinstance(msg, Decoded):
                    if msg.load_ms is not None:
                        msg.run.report.load_ms = msg.load_ms
                    clock.add("wait", max(0.0, time.perf_counter() - t - (msg.load_ms or 0) / 1000))
                    out = worker.complete(msg.run, msg.rows, msg.items, msg.prepared, msg.model, clock, t)
                    embedded.setdefault(i, []).extend(out)
                    continue
                clock.add("wait", time.perf_counter() - t)
                if not msg.run.reused:  # its time ends here, before its report is the commit's
                    since = worker.timed(msg.run, since)
                done = Finished(msg.run, msg.rows, embedded.pop(i, []), clocks.pop(i), (msg.rows.clock, msg.decoder))
                commits.submit(done)
                yield from commits.done()
            yield from commits.finish()
        for thread in threads:
            thread.join()
    finally:
        stopping.set()  # after an error or an early close the read thread stops at the next unit
        while not ended and not isinstance(decoded.get(), Stop):  # and the decode thread can always put
            pass


def _read(worker: UnitWorker, units, out: queue.Queue, stopping: threading.Event) -> None:
    """The read thread: each unit's batches, then its end; `Stop` last (with the error, if any)."""
    try:
        for unit, plans in units:
            if stopping.is_set():
                break
            run = worker.start(unit, plans)
            rows = UnitRows(StageClock())
            for batch in worker.read(run, rows):
                out.put(Batch(run, batch))
            out.put(UnitEnd(run, rows))
        out.put(Stop())
    except BaseException as exc:  # handed on to the units' thread, which raises it
        out.put(Stop(exc))


def _decode(worker: UnitWorker, inbox: queue.Queue, out: queue.Queue, stopping: threading.Event) -> None:
    """The decode thread: loads the model on first use and prepares each batch (on the unit's
    decode clock); passes each unit's end on with that clock. After an error it still takes the
    read thread's messages, up to its `Stop`, so that the read thread never waits forever."""
    clocks: dict[int, StageClock] = {}
    failed: BaseException | None = None
    while not isinstance(msg := inbox.get(), Stop):
        if failed is not None or stopping.is_set():
            continue
        clock = clocks.setdefault(msg.run.unit.index, StageClock())
        if isinstance(msg, UnitEnd):
            out.put(replace(msg, decoder=clocks.pop(msg.run.unit.index)))
            continue
        try:
            model, load_ms = worker.towers()
            items = worker.items(msg.rows, clock)
            prepared = worker.handler.prepare_ahead(items, model, clock)
        except BaseException as exc:  # handed on to the units' thread, which raises it
            failed = exc
            out.put(Stop(exc))
            continue
        out.put(Decoded(msg.run, msg.rows, items, prepared, model, load_ms))
    if failed is None:
        out.put(msg)  # the read thread's Stop


class Commits:
    """Units' commits in unit order, in `writer`'s thread (each timed on a write clock of its
    own). `done` yields the reports of the commits finished so far, in order; `finish` waits for
    the rest. A commit's error is raised where its report would have been yielded."""

    def __init__(self, worker: UnitWorker, writer: cf.Executor):
        self._worker, self._writer = worker, writer
        self._queued: deque[cf.Future] = deque()

    def submit(self, done: Finished) -> None:
        clock = StageClock()
        self._queued.append(self._writer.submit(self._commit, done, clock))

    def _commit(self, done: Finished, clock: StageClock) -> UnitReport:
        return self._worker.commit(replace(done, ahead=(*done.ahead, clock)), clock)

    def done(self) -> Iterator[UnitReport]:
        while self._queued and self._queued[0].done():
            yield self._queued.popleft().result()

    def finish(self) -> Iterator[UnitReport]:
        while self._queued:
            yield self._queued.popleft().result()


_END = object()


class UnitFeeder:
    """`worker.process_many` in a thread of its own, fed one unit at a time: for an engine that
    hands over units one call at a time (a Beam DoFn's process), so that consecutive units still
    stream through one pipeline. At most `depth` units wait in the queue, so the engine hands
    over units at the pace they are embedded (a runner can still split off those it has not).

    `put` queues a unit and returns the reports committed since; `close` waits for the rest.
    An error in the thread is raised by the next `put` or by `close`. The thread owns the stream;
    the engine's thread owns nothing but the two queues' ends; `_error` is written once, by the
    thread, which then keeps taking units up to the engine's end so that `put` never blocks."""

    def __init__(self, worker: UnitWorker, depth: int = 1):
        self._in: queue.Queue = queue.Queue(maxsize=depth)
        self._out: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(worker,), name="units", daemon=True)
        self._thread.start()

    def _run(self, worker: UnitWorker) -> None:
        units = iter(self._in.get, _END)
        try:
            for report in worker.process_many(units):
                self._out.put(report)
        except BaseException as exc:  # handed to the engine's thread by put / close
            self._error = exc
            for _ in units:  # up to the engine's end (close or abandon)
                pass

    def put(self, unit: WorkUnit, plans: Iterable[RowPlan] = ()) -> list[UnitReport]:
        self._raise()
        self._in.put((unit, plans))
        self._raise()
        return self._drain()

    def close(self) -> list[UnitReport]:
        self._in.put(_END)
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
            self._in.put_nowait(_END)
        except queue.Full:  # the thread queued nothing since: it is gone or will see the queue empty
            pass

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> list[UnitReport]:
        out = []
        while True:
            try:
                out.append(self._out.get_nowait())
            except queue.Empty:
                return out
