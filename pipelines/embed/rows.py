"""Row classification, before any model runs: pure functions of the rows read and the join's plans.

Every row read ends as exactly one of: skipped (status not `success`, counted), rejected here
(null id, later copy of a duplicate id, an image stored only by path), reused (unchanged since
the previous run: its vectors are copied), or handed to the model (which embeds or rejects it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from pipelines.embed.outcomes import Outcome, Rejected
from pipelines.inputs import SUCCESS, Row


@dataclass(frozen=True)
class RowResult:
    row_index: int
    id: str | None
    caption: str | None
    outcome: Outcome
    content: bytes | None = None  # content_hash of the image bytes, for the shard
    kind: str = "new"  # new | changed | unchanged (see CLASSES), against the previous run
    carried: tuple = ()  # the row's --carry-columns values (rejected rows too: an operator finds the item)


@dataclass
class Classified:
    todo: list[tuple[Row, str]]  # rows for the model, with their class (new or changed)
    reuse: list[tuple[Row, tuple[int, int]]]  # unchanged rows: (row, (previous shard, row there))
    decided: list[RowResult]  # rejected before the model
    skipped: int  # status not `success`
    metadata_changed: int = 0  # unchanged rows whose carried values changed (copied vectors, today's values)


def classify(rows: Sequence[Row], plans: dict[int, RowPlan], unit_paths: Sequence[str]) -> Classified:
    """Split `rows` into rows to embed, rows to copy from the previous run, rows rejected here,
    and the skipped count. `plans`: row index -> the join's RowPlan; `unit_paths` names files."""
    out = Classified([], [], [], 0)
    for row in rows:
        if row.status != SUCCESS:
            out.skipped += 1
            continue
        plan = plans.get(row.row_index)
        rejected = _reject(row, plan, unit_paths)
        if rejected is not None:
            out.decided.append(RowResult(row.row_index, row.id, row.caption, rejected, carried=row.carried))
        elif plan is not None and plan.kind == "unchanged":
            out.reuse.append((row, plan.ref))
            out.metadata_changed += plan.metadata_changed
        else:
            out.todo.append((row, "changed" if plan is not None else "new"))
    return out


def _reject(row: Row, plan: RowPlan | None, unit_paths: Sequence[str]) -> Rejected | None:
    if row.id is None:
        return Rejected("null_id", "id is null")
    if plan is not None and plan.kind == "duplicate":
        first_unit, first_row = plan.ref
        return Rejected("duplicate_id", f"id {row.id!r} first seen in {unit_paths[first_unit]} row {first_row}")
    if row.image is None and row.image_path is not None:
        return Rejected(
            "image_path_only",
            f"the image struct holds only a path ({row.image_path!r}), no bytes; re-save the dataset with the "
            "images embedded (datasets: cast the column to Image() and save with embed_external_files)",
        )
    return None


# --------------------------------------------------------------------------- incremental runs
# A row of today's input and a row of the previous run meet in a join by id. A row is
# `unchanged` when the previous run embedded the same id with the same image bytes and caption
# under the same model and fusion; its vectors are copied. Otherwise it is `changed` (the id was
# there) or `new` (it was not). Previous ids with no success row today are `deleted`.

CLASSES = ("new", "changed", "unchanged")


def content_hash(data: bytes | None) -> bytes | None:
    """128-bit xxh3 of the encoded image bytes (not a security property: equal bytes, equal hash).
    hashlib's fastest (md5) costs ~65x more per image, and every row of a reindex is hashed."""
    return None if data is None else xxhash.xxh3_128_digest(data)


def carried_hash(names: Sequence[str], values: Sequence) -> bytes:
    """A short hash of a row's carried columns, names and values (JSON; values JSON has no type
    for, such as dates and decimals, as text)."""
    return xxhash.xxh3_64_digest(json.dumps([list(names), list(values)], default=str).encode())


def caption_hash(caption: str | None) -> bytes:
    """A short hash of the caption as stored (None and "" differ)."""
    return b"\x00" if caption is None else xxhash.xxh3_64_digest(caption.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class TodayRow:
    unit: int
    row: int  # row index within its file
    content: bytes | None
    caption: bytes
    carried: bytes = b""  # carried_hash: a change alone keeps the vectors (counted as metadata_changed)


@dataclass(frozen=True)
class PreviousRow:
    shard: int  # index into the previous run's shard list
    row: int  # row within that shard
    content: bytes | None
    caption: bytes
    carried: bytes = b""


@dataclass(frozen=True)
class RowPlan:
    """What a unit is told about one of its rows: `duplicate` (ref: first unit, first row),
    `unchanged` (ref: previous shard, row there: copy its vectors) or `changed` (embed it).
    Rows without a plan are new."""

    row: int
    kind: str
    ref: tuple[int, int] | None = None
    metadata_changed: bool = False  # unchanged, but its carried values differ from the previous run's


def decide(today: list[TodayRow], previous: list[PreviousRow], *, reject_duplicates: bool, comparable: bool):
    """The join's verdict for one id: yields (unit, RowPlan) for today's rows that need one, and
    ("deleted", 1) when the previous run had the id and today has no row for it.

    `comparable`: the previous run used the same model weights and fusion, so equal inputs give
    equal vectors; otherwise every row of an id seen before is `changed`.
    """
    if not today:
        if previous:
            yield "deleted", 1
        return
    today = sorted(today, key=lambda t: (t.unit, t.row))
    first = today[0]
    for t in today[1:] if reject_duplicates else ():
        yield t.unit, RowPlan(t.row, "duplicate", (first.unit, first.row))
    for t in today[:1] if reject_duplicates else today:
        if not previous:
            continue
        same = next((p for p in previous if comparable and (p.content, p.caption) == (t.content, t.caption)), None)
        if same is not None and t.content is not None:
            yield t.unit, RowPlan(t.row, "unchanged", (same.shard, same.row), same.carried != t.carried)
        else:
            yield t.unit, RowPlan(t.row, "changed")
