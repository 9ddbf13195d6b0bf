"""img2dataset's Parquet schema, the input convention `embed` reads, in one place for whatever writes it.

Columns in img2dataset's order: `key`, `caption`, any extra string columns (our catalogues add
`query` and `split`), `url`, `status`, `error_message`, `width`, `height`, `original_width`,
`original_height` (int32), `exif`, `sha256`, and last a binary column named after the
encoding (`jpg`, `png` or `webp`). A failed row keeps a null image and a status other than
`success`.
"""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from encoders import storage
from pipelines.inputs import IMAGE_COLUMNS

HEAD = [("key", pa.string()), ("caption", pa.string())]
TAIL = [
    ("url", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
    ("exif", pa.string()), ("sha256", pa.string()),
]  # fmt: skip
JPEG_QUALITY = 90
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def schema(image_column: str, extra: tuple[str, ...] = ()) -> pa.Schema:
    """The shard schema with string columns `extra` after the caption and `image_column` last."""
    if image_column not in IMAGE_COLUMNS:
        raise ValueError(f"image column must be one of {', '.join(IMAGE_COLUMNS)}, not {image_column!r}")
    return pa.schema(HEAD + [(name, pa.string()) for name in extra] + TAIL + [(image_column, pa.binary())])


def encode(image: Image.Image, image_column: str) -> bytes:
    """The bytes of `image` in the encoding `image_column` names (JPEG at quality 90)."""
    buf = io.BytesIO()
    image.save(buf, format=FORMATS[image_column], **({"quality": JPEG_QUALITY} if image_column == "jpg" else {}))
    return buf.getvalue()


def record(
    key: str,
    caption: str | None,
    image_column: str,
    data: bytes | None,
    *,
    size: tuple[int, int] | None = None,
    original: tuple[int, int] | None = None,
    status: str = "success",
    error_message: str | None = None,
    url: str | None = None,
    exif: str | None = None,
    **extra: str | None,
) -> dict:
    """One row; `extra` holds the extra columns' values. The original size defaults to `size`."""
    (w, h), (ow, oh) = size or (None, None), original or size or (None, None)
    return {
        "key": key, "caption": caption, **extra, "url": url, "status": status, "error_message": error_message,
        "width": w, "height": h, "original_width": ow, "original_height": oh, "exif": exif,
        "sha256": None if data is None else hashlib.sha256(data).hexdigest(), image_column: data,
    }  # fmt: skip


def write(
    path: str, records: list[dict], image_column: str, extra: tuple[str, ...] = (), row_group_size: int | None = None
) -> None:
    """Write one shard atomically (local path or fsspec URL; a reader never sees a partial file)."""
    table = pa.Table.from_pylist(records, schema=schema(image_column, extra))
    with storage.atomic_open(path) as fh:
        pq.write_table(table, fh, row_group_size=row_group_size)
