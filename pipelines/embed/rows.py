"""Row classification, before any model runs: pure functions of the rows read.

Every row read ends as exactly one of: skipped (status not `success`, counted), rejected here
(null id, later copy of a duplicate id, an image stored only by path), or handed to the model
(which embeds or rejects it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.embed.outcomes import Outcome, Rejected
from pipelines.inputs import SUCCESS, Row


@dataclass(frozen=True)
class RowResult:
    row_index: int
    id: str | None
    caption: str | None
    outcome: Outcome


# row index -> (file of the first copy, row index there)
FirstCopies = dict[int, tuple[str, int]]


@dataclass
class Classified:
    todo: list[Row]  # rows for the model
    decided: list[RowResult]  # rejected before the model
    skipped: int  # status not `success`


def classify(rows: Sequence[Row], first_copies: FirstCopies) -> Classified:
    """Split `rows` into rows to embed, rows rejected here, and the skipped count."""
    out = Classified([], [], 0)
    for row in rows:
        if row.status != SUCCESS:
            out.skipped += 1
            continue
        rejected = _reject(row, first_copies)
        if rejected is None:
            out.todo.append(row)
        else:
            out.decided.append(RowResult(row.row_index, row.id, row.caption, rejected))
    return out


def _reject(row: Row, first_copies: FirstCopies) -> Rejected | None:
    if row.id is None:
        return Rejected("null_id", "id is null")
    if row.row_index in first_copies:
        path, first_row = first_copies[row.row_index]
        return Rejected("duplicate_id", f"id {row.id!r} first seen in {path} row {first_row}")
    if row.image is None and row.image_path is not None:
        return Rejected(
            "image_path_only",
            f"the image struct holds only a path ({row.image_path!r}), no bytes; re-save the dataset with the "
            "images embedded (datasets: cast the column to Image() and save with embed_external_files)",
        )
    return None


def later_duplicates(element: tuple[str, list[tuple[int, int]]]):
    """(id, [(unit, row), ...]) -> (unit, (row, first unit, first row)) for all but the first occurrence."""
    _, places = element
    places = sorted(places)
    for unit, row in places[1:]:
        yield unit, (row, places[0][0], places[0][1])
