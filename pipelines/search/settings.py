"""What `search` is asked to do, validated on creation (flag names in the messages)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError, check_at_least


@dataclass(frozen=True)
class SearchSettings:
    index: str  # IDX directory written by build-index
    text: str | None = None
    image: str | None = None  # image file, local or URL
    k: int = 10
    nprobe: int | None = None  # None: the nprobe the index was built with
    model: str | None = None  # None: the model the embeddings were made with
    device: str | None = None
    json: bool = False  # one JSON object per line: rank, id, score, caption

    def __post_init__(self) -> None:
        if self.text is None and self.image is None:
            raise SettingsError("give --text, --image or both")
        if self.text is not None and not self.text.strip():
            raise SettingsError("--text is empty; give the words to search for")
        check_at_least("--k", self.k, 1)
        check_at_least("--nprobe", self.nprobe, 1)
