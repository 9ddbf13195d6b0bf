"""The emoji source: single-code-point CLDR emoji drawn by Noto Color Emoji, captioned from CLDR.

The image is the rendered glyph on white (PNG); ``query`` is the CLDR name ("grinning face"),
``caption`` the CLDR keywords other than the name.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from PIL import Image, ImageDraw, ImageFont

from encoders.images import flatten_on_white
from pipelines.datasets import img2dataset
from pipelines.datasets.catalogue.rows import Candidate, Entry

log = logging.getLogger(__name__)

EMOJI_FONT_SIZE = 109  # the only size Noto Color Emoji's bitmap strikes load at
MISSING_GLYPH = chr(0x10FFFD)  # private-use code point no emoji font maps


def emoji_key(cp: str) -> str:
    return "emoji-" + "-".join(f"{ord(c):04x}" for c in cp)


def is_single_code_point(cp: str) -> bool:
    """One code point, optionally followed by U+FE0F (emoji presentation selector)."""
    return len(cp) == 1 or (len(cp) == 2 and cp[1] == "\ufe0f")


def read_annotations(path: str) -> dict[str, tuple[str, list[str]]]:
    """{cp: (tts name, keywords)} for the annotations of `path` that have both a name and keywords."""
    names: dict[str, str] = {}
    keywords: dict[str, list[str]] = {}
    for el in ET.parse(path).getroot().iter("annotation"):
        cp, text = el.get("cp"), (el.text or "").strip()
        if not cp or not text:
            continue
        if el.get("type") == "tts":
            names[cp] = text
        else:
            keywords[cp] = [k.strip() for k in text.split("|") if k.strip()]
    return {cp: (names[cp], keywords[cp]) for cp in names if cp in keywords}


def emoji_caption(name: str, keywords: list[str]) -> str:
    """CLDR keywords other than the name (case-insensitive), de-duplicated, joined with ', '."""
    kept = [k for k in keywords if k.casefold() != name.casefold()]
    return ", ".join(dict.fromkeys(kept))


class EmojiRenderer:
    """Draws single code points with the colour font; tells glyphs the font lacks from real ones."""

    def __init__(self, font_path: str, image_size: int) -> None:
        self.font = ImageFont.truetype(font_path, size=EMOJI_FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)
        self.image_size = image_size
        self.canvas = 2 * EMOJI_FONT_SIZE + 64
        self.missing = self.draw(MISSING_GLYPH).tobytes()

    def draw(self, text: str) -> Image.Image:
        """RGBA canvas with `text` drawn in the font's own colours at a fixed offset."""
        img = Image.new("RGBA", (self.canvas, self.canvas), (0, 0, 0, 0))
        ImageDraw.Draw(img).text((32, 32), text, font=self.font, embedded_color=True)
        return img

    def glyph(self, cp: str) -> Image.Image | None:
        """The glyph of `cp` cropped to its ink, or None when the font does not draw it."""
        img = self.draw(cp[0])  # U+FE0F only selects presentation; the colour font has one glyph
        bbox = img.getbbox()
        if bbox is None or img.tobytes() == self.missing:
            return None
        return img.crop(bbox)

    def square(self, glyph: Image.Image) -> Image.Image:
        """The glyph on white, scaled to fit image_size x image_size (aspect kept), padded square."""
        flat = flatten_on_white(glyph)
        scale = self.image_size / max(flat.size)
        size = (max(1, round(flat.width * scale)), max(1, round(flat.height * scale)))
        flat = flat.resize(size, Image.Resampling.LANCZOS)
        out = Image.new("RGB", (self.image_size, self.image_size), (255, 255, 255))
        out.paste(flat, ((self.image_size - size[0]) // 2, (self.image_size - size[1]) // 2))
        return out


def emoji_candidates(font: str, annotations_path: str, image_size: int) -> Iterator[Candidate]:
    """Candidates for the single-code-point emoji of the CLDR annotations at `annotations_path`
    that `font` draws and that have a non-empty caption, in key order."""
    renderer = EmojiRenderer(font, image_size)
    annotations = read_annotations(annotations_path)
    entries = sorted(
        (emoji_key(cp), cp, name, kws) for cp, (name, kws) in annotations.items() if is_single_code_point(cp)
    )
    undrawn = uncaptioned = 0
    for key, cp, name, keywords in entries:
        caption = emoji_caption(name, keywords)
        glyph = renderer.glyph(cp)
        if glyph is None or not caption:
            undrawn += glyph is None
            uncaptioned += glyph is not None and not caption
            continue
        yield Candidate(
            key, lambda glyph=glyph, caption=caption, name=name: emoji_entry(renderer, glyph, caption, name)
        )
    log.info(
        "emoji: %d single code points annotated; %d not drawn by the font, %d with no keyword besides the name",
        len(entries),
        undrawn,
        uncaptioned,
    )


def emoji_entry(renderer: EmojiRenderer, glyph: Image.Image, caption: str, name: str) -> Entry:
    img = renderer.square(glyph)
    return Entry(caption, name, img2dataset.encode(img, "png"), img.size, glyph.size)
