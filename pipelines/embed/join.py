"""The join by id, one element at a time: what the Beam and the Spark drivers both run around their shuffle.

    today_keys(unit)         -> (id, TodayRow as a tuple) for each row that would be embedded
    previous_keys(shards, i) -> (id, PreviousRow as a tuple) for each row of a previous run's shard
    decide_grouped(id, today tuples, previous tuples) -> (unit, RowPlan as a tuple) | ("deleted", 1)

Elements cross the shuffle as plain tuples (both engines encode those cheaply); `decide`
(rows.py) sees its dataclasses. No engine is imported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import astuple
from itertools import repeat

from encoders import storage
from encoders.errors import InputError
from index_builder.embeddings import carried_columns
from pipelines.embed.rows import PreviousRow, TodayRow, caption_hash, carried_hash, content_hash, decide
from pipelines.inputs import SUCCESS, WorkUnit, iter_unit, read_ids

DELETED = "deleted"


def today_keys(unit: WorkUnit, *, skip_bad_files: bool, hashes: bool) -> list[tuple[str, tuple]]:
    """(id, TodayRow tuple) for every row of `unit` with success status and an id. With `hashes`
    the image bytes and caption are hashed, for the comparison with a previous run. An unreadable
    row group gives no keys under `skip_bad_files` (the unit worker rejects it whole)."""
    try:
        if hashes:
            carry = unit.columns.carry
            return [
                (
                    r.id,
                    (
                        unit.index,
                        r.row_index,
                        content_hash(r.image),
                        caption_hash(r.caption),
                        carried_hash(carry, r.carried),
                    ),
                )
                for rows in iter_unit(unit)
                for r in rows
                if r.status == SUCCESS and r.id is not None
            ]
        return [(row_id, (unit.index, row, None, b"")) for row, row_id in read_ids(unit)]
    except InputError:
        if not skip_bad_files:
            raise
        return []


def previous_keys(shards: tuple[str, ...], shard: int) -> Iterator[tuple[str, tuple]]:
    """(id, PreviousRow tuple) for each row of the previous run's shard number `shard`."""
    carry = carried_columns(shards[shard])
    table = storage.read_parquet(shards[shard], ["id", "caption", "content_hash", *carry])
    ids, captions, content = (table.column(c).to_pylist() for c in ("id", "caption", "content_hash"))
    carried = zip(*(table.column(c).to_pylist() for c in carry)) if carry else repeat(())
    for row, (row_id, caption, chash, values) in enumerate(zip(ids, captions, content, carried)):
        yield row_id, (shard, row, chash, caption_hash(caption), carried_hash(carry, values))


def decide_grouped(
    today: Iterable[tuple], previous: Iterable[tuple], *, reject_duplicates: bool, comparable: bool
) -> Iterator[tuple]:
    """`decide` over one id's grouped tuples: (unit, RowPlan tuple) or (DELETED, 1). Previous rows
    are taken in (shard, row) order, so the verdict does not depend on the shuffle's order."""
    for key, value in decide(
        [TodayRow(*t) for t in today],
        sorted((PreviousRow(*p) for p in previous), key=lambda p: (p.shard, p.row)),
        reject_duplicates=reject_duplicates,
        comparable=comparable,
    ):
        yield (DELETED, value) if key == DELETED else (key, astuple(value))
