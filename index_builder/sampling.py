"""What a build reads of the shards: the training sample, the held-out vectors and recall queries,
today's fresh vectors for the drift test, and the cache that lets the passes share one read.

Sample rows are numbered by global faiss id: valid rows (with a vector) in shard order, the
numbering the adders use (index_builder.adding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from encoders import storage
from encoders.errors import InputError
from index_builder.embeddings import Shard, arrow_to_vectors, carried_columns, read_vectors_lean, vector_column
from index_builder.training import TrainingSample

log = logging.getLogger(__name__)

HELD_OUT = 10_000  # vectors kept out of training to measure the codec's errors (the drift baseline)
MIN_SPARE = 1_000  # fewer vectors beyond the training sample than this: hold out a tenth of the data instead
FRESH_SAMPLE = 10_000  # vectors computed today (not copied) on which a reused template is tested


def read_vectors(shard: Shard, vector: str) -> tuple[np.ndarray, np.ndarray]:
    """([n, d] float32 vectors, valid mask [n]) of one shard; text vectors are all-zero without caption."""
    return arrow_to_vectors(storage.read_parquet(shard.path, [vector_column(vector)]).column(0))


class ShardCache:
    """Shard tables (id, caption, vector) read once and kept, when all of them fit in `budget_bytes`.

    Sampling, adding and measuring recall each walk every shard; below the budget the build
    reads each shard once (like a plain in-memory faiss script), above it streams every pass and
    keeps nothing, so that a build larger than the budget holds one shard at a time (a cache
    filled up to the budget would add the whole budget to the peak memory of the largest builds).
    """

    def __init__(self, vector: str, budget_bytes: int, shards: list[Shard] | None = None, dim: int | None = None):
        self.vector = vector
        # ids.parquet's columns: id, caption and the embed run's carried columns (its shards' extra columns)
        self.label_columns = ["id", "caption", *(carried_columns(shards[0].path) if shards else [])]
        self.columns = [*self.label_columns, vector_column(vector)]
        need = sum(s.num_rows for s in shards) * (dim * 4 + 64) if shards is not None and dim else 0
        self.budget = budget_bytes if need <= budget_bytes else 0
        self.used = 0
        if self.budget == 0 and budget_bytes:
            log.info("%d MiB of vectors exceed the %d MiB cache: streaming the shards on every pass",
                     need >> 20, budget_bytes >> 20)  # fmt: skip
        self.kept: dict[str, pa.Table] = {}
        self.labels: dict[str, pa.Table] = {}  # label_columns of the rows with a vector

    def table(self, shard: Shard) -> pa.Table:
        if shard.path in self.kept:
            return self.kept[shard.path]
        if not self.budget:  # streaming: hand back what decoding the previous shard left in Arrow's pool
            pa.default_memory_pool().release_unused()
        table = storage.read_parquet(shard.path, self.columns)
        if self.used + table.nbytes <= self.budget:
            self.kept[shard.path] = table
            self.used += table.nbytes
        return table

    def vectors(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        if self.budget or shard.path in self.kept:
            table = self.table(shard)
            x, valid = arrow_to_vectors(table.column(self.columns[-1]))
        else:  # streaming: decoded in batches, no table (embeddings.read_vectors_lean)
            pa.default_memory_pool().release_unused()
            table, (x, valid) = None, read_vectors_lean(shard.path, self.columns[-1])
        if shard.path not in self.labels:  # ids.parquet's rows, kept from the first pass (no pass of their own)
            mask = pa.array(valid)
            table = storage.read_parquet(shard.path, self.label_columns) if table is None else table
            self.labels[shard.path] = table.select(self.label_columns).filter(mask)
        return x, valid


def fresh_sample(shards: list[Shard], cache: ShardCache, size: int, seed: int) -> tuple[np.ndarray, int, int]:
    """(up to `size` vectors, seeded uniform sample, of rows whose vectors were computed rather
    than copied from a previous run: vectors a reused template has never seen; the number of
    computed rows; the number of copied rows)."""
    parts, copied_rows = [], 0
    for shard in shards:
        names = storage.read_schema(shard.path).names
        copied = (
            storage.read_parquet(shard.path, ["copied"]).column(0).to_numpy(zero_copy_only=False)
            if "copied" in names
            else np.zeros(shard.num_rows, bool)
        )
        x, valid = cache.vectors(shard)
        copied = copied.astype(bool)
        parts.append(x[valid & ~copied])
        copied_rows += int((valid & copied).sum())
    fresh = np.concatenate(parts)
    fresh_rows = len(fresh)
    if len(fresh) > size:
        fresh = fresh[np.sort(np.random.default_rng(seed).choice(len(fresh), size, replace=False))]
    return fresh, fresh_rows, copied_rows


def sample_training_set(
    shards: list[Shard], vector: str, size: int, seed: int, cache: ShardCache | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A seeded uniform sample of `size` valid vectors across all shards.

    Returns (vectors [s, d], their global faiss ids [s], valid count per shard). Global ids
    number the valid rows in shard order, the same numbering `add_shard` uses.
    """
    rng = np.random.default_rng(seed)
    total = sum(s.num_rows for s in shards)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out, ids, valid_counts = None, np.empty(len(chosen), np.int64), []
    row0 = id0 = filled = 0
    for shard in shards:
        x, valid = cache.vectors(shard) if cache else read_vectors(shard, vector)
        if out is None:  # filled in place: concatenating parts would hold the sample twice at its peak
            out = np.empty((len(chosen), x.shape[1]), np.float32)
        local = chosen[(chosen >= row0) & (chosen < row0 + shard.num_rows)] - row0
        local = local[valid[local]]
        out[filled : filled + len(local)] = x[local]
        ids[filled : filled + len(local)] = id0 + np.cumsum(valid)[local] - 1
        filled += len(local)
        valid_counts.append(int(valid.sum()))
        row0 += shard.num_rows
        id0 += valid_counts[-1]
    return out[:filled], ids[:filled], valid_counts


def sample_sizes(total: int, train_size: int) -> tuple[int, int]:
    """(training vectors, held-out vectors) of a build over `total` rows asked to train on
    `train_size`: HELD_OUT beyond the training sample when MIN_SPARE are left, else a tenth."""
    spare = total - train_size  # held-out vectors measure the codec on data it did not train on
    held_out = min(HELD_OUT, spare) if spare >= MIN_SPARE else min(HELD_OUT, total // 10)
    return min(train_size, total - held_out), held_out


@dataclass
class Samples:
    """The vectors a build trains on and measures with, drawn once (`draw`)."""

    train: TrainingSample  # the training vectors (let go once the last template is trained)
    n_train: int
    held_out: int  # 0: too few vectors, the codec's errors and the queries come from the training sample
    xh: np.ndarray  # the held-out vectors (the training sample without any): the drift baseline's
    queries: np.ndarray  # recall queries, drawn from xh
    query_ids: np.ndarray  # their global faiss ids
    valid_counts: list[int]  # rows with a vector, per shard

    @property
    def n_valid(self) -> int:
        return sum(self.valid_counts)


def draw(
    shards: list[Shard], cache: ShardCache, vector: str, sizes: tuple[int, int], seed: int, queries: int
) -> Samples:
    """One seeded sample of sizes[0] + sizes[1] valid vectors, shuffled and split into the training
    vectors and the held-out ones, and `queries` recall queries drawn from the held-out ones.
    InputError when no row has a `vector` vector."""
    train_size, held_out = sizes
    sample, sample_ids, valid_counts = sample_training_set(shards, vector, train_size + held_out, seed, cache)
    if sum(valid_counts) == 0:
        raise InputError(f"no row has a {vector} vector (e.g. --vector text with no captions)")
    # shuffled in place (the same permutation for both: it depends on the length and the seed only),
    # then split into views: copies would hold the training set twice
    np.random.default_rng(seed + 2).shuffle(sample)
    np.random.default_rng(seed + 2).shuffle(sample_ids)
    xt, xt_ids = sample[: len(sample) - held_out], sample_ids[: len(sample) - held_out]
    if held_out:  # the baseline and the recall queries on vectors the codec did not train on
        # copies (held_out rows): the training sample is freed once the last template is trained
        xh, xh_ids = sample[len(sample) - held_out :].copy(), sample_ids[len(sample) - held_out :].copy()
    else:
        xh, xh_ids = xt, xt_ids
    pick = np.sort(np.random.default_rng(seed + 1).choice(len(xh), min(queries, len(xh)), replace=False))
    return Samples(TrainingSample(xt), len(xt), held_out, xh, xh[pick], xh_ids[pick], valid_counts)
