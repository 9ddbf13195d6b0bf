"""The layout of a nightly ROOT (local or any fsspec URL), its run record and its atomic publish.

    ROOT/LATEST                the published run (index_builder.records.Latest), written last
    ROOT/runs/<run id>/        embeddings/ rejects/ manifest.json index/ report.html report.json run.json
    ROOT/.lock                 the running reindex (see lock.py)

Publishing protocol: a run directory is complete (every file committed, run.json final) before
LATEST is written; LATEST is one small object written atomically (locally a rename; on object
stores a server-side copy of a fully uploaded temporary, which readers see whole or not at all).
A run directory is never changed after LATEST names it, so a reader that read LATEST can read the
run without locking. `--keep N` removes older runs, never the one LATEST names.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from encoders import storage
from index_builder.records import INDEX, RUNS, Latest, ModelSpec, Part, Recall, Record, RunCounts, Training
from index_builder.records.base import optional

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
__all__ = ["INDEX", "RUNS", "RUN_JSON", "Latest", "RunIndex", "RunRecord"]


def outcome() -> Any:
    """A field of a finished run: absent from run.json while the run is running."""
    return field(default=None, metadata={"outcome": True})


@dataclass(frozen=True)
class RunIndex(Part):
    """What run.json keeps of the index manifest."""

    factory: str | None = None
    ntotal: int = 0
    nprobe: int | None = None
    recall: Recall = field(default_factory=Recall)
    training: Training = field(default_factory=Training)


@dataclass(frozen=True)
class RunRecord(Record):
    """RUN/run.json: written when a night starts (`status` running: the first six fields) and again
    when it ends (published or rejected: every field). Unversioned files are version 1."""

    FILE: ClassVar[str] = RUN_JSON
    KIND: ClassVar[str] = "fusionindex.run"
    VERSION: ClassVar[int] = 1
    WRITTEN_BY: ClassVar[str] = "not a nightly run directory; `fusionindex reindex` writes it"

    run: str = ""  # the run id
    status: str = "running"  # running | published | rejected
    inputs_key: str | None = None  # run.inputs_key: the settings and input files it computes from
    previous: str | None = None  # the run id LATEST named when it started
    started_at: str | None = None
    settings: dict | None = None
    duplicates: dict | None = optional()  # with --duplicates: index_duplicates.write_duplicates' counts
    counts: RunCounts | None = outcome()
    rejects_by_reason: dict | None = outcome()
    gates: list | None = outcome()  # Gate.as_dict() of each
    failed_gates: list | None = outcome()
    index: RunIndex | None = outcome()
    canary: dict | None = outcome()  # None: no canary queries
    model: ModelSpec | None = outcome()
    runtime: dict | list | None = outcome()
    finished_at: str | None = outcome()
    stages: dict | None = outcome()  # name -> {"seconds", figures...}
    seconds: float | None = optional()  # the stages' sum, once the report is written too
    format_version: int = optional(1)

    def _omits(self, f: dataclasses.Field, value: Any) -> bool:
        if f.metadata.get("outcome"):
            return self.status == "running"  # a resumed night's record was read without them
        return super()._omits(f, value)


def run_id_key(run_id: str) -> tuple[str, int]:
    """Sort key of a run id: its second, then its suffix as a number (-10 after -2; none = 1)."""
    base, _, n = run_id.partition("-")
    return base, int(n) if n.isdigit() else 1


def new_run_id(now: datetime, taken: set[str]) -> str:
    """A UTC id (20261127T170501Z) that sorts after every id of the same second in `taken`.

    Within one second the suffix counts up from the highest taken (-2, -3, ...), never
    refilling a pruned id, so the newest run is always last in `run_ids`.
    """
    base = now.strftime("%Y%m%dT%H%M%SZ")
    same = [n for second, n in map(run_id_key, taken) if second == base]
    return f"{base}-{max(same) + 1}" if same else base


def run_path(root: str, run_id: str) -> str:
    return storage.join(root, RUNS, run_id)


def run_ids(root: str) -> list[str]:
    """Run ids under ROOT/runs, oldest first."""
    return sorted(storage.listdir(storage.join(root, RUNS)), key=run_id_key)


def read_run(root: str, run_id: str) -> RunRecord | None:
    """The run.json of a run, or None where the run has none (yet)."""
    return RunRecord.load_if_any(run_path(root, run_id))


def publish(root: str, latest: Latest) -> Latest:
    """Point LATEST at `latest.run` (the run must be complete); returns what was written."""
    latest.save(root)
    return latest


def prune(root: str, keep: int, protect: set[str]) -> list[str]:
    """Remove all but the newest `keep` runs, never one in `protect`; returns the removed ids."""
    ids = run_ids(root)
    doomed = [r for r in ids[: max(0, len(ids) - keep)] if r not in protect]
    for run_id in doomed:
        storage.remove(run_path(root, run_id), recursive=True)
        log.info("pruned run %s", run_id)
    return doomed
