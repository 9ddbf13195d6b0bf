"""A real, offline image-caption catalogue from Debian packages, in img2dataset's Parquet schema.

Two sources, both read from files Debian installs (nothing is ever downloaded):

* ``emoji``: every single-code-point emoji of the CLDR English annotations
  (unicode-cldr-core) that Noto Color Emoji (fonts-noto-color-emoji) draws. The image is the
  rendered glyph on white (PNG); ``query`` is the CLDR name ("grinning face"), ``caption``
  the CLDR keywords other than the name.
* ``openclipart``: the clip-art PNGs of openclipart-png, captioned from the keywords in the
  matching SVG of openclipart-svg plus the words of the file's path; ``query`` is the SVG title
  (terms equal to it are left out of the caption, as for emoji).
  Images are flattened on white, shrunk to ``image_size`` and stored as JPEG.

``query`` is meant as a shopper's query for evaluation, so it is kept apart from ``caption``.
Rows are written in key order, ``shard_rows`` per file, as ``{source}-{i:05d}.parquet``; the
split (train/val/test) is a pure function of the key (:func:`split_of`). Output is the same
bytes for the same installed packages and arguments.

Modules: ``emoji.py`` and ``openclipart.py`` (with ``svg.py``, its metadata reader) turn source
files into candidate rows (``rows.py``); ``shards.py`` writes them; this module checks the
packages are installed and runs the sources asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from encoders import storage
from encoders.errors import InputError, SettingsError
from pipelines.datasets.catalogue.emoji import emoji_candidates
from pipelines.datasets.catalogue.openclipart import clipart_candidates
from pipelines.datasets.catalogue.rows import Candidate, Entry, SkipItem
from pipelines.datasets.catalogue.shards import split_of, write_source
from pipelines.datasets.settings import SOURCES, CatalogueSettings

__all__ = ["Candidate", "Entry", "SkipItem", "make_catalogue", "require", "split_of"]


# Where Debian installs the sources' files; read at call time so tests can repoint them.
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR_ANNOTATIONS = "/usr/share/unicode/cldr/common/annotations/en.xml"
OPENCLIPART_ROOT = "/usr/share/openclipart"  # holds png/<category>/.../<name>.png and svg/<same>.svg


def make_catalogue(
    output: str,
    *,
    source: str = CatalogueSettings.source,
    limit: int | None = CatalogueSettings.limit,
    shard_rows: int = 1000,
    image_size: int = CatalogueSettings.image_size,
    seed: int = 0,
) -> dict:
    """Write the catalogue of `source` ("emoji", "openclipart" or "both") under `output`; return a summary.

    Shards are `{source}-{i:05d}.parquet` (local path or fsspec URL), rows in key order, at
    most `limit` rows per source (the first by key). Older shards of the same source numbered
    past the new last one are removed. Summary: {"rows", "shards", "by_split", "sources"
    (rows per source), "skipped" (source files that could not be used)}. `seed` is accepted for
    symmetry with make_sample; the output does not depend on it (everything is keyed by hashes).
    Raises InputError naming the Debian package when the source files are not installed.
    """
    if source not in SOURCES + ("both",):
        raise SettingsError(f"source must be one of emoji, openclipart, both; got {source!r}")
    if shard_rows < 1 or image_size < 1 or (limit is not None and limit < 0):
        raise SettingsError("shard_rows and image_size must be >= 1 and limit >= 0")
    wanted = SOURCES if source == "both" else (source,)
    for name in wanted:  # every package is checked before anything is written
        require(name)
    storage.makedirs(output)
    summary: dict = {
        "rows": 0,
        "shards": [],
        "by_split": {"train": 0, "val": 0, "test": 0},
        "sources": {},
        "skipped": 0,
    }
    for name in wanted:
        part = write_source(output, name, candidates(name, image_size), limit=limit, shard_rows=shard_rows)
        summary["rows"] += part["rows"]
        summary["shards"] += part["shards"]
        summary["skipped"] += part["skipped"]
        summary["sources"][name] = part["rows"]
        for split, n in part["by_split"].items():
            summary["by_split"][split] += n
    return summary


def candidates(source: str, image_size: int) -> Iterator[Candidate]:
    """The candidate rows of `source` from its installed files, in key order."""
    if source == "emoji":
        return emoji_candidates(EMOJI_FONT, CLDR_ANNOTATIONS, image_size)
    return clipart_candidates(OPENCLIPART_ROOT, image_size)


def required_files(source: str) -> list[tuple[str, str]]:
    """(path, Debian package providing it) for `source`."""
    if source == "emoji":
        return [(EMOJI_FONT, "fonts-noto-color-emoji"), (CLDR_ANNOTATIONS, "unicode-cldr-core")]
    return [
        (os.path.join(OPENCLIPART_ROOT, "png"), "openclipart-png"),
        (os.path.join(OPENCLIPART_ROOT, "svg"), "openclipart-svg"),
    ]


def require(source: str) -> None:
    """Raise InputError naming the Debian package(s) to install when a file of `source` is missing."""
    files = required_files(source)
    missing = [(path, pkg) for path, pkg in files if not os.path.exists(path)]
    if missing:
        needs = " and ".join(pkg for _, pkg in files)
        raise InputError(
            f"{source} source needs {needs} (not found: {', '.join(p for p, _ in missing)}): "
            f"apt-get install -y {' '.join(pkg for _, pkg in missing)}"
        )
