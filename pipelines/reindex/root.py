"""The layout of a nightly ROOT (local or any fsspec URL) and its atomic publish.

    ROOT/LATEST                {"run": "runs/<run id>", ...}: the published run, written last
    ROOT/runs/<run id>/        embeddings/ rejects/ manifest.json index/ report.html report.json run.json
    ROOT/.lock                 the running reindex (see lock.py)

Publishing protocol: a run directory is complete (every file committed, run.json final) before
LATEST is written; LATEST is one small object written atomically (locally a rename; on object
stores a server-side copy of a fully uploaded temporary, which readers see whole or not at all).
A run directory is never changed after LATEST names it, so a reader that read LATEST can read the
run without locking. `--keep N` removes older runs, never the one LATEST names.
"""

from __future__ import annotations

import logging
from datetime import datetime

from encoders import storage
from index_builder.records import Latest

log = logging.getLogger(__name__)

RUNS = "runs"
LATEST = "LATEST"
RUN_JSON = "run.json"
INDEX = "index"


def new_run_id(now: datetime, taken: set[str]) -> str:
    """A sortable UTC id (20261127T170501Z); a suffix when the second is already taken."""
    base = now.strftime("%Y%m%dT%H%M%SZ")
    run_id, n = base, 1
    while run_id in taken:
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def run_path(root: str, run_id: str) -> str:
    return storage.join(root, RUNS, run_id)


def run_ids(root: str) -> list[str]:
    """Run ids under ROOT/runs, oldest first."""
    return sorted(storage.listdir(storage.join(root, RUNS)))


def read_latest(root: str) -> dict | None:
    """ROOT/LATEST as a dict, or None before the first publish."""
    path = storage.join(root, LATEST)
    return storage.read_json(path) if storage.exists(path) else None


def read_run(root: str, run_id: str) -> dict | None:
    path = storage.join(run_path(root, run_id), RUN_JSON)
    return storage.read_json(path) if storage.exists(path) else None


def publish(root: str, run_id: str, record: dict) -> dict:
    """Point LATEST at `run_id` (the run must be complete); returns what was written."""
    latest = {"run": f"{RUNS}/{run_id}", **record}
    storage.write_json(storage.join(root, LATEST), latest)
    return latest


def prune(root: str, keep: int, protect: set[str]) -> list[str]:
    """Remove all but the newest `keep` runs, never one in `protect`; returns the removed ids."""
    ids = run_ids(root)
    doomed = [r for r in ids[: max(0, len(ids) - keep)] if r not in protect]
    for run_id in doomed:
        storage.remove(run_path(root, run_id), recursive=True)
        log.info("pruned run %s", run_id)
    return doomed


def resolve_index(path: str) -> str:
    """The index directory `path` stands for: itself, or (a ROOT) the index of the run LATEST names."""
    return Latest.index_of(path)
