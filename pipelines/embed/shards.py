"""Committing a work unit's output, and reading back what committed shards say.

A unit commits `rejects/part-i-of-N.parquet` (when it rejected rows; a stale one is removed
otherwise) and then `embeddings/part-i-of-N.parquet`, each atomically; the shard's Parquet
metadata carries the unit's counts and the Runtime that made it. A committed shard therefore
implies committed rejects, and the driver can add up a run from the shards alone.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from encoders import storage
from encoders.stages import NO_CLOCK, StageClock
from index_builder.embeddings import (
    EMBEDDINGS,
    REJECTS,
    REJECTS_SCHEMA,
    arrow_to_vectors,
    embeddings_table,
    list_shards,
)
from pipelines.embed.outcomes import Embedded, Rejected
from pipelines.embed.rows import CLASSES, RowResult
from pipelines.embed.settings import Runtime
from pipelines.inputs import WorkUnit, carried_schema

log = logging.getLogger(__name__)

COUNTS_KEY = b"fusionindex.counts"
RUNTIME_KEY = b"fusionindex.runtime"
COUNT_NAMES = ("read", "embedded", "rejected", "skipped", "empty_caption", *CLASSES, "metadata_changed")
VECTORS = ("image_embedding", "text_embedding", "fused_embedding")


def shard_paths(output: str, name: str) -> tuple[str, str]:
    return storage.join(output, EMBEDDINGS, name), storage.join(output, REJECTS, name)


def commit_unit(
    output: str,
    name: str,
    unit: WorkUnit,
    results: list[RowResult],
    *,
    dim: int,
    read: int,
    skipped: int,
    runtime: Runtime,
    bad_file: str | None = None,
    clock: StageClock = NO_CLOCK,
    metadata_changed: int = 0,
) -> dict:
    """Write the unit's rejects (or remove stale ones), then its shard; return its counts.
    `clock` gets the stages: assemble (tables) and write.

    `metadata_changed`: unchanged rows whose carried values changed (counted, not re-embedded).

    Raises RuntimeError when read != embedded + rejected + skipped (a bug, never data).
    """
    with clock("assemble"):
        return _commit(output, name, unit, results, dim, read, skipped, runtime, bad_file, clock, metadata_changed)


def _commit(output, name, unit, results, dim, read, skipped, runtime, bad_file, clock, metadata_changed) -> dict:
    results = sorted(results, key=lambda r: r.row_index)
    good = [r for r in results if isinstance(r.outcome, Embedded)]
    bad = [r for r in results if isinstance(r.outcome, Rejected)]
    counts = {
        "read": read,
        "embedded": len(good),
        "rejected": len(bad),
        "skipped": skipped,
        "empty_caption": sum(1 for r in good if not r.outcome.has_text),
        **{kind: sum(1 for r in good if r.kind == kind) for kind in CLASSES},
        "metadata_changed": metadata_changed,
        "rejects_by_reason": dict(Counter(r.outcome.reason for r in bad)),
        "bad_file": None if bad_file is None else {"path": unit.path, "row_group": unit.row_group, "error": bad_file},
    }
    if read != len(good) + len(bad) + skipped or len(good) + len(bad) != len(results):
        raise RuntimeError(f"unit {unit.index} ({unit.path}): rows do not add up: {counts}")
    shard_path, rejects_path = shard_paths(output, name)
    carried = carried_schema(unit.path, unit.columns) if unit.columns.carry else pa.schema([])
    if bad:
        table = rejects_table(bad, unit.path, carried)
        with clock("write"):
            _write(rejects_path, table)
    else:
        with clock("write"):
            storage.remove(rejects_path)  # from an earlier run of this unit made another way
    metadata = {COUNTS_KEY: json.dumps(counts).encode(), RUNTIME_KEY: json.dumps(runtime.as_dict()).encode()}
    table = shard_table(good, dim, carried).replace_schema_metadata(metadata)
    with clock("write"):
        _write(shard_path, table)
    log.info("committed %s: %d embedded, %d rejected, %d skipped", name, len(good), len(bad), skipped)
    return counts


def committed_runtime(shard_path: str) -> Runtime | None:
    """The Runtime a committed shard records; None when it has none (or cannot be read)."""
    fs, p = storage.url_to_fs(shard_path)
    try:
        with fs.open(p, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata.metadata or {}
        return Runtime(**json.loads(meta[RUNTIME_KEY]))
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException):
        return None


def shard_table(good: list[RowResult], dim: int, carried: pa.Schema | None = None) -> pa.Table:
    """The shard table of the embedded rows, in the given order, with the `carried` columns last."""

    def stack(attr: str) -> np.ndarray:
        return np.stack([getattr(r.outcome, attr) for r in good]) if good else np.zeros((0, dim), np.float32)

    ids, captions, content = [r.id for r in good], [r.caption for r in good], [r.content for r in good]
    copied = [r.kind == "unchanged" for r in good]
    table = embeddings_table(ids, captions, stack("image"), stack("text"), stack("fused"), content, copied)
    return with_carried(table, good, carried)


def with_carried(table: pa.Table, results: list[RowResult], carried: pa.Schema | None) -> pa.Table:
    """`table` (one row per result) with the carried columns appended, typed as in the source."""
    for i, f in enumerate(carried or []):
        table = table.append_column(f, pa.array([r.carried[i] for r in results], f.type))
    return table


def previous_rows(shard_path: str, rows: list[int]) -> list[tuple[Embedded, bytes | None]]:
    """(vectors, content hash) of rows `rows` of a committed shard, in that order: what an unchanged
    row copies from the previous run (the float32 values as stored, so the copy is exact)."""
    table = storage.read_parquet(shard_path, [*VECTORS, "content_hash"]).take(pa.array(rows, pa.int64()))
    image, text, fused = (arrow_to_vectors(table.column(c))[0] for c in VECTORS)
    content = table.column("content_hash").to_pylist()
    return [(Embedded(image[i], text[i], fused[i], bool(np.any(text[i] != 0))), content[i]) for i in range(len(rows))]


def rejects_table(bad: list[RowResult], source: str, carried: pa.Schema | None = None) -> pa.Table:
    rows = [
        {
            "id": r.id,
            "source_file": source,
            "row_index": r.row_index,
            "reason": r.outcome.reason,
            "message": r.outcome.message,
        }
        for r in bad
    ]
    table = pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)
    if carried is not None and len(carried) and any(len(r.carried) != len(carried) for r in bad):
        # rows that could not be read (an unreadable row group) carry nothing: nulls
        bad = [r if len(r.carried) == len(carried) else replace(r, carried=(None,) * len(carried)) for r in bad]
    return with_carried(table, bad, carried)


def _write(path: str, table: pa.Table) -> None:
    """Write a shard or rejects table. Vector columns are written plain: snappy and dictionary
    encoding gain nothing on float vectors and made shards 1.5x bigger and 10x slower to write."""
    vectors = [c for c in table.column_names if c.endswith("_embedding")]
    with storage.atomic_open(path) as fh:
        pq.write_table(
            table,
            fh,
            compression={c: "NONE" if c in vectors else "SNAPPY" for c in table.column_names},
            use_dictionary=[c for c in table.column_names if c not in vectors],
            write_statistics=[c for c in table.column_names if c not in vectors],
        )


def sum_counts(output: str) -> tuple[dict, list[dict], list[dict]]:
    """Add up the committed shards' counts; list bad files and the distinct Runtimes used."""
    total: Counter = Counter()
    reasons: Counter = Counter()
    bad_files, runtimes = [], []
    for shard in list_shards(output):
        counts = json.loads(shard.metadata[COUNTS_KEY])
        reasons.update(counts.pop("rejects_by_reason"))
        bad = counts.pop("bad_file", None)
        if bad:
            bad_files.append(bad)
        total.update(counts)
        runtime = json.loads(shard.metadata.get(RUNTIME_KEY, b"null"))
        if runtime not in runtimes:
            runtimes.append(runtime)
    summed = {k: int(total[k]) for k in COUNT_NAMES}
    return {**summed, "rejects_by_reason": dict(sorted(reasons.items()))}, bad_files, runtimes
