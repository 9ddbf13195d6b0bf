"""Labelled items (id, image bytes, caption, query) of a catalogue split, read through the one
Parquet reader (pipelines.inputs), for fine-tuning, evaluation and reports.

Rows are used when their status is `success` and, where the files have a split column, their
split is the one asked for. Rows left out for any other reason (null id, no image bytes) are
counted and logged, never silently dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from encoders.errors import InputError
from encoders.text import has_caption
from pipelines.inputs import SUCCESS, Columns, iter_unit, plan_inputs

log = logging.getLogger(__name__)

LABELLED = Columns(query="query", split="split")  # the catalogue layout: img2dataset + query, split


@dataclass(frozen=True)
class Item:
    id: str
    image: bytes
    caption: str | None
    query: str | None


def load_items(
    patterns: list[str], split: str | None, columns: Columns = LABELLED, limit: int | None = None
) -> list[Item]:
    """Usable rows of `split` (None: every split), sorted by id, at most `limit`."""
    plan = plan_inputs(patterns, columns)
    items: list[Item] = []
    left_out: Counter = Counter()
    for unit in plan.units:
        has_split = unit.columns.split is not None
        for rows in iter_unit(unit):
            for r in rows:
                if r.status != SUCCESS or (split is not None and has_split and r.split != split):
                    continue  # not part of what was asked for
                if r.id is None:
                    left_out["null id"] += 1
                elif r.image is None:
                    left_out["no image bytes"] += 1
                else:
                    items.append(Item(r.id, r.image, r.caption, r.query))
    if left_out:
        log.warning(
            "%s: left out %s", ", ".join(patterns), ", ".join(f"{n} rows with {why}" for why, n in left_out.items())
        )
    items.sort(key=lambda it: it.id)
    if not items:
        raise InputError(f"no usable rows{f' of split {split!r}' if split else ''} in {', '.join(patterns)}")
    return items[:limit] if limit else items


def unique_query_rows(items: list[Item]) -> list[int]:
    """Rows whose query text no other item shares: a query with several right answers has no
    single target to rank (openclipart titles are often collection names)."""
    counts = Counter(it.query.strip().lower() for it in items if has_caption(it.query))
    return [i for i, it in enumerate(items) if has_caption(it.query) and counts[it.query.strip().lower()] == 1]
