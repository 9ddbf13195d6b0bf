"""Small fsspec helpers: every path may be local or a URL (gs://, s3://, memory://, ...). The one
file layer of all three packages (docs/architecture.md: why it lives in encoders/); no torch here.

Writes are atomic for readers: data goes to a hidden temporary name (`.tmp-...`) in the same
directory and is then moved to its name. Locally the move is a rename (atomic). On object
stores fsspec's move is a server-side copy then a delete of the temporary: the copy makes the
final object appear whole (object stores never show a half-written object), and a writer
killed between copy and delete leaves a `.tmp-*` object behind, which `remove_temporaries`
clears at the start of the next run. Either way a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from encoders.errors import InputError


def url_to_fs(path: str):
    """(filesystem, path-within-filesystem) for a local path or fsspec URL."""
    return fsspec.core.url_to_fs(path)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', keeping any protocol prefix of `base`."""
    return posixpath.join(base.rstrip("/"), *parts)


def _unstrip(original: str, fs, path: str) -> str:
    """Give a path returned by fs back the protocol that `original` had."""
    protocol = original.split("://", 1)[0] if "://" in original else None
    if protocol and protocol != "file":
        return fs.unstrip_protocol(path)
    return path


def expand(patterns: list[str]) -> list[str]:
    """Sorted unique files matching globs, files or directories (their *.parquet).

    A pattern matching nothing raises InputError.
    """
    found: set[str] = set()
    for pattern in patterns:
        fs, path = url_to_fs(pattern)
        if fs.isdir(path):
            path = posixpath.join(path, "*.parquet")
        matches = [m for m in fs.glob(path) if fs.isfile(m)]
        if not matches:
            raise InputError(f"no file matches {pattern!r}; check the path or glob (quote it in the shell)")
        found.update(_unstrip(pattern, fs, m) for m in matches)
    return sorted(found)


def put(local: str, path: str) -> None:
    """Copy the local file `local` to `path` (local or fsspec), appearing whole under its name."""
    with open(local, "rb") as src, atomic_open(path) as dst:
        shutil.copyfileobj(src, dst, 16 << 20)


def get(path: str, local: str) -> None:
    """Copy `path` (local or fsspec) to the local file `local`."""
    fs, p = url_to_fs(path)
    fs.get(p, local)


def is_local(path: str) -> bool:
    fs, _ = url_to_fs(path)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def read_bytes(path: str) -> bytes:
    fs, p = url_to_fs(path)
    with fs.open(p, "rb") as fh:
        return fh.read()


def size(path: str) -> int:
    fs, p = url_to_fs(path)
    return int(fs.size(p))


def exists(path: str) -> bool:
    fs, p = url_to_fs(path)
    return fs.exists(p)


def version(path: str) -> dict:
    """Size plus whatever change marker the filesystem offers (mtime, ETag, generation...)."""
    fs, p = url_to_fs(path)
    info = fs.info(p)
    marks = ("size", "mtime", "etag", "ETag", "md5Hash", "generation", "LastModified", "updated")
    return {k: str(info[k]) for k in marks if info.get(k) is not None}


def remove(path: str, recursive: bool = False) -> None:
    fs, p = url_to_fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=recursive)


def makedirs(path: str) -> None:
    fs, p = url_to_fs(path)
    fs.makedirs(p, exist_ok=True)


def listdir(path: str, *, fresh: bool = False) -> list[str]:
    """Names (not paths) directly under a directory; [] when it does not exist. `fresh`: drop the
    filesystem's cached listing first (object stores cache them; a directory watched while others
    write into it needs a new one each time)."""
    fs, p = url_to_fs(path)
    if fresh:
        fs.invalidate_cache(p)
    if not fs.exists(p):
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))


TMP_PREFIX = ".tmp-"


def remove_temporaries(directory: str) -> int:
    """Delete leftovers of writers that were killed inside `atomic_open`; return how many."""
    stale = [n for n in listdir(directory) if n.startswith(TMP_PREFIX)]
    for name in stale:
        remove(join(directory, name))
    return len(stale)


@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[Any]:
    """Open `path` for binary writing; it appears under its name only if the block succeeds."""
    fs, p = url_to_fs(path)
    parent = posixpath.dirname(p)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(p)}")
    try:
        with fs.open(tmp, "wb") as fh:
            yield fh
        fs.mv(tmp, p)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def write_json(path: str, obj: Any) -> None:
    """Write pretty JSON atomically."""
    with atomic_open(path) as fh:
        fh.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str) -> Any:
    fs, p = url_to_fs(path)
    with fs.open(p, "rb") as fh:
        return json.loads(fh.read())


def read_schema(path: str) -> pa.Schema:
    """A Parquet file's schema, from its footer."""
    fs, p = url_to_fs(path)
    with fs.open(p, "rb") as fh:
        return pq.ParquetFile(fh).schema_arrow


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = url_to_fs(path)
    with fs.open(p, "rb") as fh:
        return pq.read_table(fh, columns=columns)
