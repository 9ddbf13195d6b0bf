"""Progress of a running `embed`, watched from the driver whatever the engine or runner.

Units commit their shards into OUTPUT/embeddings/ one by one (pipelines.embed.shards), on this
machine or on Dataflow/Spark workers; the driver lists that directory every few seconds and knows
from the plan how many input rows each unit holds. So: rows done / total, rows/s since the start
(units committed before it, by an interrupted run, are not counted as speed), and an ETA. On a
terminal a tqdm bar shows them; otherwise (cron, Dataflow's launcher, CI) a log line every
LOG_EVERY seconds and one at the end. The workers' Beam counters (rows_read, rows_embedded, ...)
carry the same row counts into the runner's own UI.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from encoders import storage
from index_builder.embeddings import EMBEDDINGS, shard_index
from pipelines.inputs import WorkUnit

log = logging.getLogger(__name__)

POLL_EVERY = 2.0  # seconds between listings of the shard directory
LOG_EVERY = 30.0  # seconds between progress log lines when stderr is not a terminal


@dataclass(frozen=True)
class Progress:
    """Rows of committed units against the plan's total, and the speed since the watch began."""

    rows_done: int
    rows_total: int
    units_done: int
    units_total: int
    rows_per_s: float | None  # None until a unit commits after the start
    eta_s: float | None

    def line(self) -> str:
        share = self.rows_done / self.rows_total if self.rows_total else 1.0
        speed = "-" if self.rows_per_s is None else f"{self.rows_per_s:,.1f} rows/s"
        eta = "-" if self.eta_s is None else _duration(self.eta_s)
        return (
            f"progress: {self.rows_done:,} / {self.rows_total:,} rows ({share:.1%}), {self.units_done} / "
            f"{self.units_total} units, {speed}, ETA {eta}"
        )


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def measure(done: set[int], rows_of: dict[int, int], at_start: set[int], elapsed_s: float) -> Progress:
    """Progress when the units `done` are committed, `elapsed_s` after the watch began with the
    units `at_start` already committed; `rows_of`: the planned input rows of every unit."""
    done = done & rows_of.keys()
    rows_done = sum(rows_of[i] for i in done)
    rows_total = sum(rows_of.values())
    new_rows = sum(rows_of[i] for i in done - at_start)
    speed = new_rows / elapsed_s if new_rows and elapsed_s > 0 else None
    eta = (rows_total - rows_done) / speed if speed else (0.0 if rows_done == rows_total else None)
    return Progress(rows_done, rows_total, len(done), len(rows_of), speed, eta)


def committed_units(output: str) -> set[int]:
    """Indexes of the units whose shards are committed under OUTPUT/embeddings (a fresh listing:
    object stores' cached listings are dropped first)."""
    indexes = (shard_index(name) for name in storage.listdir(storage.join(output, EMBEDDINGS), fresh=True))
    return {i for i in indexes if i is not None}


class Watcher:
    """A daemon thread reporting the progress of the units of `units` committing into `output`:
    `with Watcher(output, units): run the engine`. `report` receives each Progress (default: a tqdm
    bar on a terminal, log lines otherwise); the last one is logged when the block ends."""

    def __init__(self, output: str, units: list[WorkUnit], report: Callable[[Progress], None] | None = None):
        self.output, self.rows_of = output, {u.index: u.num_rows for u in units}
        self.report = report
        self.stop = threading.Event()
        self.last: Progress | None = None

    def __enter__(self) -> Watcher:
        self.at_start = committed_units(self.output)
        self.t0 = time.monotonic()
        self.bar = None
        if self.report is None and sys.stderr.isatty():
            from tqdm import tqdm  # a dependency of transformers

            self.bar = tqdm(total=sum(self.rows_of.values()), unit="rows", desc="embed", smoothing=0.1)
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self.poll()
        except Exception as err:  # noqa: BLE001 - progress never fails a run that worked
            log.debug("progress listing failed: %s", err)
        if self.bar is not None:
            self.bar.close()
        if exc[0] is None and self.last is not None:
            log.info("%s", self.last.line())

    def poll(self) -> Progress:
        self.last = measure(committed_units(self.output), self.rows_of, self.at_start, time.monotonic() - self.t0)
        if self.report is not None:
            self.report(self.last)
        elif self.bar is not None:
            self.bar.n = self.last.rows_done
            self.bar.refresh()
        return self.last

    def _run(self) -> None:
        logged = time.monotonic()
        while not self.stop.wait(POLL_EVERY):
            try:
                progress = self.poll()
            except Exception as exc:  # noqa: BLE001 - a listing that failed (network): the next one may work
                log.debug("progress listing failed: %s", exc)
                continue
            if self.report is None and self.bar is None and time.monotonic() - logged >= LOG_EVERY:
                log.info("%s", progress.line())
                logged = time.monotonic()
