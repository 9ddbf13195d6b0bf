"""What a catalogue source yields: a Candidate per possible row, built into an Entry or skipped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class SkipItem(Exception):
    """One source file cannot be used; it is logged, counted in summary["skipped"], and left out."""


@dataclass(frozen=True)
class Entry:
    """What one row holds besides its key: texts, encoded image, its size and the source's size."""

    caption: str
    query: str | None
    data: bytes
    size: tuple[int, int]
    original: tuple[int, int]


@dataclass(frozen=True)
class Candidate:
    """A possible row: `build()` does the work (parse, draw, encode) or raises SkipItem."""

    key: str
    build: Callable[[], Entry]
