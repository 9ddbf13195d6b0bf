"""Writing a source's rows: img2dataset Parquet shards in key order, the split of each key."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable

from encoders import storage
from pipelines.datasets import img2dataset
from pipelines.datasets.catalogue.rows import Candidate, Entry, SkipItem

log = logging.getLogger(__name__)

IMAGE_COLUMN = {"emoji": "png", "openclipart": "jpg"}
EXTRA_COLUMNS = ("query", "split")  # written after the caption, see img2dataset.schema
PROGRESS_EVERY = 1000


def split_of(key: str) -> str:
    """'train' / 'val' / 'test' (80/10/10) from the sha256 of `key`; pure and stable across runs."""
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if h < 80 else "val" if h < 90 else "test"


def shard_path(output: str, source: str, index: int) -> str:
    return storage.join(output, f"{source}-{index:05d}.parquet")


def record(key: str, entry: Entry, source: str) -> dict:
    """The Parquet row (img2dataset columns + query, split) of one built entry."""
    return img2dataset.record(
        key,
        entry.caption,
        IMAGE_COLUMN[source],
        entry.data,
        size=entry.size,
        original=entry.original,
        query=entry.query,
        split=split_of(key),
    )


def write_shard(path: str, records: list[dict], source: str) -> None:
    """Write one shard atomically (a reader never sees a partial file)."""
    img2dataset.write(path, records, IMAGE_COLUMN[source], extra=EXTRA_COLUMNS)


def remove_stale_shards(output: str, source: str, keep: int) -> None:
    """Delete `{source}-NNNNN.parquet` files numbered >= `keep` left by an earlier, larger run."""
    pattern = re.compile(rf"{re.escape(source)}-(\d{{5}})\.parquet")
    for name in storage.listdir(output):
        m = pattern.fullmatch(name)
        if m and int(m.group(1)) >= keep:
            log.info("removing stale shard %s", name)
            storage.remove(storage.join(output, name))


def write_source(
    output: str, source: str, candidates: Iterable[Candidate], *, limit: int | None, shard_rows: int
) -> dict:
    """Build `candidates` (already in key order) into shards of `shard_rows`, stopping after `limit` rows.

    Returns {"rows", "shards", "by_split", "skipped"} for this source.
    """
    shards: list[str] = []
    by_split = {"train": 0, "val": 0, "test": 0}
    rows = skipped = 0
    buffer: list[dict] = []

    def flush() -> None:
        path = shard_path(output, source, len(shards))
        write_shard(path, buffer, source)
        shards.append(path)
        buffer.clear()

    for cand in candidates:
        if limit is not None and rows >= limit:
            break
        try:
            buffer.append(record(cand.key, cand.build(), source))
        except SkipItem as exc:
            skipped += 1
            log.warning("%s: skipping %s: %s", source, cand.key, exc)
            continue
        rows += 1
        by_split[buffer[-1]["split"]] += 1
        if rows % PROGRESS_EVERY == 0:
            log.info("%s: %d images", source, rows)
        if len(buffer) >= shard_rows:
            flush()
    if buffer or not shards:
        flush()  # a source with no rows still gets one (empty) shard, so its schema is visible
    remove_stale_shards(output, source, len(shards))
    log.info("%s: %d rows in %d shards, %d skipped", source, rows, len(shards), skipped)
    return {"rows": rows, "shards": shards, "by_split": by_split, "skipped": skipped}
