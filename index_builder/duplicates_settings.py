"""What `duplicates` is asked to do, importable without faiss (the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError
from encoders.options import check_options, flag_of, option
from index_builder.embeddings import VECTOR_COLUMNS

DEFAULT_THRESHOLD = 0.97


def check_threshold(flag: str, value: float | None) -> None:
    """A cosine threshold in (0, 1] (None passes: not asked for)."""
    if value is not None and not 0 < value <= 1:
        raise SettingsError(f"{flag} must be a cosine in (0, 1] (got {value})")


@dataclass(frozen=True)
class DuplicatesSettings:
    """`duplicates`: near-duplicate groups of a built index (index_builder.index_duplicates)."""

    index: str = option(metavar="IDX", help="an index directory (writes IDX/duplicates.parquet)")
    threshold: float = option(DEFAULT_THRESHOLD, help="items at this cosine or above are duplicates (0 < t <= 1)")
    vector: str | None = option(
        None, choices=tuple(VECTOR_COLUMNS), help="image, fused or text (default: the vector the index holds)"
    )

    def __post_init__(self) -> None:
        check_threshold(flag_of(self, "threshold"), self.threshold)
        check_options(self)
