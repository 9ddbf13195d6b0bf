"""The openclipart source: clip-art PNGs captioned from their SVG's keywords and their path.

``query`` is the SVG title (terms equal to it are left out of the caption, as for emoji).
Images are flattened on white, shrunk to ``image_size`` and stored as JPEG.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from PIL import Image

from encoders.images import flatten_on_white
from pipelines.datasets import img2dataset
from pipelines.datasets.catalogue.rows import Candidate, Entry, SkipItem
from pipelines.datasets.catalogue.svg import svg_metadata

MAX_SOURCE_PIXELS = 50_000_000  # larger clip-art PNGs (a few, up to 623M px) are skipped, not decoded
DROPPED_KEYWORDS = frozenset({"unsorted"})  # openclipart keywords that say nothing about the image
DROPPED_FOLDERS = frozenset({"unsorted"})


def clipart_candidates(root: str, image_size: int) -> Iterator[Candidate]:
    """Candidates for every PNG under root/png (its SVG under root/svg), in key order."""
    for key, rel in sorted((clipart_key(rel), rel) for rel in clipart_files(root)):
        yield Candidate(key, lambda rel=rel: clipart_entry(root, rel, image_size))


def clipart_files(root: str) -> list[str]:
    """Sorted PNG paths relative to root/png, with '/' separators."""
    base = os.path.join(root, "png")
    found = [
        os.path.relpath(os.path.join(d, f), base)
        for d, _, files in os.walk(base)
        for f in files
        if f.lower().endswith(".png")
    ]
    return sorted(p.replace(os.sep, "/") for p in found)


def clipart_key(rel_png: str) -> str:
    return "openclipart-" + hashlib.sha1(rel_png.encode("utf-8")).hexdigest()[:12]


def clipart_entry(root: str, rel_png: str, image_size: int) -> Entry:
    """Entry of one clip-art PNG; SkipItem when its SVG or PNG is missing, unreadable or too large."""
    svg = os.path.join(root, "svg", os.path.splitext(rel_png)[0] + ".svg")
    try:
        title, keywords = svg_metadata(svg)
    except (OSError, ET.ParseError, UnicodeError) as exc:
        raise SkipItem(f"{svg}: {exc}") from exc
    caption, query = clipart_texts(title, keywords, rel_png)
    data, size, original = clipart_image(os.path.join(root, "png", rel_png), image_size)
    return Entry(caption, query, data, size, original)


# --------------------------------------------------------------------------- texts


def words(text: str) -> list[str]:
    """Lower-case words of a file stem: split on '_', '-', digits (and other non-letters); < 3 letters dropped."""
    return [w for w in re.split(r"[\W_\d]+", text.lower()) if len(w) >= 3]


def path_words(rel_png: str) -> list[str]:
    """Category folder names (underscores as spaces) then the words of the file stem."""
    *folders, name = rel_png.split("/")
    cats = [f.replace("_", " ").replace("-", " ").lower() for f in folders if f.lower() not in DROPPED_FOLDERS]
    return cats + words(os.path.splitext(name)[0])


def clipart_terms(keywords: list[str], rel_png: str) -> list[str]:
    """Keywords (underscores as spaces; empty and DROPPED_KEYWORDS left out) then path words,
    de-duplicated case-insensitively, first spelling and order kept."""
    seen: dict[str, str] = {}
    for term in [k.replace("_", " ").strip() for k in keywords] + path_words(rel_png):
        if term and term.casefold() not in DROPPED_KEYWORDS and term.casefold() not in seen:
            seen[term.casefold()] = term
    return list(seen.values())


def clipart_texts(title: str, keywords: list[str], rel_png: str) -> tuple[str, str | None]:
    """(caption, query): the query is the title; as for emoji, the caption leaves out terms equal to it.

    When the title is the only term, the caption keeps it and the query is None, so that query and
    caption never coincide. SkipItem when there are no caption words at all.
    """
    terms = clipart_terms(keywords, rel_png)
    kept = [t for t in terms if t.casefold() != title.casefold()]
    if not kept:
        kept, title = terms, ""
    if not kept:
        raise SkipItem(f"{rel_png}: no keywords and no usable path words")
    return ", ".join(kept), title or None


# --------------------------------------------------------------------------- image


def clipart_image(png: str, image_size: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """JPEG of the PNG on white, longer side <= image_size; SkipItem when unreadable or too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as img:
                original = img.size
                if original[0] * original[1] > MAX_SOURCE_PIXELS:
                    raise SkipItem(
                        f"{png}: {original[0]}x{original[1]} pixels is over MAX_SOURCE_PIXELS={MAX_SOURCE_PIXELS}"
                    )
                img.load()  # pixels in memory before the file closes (an RGB image is returned as is)
                flat = flatten_on_white(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SkipItem(f"{png}: {exc}") from exc
    flat.thumbnail((image_size, image_size), Image.Resampling.LANCZOS)
    return img2dataset.encode(flat, "jpg"), flat.size, original
