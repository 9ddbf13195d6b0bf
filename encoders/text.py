"""Caption rules shared by every tower and by the data readers (no torch)."""

from __future__ import annotations

# Captions are cut to this many characters before tokenising: the tokenizer truncates to the
# model's context anyway, and a 100k-character caption should not cost 100k characters of work.
MAX_CAPTION_CHARS = 4096


def has_caption(caption: str | None) -> bool:
    """Whether there is any text to embed (None, empty and whitespace-only captions have none)."""
    return caption is not None and caption.strip() != ""
