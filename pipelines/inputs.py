"""The one Parquet reader: expand globs, read footers, validate columns, cut work units, stream rows.

Everything in `plan_inputs` runs before any pipeline starts, so a bad path or schema fails in
seconds with the file named. A work unit is one row group of one file: the smallest piece a
Parquet reader can fetch on its own, and the unit of output (one embedding shard each).
`iter_unit` streams a unit's rows in batches; `embed`, fine-tuning, evaluation and the report
all read through it.

Two layouts are understood:
* img2dataset's: the image bytes in a binary column named after the encoding (`jpg`, `png`,
  `webp`), a `status` column (rows that are not `success` are skipped);
* Hugging Face `datasets`' (how image datasets on the hub are stored): the image column is the
  `Image` feature, `struct<bytes: binary, path: string>`, usually named `image`, no status.
A null image, or a struct holding only a path (an image stored outside the file), is a row
without image: `embed` rejects it, never drops it.

We read with pyarrow + fsspec rather than Beam's ReadFromParquetBatched because we need
(a) any fsspec URL, not only Beam's filesystems, (b) the row index of every row for
deterministic output order and reject records, (c) the source file named on a corrupt read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from encoders import storage
from encoders.errors import InputError, SettingsError
from encoders.options import flag_of, option

log = logging.getLogger(__name__)

# columns of the embeddings shards and rejects files: a carried column may not take their names
RESERVED = ("id", "caption", "image_embedding", "text_embedding", "fused_embedding", "content_hash", "copied",
            "source_file", "row_index", "reason", "message")  # fmt: skip
IMAGE_COLUMNS = ("jpg", "png", "webp")  # img2dataset: a binary column named after the encoding
SUCCESS = "success"
HF_METADATA = b"huggingface"  # schema metadata `datasets` writes: {"info": {"features": {...}}}
READ_BUFFER = 1 << 20  # bytes per read: rows stream page by page, not row group by row group
PLAN_THREADS = 32  # footers read at once while planning: object-store latency, not CPU, bounds planning


def _column(name: str | None, flag: str, help: str) -> object:
    return option(name, flag=flag, dest=flag.lstrip("-").replace("-", "_"), metavar="NAME", help=help)


@dataclass(frozen=True)
class Columns:
    """Which columns hold what. `image` None: auto-detect. `status`, `query`, `split` are used
    where a file has them (None or "": never read)."""

    id: str = _column("key", "--id-column", "item id (string or integer)")
    caption: str = _column("caption", "--caption-column", "caption text (string, or binary UTF-8)")
    image: str | None = _column(
        None,
        "--image-column",
        "encoded image bytes; default: auto-detect jpg, png, webp or a Hugging Face Image column",
    )
    status: str | None = _column("status", "--status-column", "rows whose value is not 'success' are skipped")
    query: str | None = _column(None, "--query-column", "a shopper's query text (evaluation, fine-tuning)")
    split: str | None = _column(None, "--split-column", "train / val / test (fine-tuning, evaluation)")
    carry: tuple[str, ...] = option(
        (),
        flag="--carry-columns",
        dest="carry_columns",
        metavar="NAME",
        help="source columns copied, typed as in the source, into the shards, ids.parquet and search --json "
        "(url,title,price)",
    )
    image_struct: bool = False  # resolved per file: the image column is struct<bytes, path>

    def __post_init__(self) -> None:
        for name in ("status", "query", "split"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        carry = tuple(n.strip() for value in self.carry or () for n in value.split(",") if n.strip())
        object.__setattr__(self, "carry", tuple(dict.fromkeys(carry)))
        taken = sorted(set(self.carry) & set(RESERVED))
        if taken:
            raise SettingsError(
                f"{flag_of(self, 'carry')} {', '.join(taken)}: the embeddings or rejects files have a column of "
                "that name; rename it in the source"
            )


@dataclass(frozen=True)
class WorkUnit:
    """Row group `row_group` of `path`; rows `first_row .. first_row + num_rows - 1` of the file."""

    index: int
    path: str
    row_group: int
    first_row: int
    num_rows: int
    columns: Columns  # resolved: image column known, optional columns None where the file has none


@dataclass(frozen=True)
class InputPlan:
    files: list[str]
    units: list[WorkUnit]
    total_rows: int
    bad_files: list[dict] = field(default_factory=list)  # unreadable files skipped with --skip-bad-files


class Row(NamedTuple):
    """One input row as the reader sees it (a NamedTuple: half the cost of a frozen dataclass,
    and a unit makes one per row)."""

    row_index: int  # within its file
    id: str | None
    caption: str | None
    image: bytes | None
    status: str | None
    image_path: str | None = None  # a Hugging Face image struct's path when it holds no bytes
    query: str | None = None
    split: str | None = None
    carried: tuple = ()  # the values of the --carry-columns, in their order


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_image_struct(t: pa.DataType) -> bool:
    """Hugging Face's Image feature: struct<bytes: binary, path: string>."""
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return "bytes" in names and _is_binary(names["bytes"])


def _hf_image_columns(schema: pa.Schema) -> list[str] | None:
    """Columns `datasets` declared as Image features, or None when the file is not from `datasets`."""
    raw = (schema.metadata or {}).get(HF_METADATA)
    if raw is None:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        return [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    except (ValueError, KeyError, TypeError):
        return None


def _detect_image(schema: pa.Schema, path: str, listing: str) -> str:
    declared = _hf_image_columns(schema)
    present = [c for c in IMAGE_COLUMNS if c in schema.names]  # by name: a wrong type is reported below
    structs = [f.name for f in schema if is_image_struct(f.type) and (declared is None or f.name in declared)]
    found = present + structs
    if not found:
        raise InputError(
            f"{path}: no image column found (looked for {', '.join(IMAGE_COLUMNS)} and Hugging Face "
            f"Image struct<bytes, path> columns); columns are: {listing}. Pass --image-column"
        )
    if len(found) > 1:
        raise InputError(f"{path}: several image columns ({', '.join(found)}); pick one with --image-column")
    return found[0]


def resolve_columns(schema: pa.Schema, wanted: Columns, path: str) -> Columns:
    """Check `schema` has the columns with usable types; fill in the image column."""
    names = schema.names
    listing = ", ".join(names)
    image = wanted.image or _detect_image(schema, path, listing)
    hint = ""
    if HF_METADATA in (schema.metadata or {}):
        hint = (
            " (a Hugging Face `datasets` file: its columns are often `id` and `text`: "
            "--id-column id --caption-column text)"
        )
    checks = [
        (wanted.id, "--id-column", lambda t: _is_string(t) or pa.types.is_integer(t), "string or integer"),
        (wanted.caption, "--caption-column", lambda t: _is_string(t) or _is_binary(t), "string (or binary UTF-8 text)"),
        (image, "--image-column", lambda t: _is_binary(t) or is_image_struct(t), "binary or struct<bytes, path>"),
    ]
    for name, flag, ok, expected in checks:
        if name not in names:
            raise InputError(f"{path}: missing column {name!r} (set {flag}); columns are: {listing}{hint}")
        if not ok(schema.field(name).type) and not pa.types.is_null(schema.field(name).type):
            raise InputError(f"{path}: column {name!r} has type {schema.field(name).type}, expected {expected}")
    missing = [c for c in wanted.carry if c not in names]
    if missing:
        raise InputError(f"{path}: no column {', '.join(map(repr, missing))} (--carry-columns); columns are: {listing}")
    present = {k: getattr(wanted, k) if getattr(wanted, k) in names else None for k in ("status", "query", "split")}
    return replace(wanted, image=image, image_struct=is_image_struct(schema.field(image).type), **present)


@contextmanager
def open_parquet(path: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file's footer opened through fsspec, its handle closed on leaving the block; a
    broken file raises InputError naming it."""
    fs, p = storage.url_to_fs(path)
    try:
        fh = fs.open(p, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc})") from exc
    with fh:
        try:
            pf = pq.ParquetFile(fh)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(
                f"{path}: not a readable Parquet file ({exc}); a writer that died can leave a file without footer: "
                "remove or re-create it"
            ) from exc
        yield pf


def read_footer(path: str, wanted: Columns) -> tuple[Columns, list[int], pa.Schema] | InputError:
    """(resolved columns, rows per row group, the carried columns' schema) of one file, from its
    footer alone. An unreadable file is returned as its InputError (the caller decides: skip or
    raise); wrong columns raise."""
    try:
        with open_parquet(path) as pf:
            schema, meta = pf.schema_arrow, pf.metadata
    except InputError as exc:
        return exc
    columns = resolve_columns(schema, wanted, path)
    carried = pa.schema([schema.field(c) for c in columns.carry])
    return columns, [meta.row_group(rg).num_rows for rg in range(meta.num_row_groups)], carried


def carried_schema(path: str, columns: Columns) -> pa.Schema:
    """The carried columns' fields (names, types as in the source) of one input file."""
    schema = storage.read_schema(path)
    return pa.schema([schema.field(c) for c in columns.carry])


def _footers(files: list[str], wanted: Columns, threads: int) -> Iterator[tuple | InputError]:
    """read_footer of each file, in input order, at most `threads` at once (fsspec and pyarrow
    release the GIL while they wait on I/O). The first error in input order is raised when its
    turn comes, as a serial loop would; reads not yet started are then cancelled."""
    if threads <= 1 or len(files) <= 1:
        yield from (read_footer(path, wanted) for path in files)
        return
    pool = ThreadPoolExecutor(max_workers=min(threads, len(files)), thread_name_prefix="plan")
    try:
        yield from pool.map(read_footer, files, [wanted] * len(files))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def plan_inputs(
    patterns: list[str], wanted: Columns, *, skip_bad_files: bool = False, threads: int = PLAN_THREADS
) -> InputPlan:
    """Expand `patterns`, validate every file's schema, and list the work units in input order.

    An unreadable file raises InputError, or with `skip_bad_files` is listed in `bad_files`
    and left out. A readable file with wrong columns always raises: that is a usage error.
    Footers are read by up to `threads` threads; the plan (units, their order, bad files, the
    error raised) is the one a serial read gives.
    """
    if not patterns:
        raise InputError("no input given: pass --input with Parquet files, globs or directories")
    files = storage.expand(patterns)
    units: list[WorkUnit] = []
    bad: list[dict] = []
    total = 0
    footers = _footers(files, wanted, threads)
    first_carried: tuple[str, pa.Schema] | None = None
    try:
        for path, footer in zip(files, footers):
            if isinstance(footer, InputError):
                if not skip_bad_files:
                    raise footer
                log.warning("skipping %s", footer)
                bad.append({"path": path, "row_group": None, "error": str(footer)})
                continue
            columns, row_counts, carried = footer
            if first_carried is None:
                first_carried = (path, carried)
            elif not carried.equals(first_carried[1]):
                raise InputError(
                    f"--carry-columns: {path} types them {_fields(carried)} but {first_carried[0]} "
                    f"{_fields(first_carried[1])}; cast them to one type in the source"
                )
            first = 0
            for rg, n in enumerate(row_counts):
                units.append(WorkUnit(len(units), path, rg, first, n, columns))
                first += n
            total += first
            if first == 0:
                log.warning("%s holds no rows", path)
    finally:
        footers.close()  # on an error: cancel the reads not started, now rather than when collected
    log.info("input: %d files, %d row groups, %d rows", len(files), len(units), total)
    skipped = {b["path"] for b in bad}
    return InputPlan([f for f in files if f not in skipped], units, total, bad)


def _fields(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _text(value) -> str | None:
    """Captions as str; binary captions are decoded as UTF-8, bad bytes replaced (never dropped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _texts(column: pa.Array) -> list[str | None]:
    """`_text` of each value (a string column converts as it is)."""
    values = column.to_pylist()
    return values if _is_string(column.type) else [_text(v) for v in values]


def _strings(column: pa.Array) -> list[str | None]:
    """Ids as str (integer ids too); null stays None."""
    values = column.to_pylist()
    return values if _is_string(column.type) else [None if v is None else str(v) for v in values]


def _images(column: pa.Array, struct: bool) -> tuple[list[bytes | None], list[str | None]]:
    """(bytes, path) per row. flatten() applies the struct's own nulls to its children (a null
    struct's child slots may hold anything)."""
    if not struct:
        return column.to_pylist(), [None] * len(column)
    children = dict(zip([column.type.field(i).name for i in range(column.type.num_fields)], column.flatten()))
    paths = children["path"].to_pylist() if "path" in children else [None] * len(column)
    return children["bytes"].to_pylist(), paths


def iter_unit(unit: WorkUnit, batch_rows: int = 256) -> Iterator[list[Row]]:
    """The unit's rows in batches of `batch_rows`, streamed: memory is bounded by the batch, not
    the row group. Raises InputError (naming file and row group) when the data cannot be read.
    """
    c = unit.columns
    optional = {k: getattr(c, k) for k in ("status", "query", "split") if getattr(c, k)}
    names = [c.id, c.caption, c.image, *optional.values(), *c.carry]
    fs, p = storage.url_to_fs(unit.path)
    start = unit.first_row
    try:
        with fs.open(p, "rb") as fh:
            pf = pq.ParquetFile(fh, buffer_size=READ_BUFFER, pre_buffer=False)
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[unit.row_group], columns=names):
                n = batch.num_rows
                ids = _strings(batch.column(0))
                captions = _texts(batch.column(1))
                images, paths = _images(batch.column(2), c.image_struct)
                extra = {k: batch.column(3 + i) for i, k in enumerate(optional)}
                statuses = extra["status"].to_pylist() if "status" in extra else [SUCCESS] * n
                queries = _texts(extra["query"]) if "query" in extra else [None] * n
                splits = extra["split"].to_pylist() if "split" in extra else [None] * n
                first = 3 + len(optional)
                carried = list(zip(*(batch.column(first + i).to_pylist() for i in range(len(c.carry))))) or [()] * n
                yield list(
                    map(Row, range(start, start + n), ids, captions, images, statuses, paths, queries, splits, carried)
                )
                start += n
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{unit.path}: cannot read row group {unit.row_group}: {exc}") from exc


def read_unit(unit: WorkUnit) -> list[Row]:
    """All the unit's rows (see iter_unit for the streaming form)."""
    return [row for batch in iter_unit(unit) for row in batch]


def read_ids(unit: WorkUnit) -> list[tuple[int, str]]:
    """(row index, id) of the unit's rows that would be embedded: success status, non-null id."""
    c = unit.columns
    with open_parquet(unit.path) as pf:
        try:
            table = pf.read_row_group(unit.row_group, columns=[c.id] + ([c.status] if c.status else []))
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{unit.path}: cannot read row group {unit.row_group}: {exc}") from exc
    ids = table.column(c.id).to_pylist()
    statuses = table.column(c.status).to_pylist() if c.status else [SUCCESS] * len(ids)
    return [
        (unit.first_row + i, str(v)) for i, (v, s) in enumerate(zip(ids, statuses)) if v is not None and s == SUCCESS
    ]
