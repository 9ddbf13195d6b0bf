"""The embeddings directory contract shared by `embed` (writer) and `build-index` (reader).

    DIR/embeddings/part-SSSSS-of-NNNNN.parquet   id, caption, image_embedding,
                                                 text_embedding, fused_embedding, content_hash,
                                                 copied
    DIR/rejects/part-SSSSS-of-NNNNN.parquet      id, source_file, row_index, reason, message
    DIR/manifest.json                            written last, only on success

Vectors are fixed-size lists of float32, L2-normalised, never null. `text_embedding` is
all zeros for rows without a caption (their fused vector is then the image vector): a zero
vector scores 0 against any query, and null fixed-size lists do not survive a Parquet round
trip in pyarrow 25 ("Expected all lists to be of size=d"). `content_hash` (16 bytes, xxh3-128
of the encoded image) lets a nightly reindex tell unchanged rows; `copied` is true where the
vectors were copied from the previous run instead of computed (the drift test looks at the
others). Readers select columns by name, so shards written before these existed still read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from encoders import storage
from encoders.errors import InputError
from encoders.options import check_choice

EMBEDDINGS = "embeddings"
REJECTS = "rejects"
MANIFEST = "manifest.json"
VECTOR_COLUMNS = {"fused": "fused_embedding", "image": "image_embedding", "text": "text_embedding"}
_SHARD = re.compile(r"^part-(\d{5,})-of-(\d{5,})\.parquet$")


def shard_name(index: int, total: int) -> str:
    return f"part-{index:05d}-of-{total:05d}.parquet"


def shard_index(name: str) -> int | None:
    """The unit index a shard file name carries ('part-00003-of-00010.parquet' -> 3), else None."""
    match = _SHARD.match(name)
    return int(match.group(1)) if match else None


def embeddings_schema(dim: int) -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            ("id", pa.string()),
            ("caption", pa.string()),
            ("image_embedding", vec),
            ("text_embedding", vec),
            ("fused_embedding", vec),
            ("content_hash", pa.binary(16)),
            ("copied", pa.bool_()),
        ]
    )


def carried_columns(shard_path: str) -> list[str]:
    """The carried columns (`embed --carry-columns`) of a shard: its columns past the standard ones."""
    standard = set(embeddings_schema(1).names)
    return [n for n in storage.read_schema(shard_path).names if n not in standard]


def embeddings_table(
    ids: list[str | None],
    captions: list[str | None],
    image: np.ndarray,
    text: np.ndarray,
    fused: np.ndarray,
    content: list[bytes | None] | None = None,
    copied: list[bool] | None = None,
) -> pa.Table:
    """A shard table: rows aligned across the lists and [n, d] vector arrays (content: null,
    copied: false when not given)."""
    d = image.shape[1]
    content = content if content is not None else [None] * len(ids)
    copied = copied if copied is not None else [False] * len(ids)
    columns = [pa.array(ids, pa.string()), pa.array(captions, pa.string())]
    columns += [vectors_to_arrow(v) for v in (image, text, fused)]
    columns += [pa.array(content, pa.binary(16)), pa.array(copied, pa.bool_())]
    return pa.Table.from_arrays(columns, schema=embeddings_schema(d))


REJECTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_file", pa.string()),
        ("row_index", pa.int64()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ]
)


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """[n, d] float32 -> fixed-size-list array."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size-list column -> ([n, d] float32, valid mask [n]: False for all-zero rows)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    d = column.type.list_size
    x = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d)
    return x, np.any(x != 0, axis=1)


READ_BATCH = 4096  # rows decoded at a time by read_vectors_lean


def read_vectors_lean(path: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """arrow_to_vectors of one fixed-size-list column of a Parquet file, decoded a batch of rows
    at a time into the array returned: reading the whole column as a table first holds it in
    Arrow's buffers while they grow (~130-160 MiB at the peak for a 31 MiB column) beside the copy
    made for numpy; this holds the array, one batch and the reader's buffers (~85 MiB)."""
    fs, p = storage.url_to_fs(path)
    with fs.open(p, "rb") as fh:
        pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)
        d = pf.schema_arrow.field(column).type.list_size
        x, row = np.empty((pf.metadata.num_rows, d), np.float32), 0
        for batch in pf.iter_batches(batch_size=READ_BATCH, columns=[column], use_threads=False):
            part = arrow_to_vectors(batch.column(0))[0]
            x[row : row + len(part)] = part
            row += len(part)
    if row != len(x):
        raise InputError(f"{path}: {row} rows read, {len(x)} in its footer")
    return x, np.any(x != 0, axis=1)


@dataclass(frozen=True)
class Shard:
    path: str
    num_rows: int
    metadata: dict[bytes, bytes]


def list_shards(embeddings_dir: str, *, require_complete: bool = True) -> list[Shard]:
    """Committed shards of `DIR` (or `DIR/embeddings`), in shard order, with row counts.

    With `require_complete` (default) raises InputError when there are none or when some of
    the N shards are missing.
    """
    base = embeddings_dir
    if EMBEDDINGS not in storage.listdir(base) and any(_SHARD.match(n) for n in storage.listdir(base)):
        shard_dir = base
    else:
        shard_dir = storage.join(base, EMBEDDINGS)
    names = [n for n in storage.listdir(shard_dir) if _SHARD.match(n)]
    if not names and not require_complete:
        return []
    if not names:
        raise InputError(f"no embedding shards (part-*.parquet) under {shard_dir}; run `fusionindex embed` first")
    totals = {int(_SHARD.match(n).group(2)) for n in names}
    if require_complete and (len(totals) != 1 or len(names) != totals.pop()):
        raise InputError(f"{shard_dir} holds an incomplete or mixed set of shards ({len(names)} files); re-run embed")
    shards = []
    for name in sorted(names):
        path = storage.join(shard_dir, name)
        fs, p = storage.url_to_fs(path)
        with fs.open(p, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            shards.append(Shard(path, meta.num_rows, dict(meta.metadata or {})))
    return shards


def vector_column(vector: str) -> str:
    check_choice("--vector", vector, VECTOR_COLUMNS)
    return VECTOR_COLUMNS[vector]
