"""ROOT/LATEST of a nightly root: which run is published, and the index a ROOT stands for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from encoders import storage
from index_builder.records.base import Part, Record, optional

RUNS = "runs"
INDEX = "index"


@dataclass(frozen=True)
class RunCounts(Part):
    """Rows of a nightly run: `new`, `changed`, `unchanged` split the embedded rows by comparison with
    the published run; `deleted`: its ids with no success row today."""

    read: int = 0
    embedded: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    metadata_changed: int = 0  # unchanged rows whose carried columns changed
    deleted: int = 0
    rejected: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class Latest(Record):
    """ROOT/LATEST: the published run of a nightly ROOT, written last and atomically (readers need no
    lock). Unversioned files are version 1; `format_version` is written from version 2 on."""

    FILE: ClassVar[str] = "LATEST"
    KIND: ClassVar[str] = "fusionindex.latest"
    VERSION: ClassVar[int] = 1
    WRITTEN_BY: ClassVar[str] = "nothing published yet; run `fusionindex reindex --root ROOT`"

    run: str = ""  # runs/<run id>
    published_at: str | None = None
    counts: RunCounts = field(default_factory=RunCounts)
    model: str | None = None
    index: str | None = None  # runs/<run id>/index
    format_version: int = optional(1)

    @property
    def run_id(self) -> str:
        return self.run.rsplit("/", 1)[-1]

    @staticmethod
    def index_of(path: str) -> str:
        """The index directory `path` stands for: itself, or (a nightly ROOT) the index of the run
        its LATEST names."""
        latest = Latest.load_if_any(path)
        return storage.join(path, latest.run, INDEX) if latest else path
