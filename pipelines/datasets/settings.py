"""What the data helpers are asked to do (`make-sample`, `make-catalogue`), validated on creation.

The library functions (`make_sample`, `make_catalogue`) take their defaults from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from encoders.options import check_options, option

SOURCES = ("emoji", "openclipart")  # Debian packages' images (pipelines.datasets.catalogue)


@dataclass(frozen=True)
class SampleSettings:
    """`make-sample`: a small synthetic catalogue (real JPEG/PNG bytes of drawn shapes)."""

    output: str = option(metavar="DIR", help="directory (local or fsspec URL) the shards are written to")
    rows: int = option(1200, at_least=1, help="rows in all")
    shards: int = option(4, at_least=1, help="Parquet files the rows are spread over")
    seed: int = option(0, help="seed of the shapes, colours and captions")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class CatalogueSettings:
    """`make-catalogue`: a real catalogue from Debian packages' images."""

    output: str = option(metavar="DIR", help="directory (local or fsspec URL) the shards are written to")
    source: str = option("emoji", choices=(*SOURCES, "both"), help="which package's images")
    limit: int | None = option(None, at_least=1, help="at most this many rows per source (default: all)")
    image_size: int = option(224, at_least=1, help="image side in pixels")

    def __post_init__(self) -> None:
        check_options(self)
