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
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from encoders import storage
from encoders.errors import InputError, SettingsError
from encoders.images import flatten_on_white
from pipelines.datasets import img2dataset
from pipelines.datasets.settings import SOURCES, CatalogueSettings

log = logging.getLogger(__name__)

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR_ANNOTATIONS = "/usr/share/unicode/cldr/common/annotations/en.xml"
OPENCLIPART_ROOT = "/usr/share/openclipart"  # holds png/<category>/.../<name>.png and svg/<same>.svg

IMAGE_COLUMN = {"emoji": "png", "openclipart": "jpg"}
EMOJI_FONT_SIZE = 109  # the only size Noto Color Emoji's bitmap strikes load at
MISSING_GLYPH = chr(0x10FFFD)  # private-use code point no emoji font maps
MAX_SOURCE_PIXELS = 50_000_000  # larger clip-art PNGs (a few, up to 623M px) are skipped, not decoded
SVG_HEAD_BYTES = 64 * 1024  # what the regex fallback reads of an SVG that does not parse
DROPPED_KEYWORDS = frozenset({"unsorted"})  # openclipart keywords that say nothing about the image
DROPPED_FOLDERS = frozenset({"unsorted"})
PROGRESS_EVERY = 1000

DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
EXTRA_COLUMNS = ("query", "split")  # written after the caption, see img2dataset.schema


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


# --------------------------------------------------------------------------- splits, schema, writing


def split_of(key: str) -> str:
    """'train' / 'val' / 'test' (80/10/10) from the sha256 of `key`; pure and stable across runs."""
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if h < 80 else "val" if h < 90 else "test"


def shard_path(output: str, source: str, index: int) -> str:
    return storage.join(output, f"{source}-{index:05d}.parquet")


def record(key: str, entry: Entry, source: str) -> dict:
    """The Parquet row (img2dataset columns + query, split) of one built entry."""
    return img2dataset.record(
        key,
        entry.caption,
        IMAGE_COLUMN[source],
        entry.data,
        size=entry.size,
        original=entry.original,
        query=entry.query,
        split=split_of(key),
    )


def write_shard(path: str, records: list[dict], source: str) -> None:
    """Write one shard atomically (a reader never sees a partial file)."""
    img2dataset.write(path, records, IMAGE_COLUMN[source], extra=EXTRA_COLUMNS)


def remove_stale_shards(output: str, source: str, keep: int) -> None:
    """Delete `{source}-NNNNN.parquet` files numbered >= `keep` left by an earlier, larger run."""
    pattern = re.compile(rf"{re.escape(source)}-(\d{{5}})\.parquet")
    for name in storage.listdir(output):
        m = pattern.fullmatch(name)
        if m and int(m.group(1)) >= keep:
            log.info("removing stale shard %s", name)
            storage.remove(storage.join(output, name))


def write_source(
    output: str, source: str, candidates: Iterable[Candidate], *, limit: int | None, shard_rows: int
) -> dict:
    """Build `candidates` (already in key order) into shards of `shard_rows`, stopping after `limit` rows.

    Returns {"rows", "shards", "by_split", "skipped"} for this source.
    """
    shards: list[str] = []
    by_split = {"train": 0, "val": 0, "test": 0}
    rows = skipped = 0
    buffer: list[dict] = []

    def flush() -> None:
        path = shard_path(output, source, len(shards))
        write_shard(path, buffer, source)
        shards.append(path)
        buffer.clear()

    for cand in candidates:
        if limit is not None and rows >= limit:
            break
        try:
            buffer.append(record(cand.key, cand.build(), source))
        except SkipItem as exc:
            skipped += 1
            log.warning("%s: skipping %s: %s", source, cand.key, exc)
            continue
        rows += 1
        by_split[buffer[-1]["split"]] += 1
        if rows % PROGRESS_EVERY == 0:
            log.info("%s: %d images", source, rows)
        if len(buffer) >= shard_rows:
            flush()
    if buffer or not shards:
        flush()  # a source with no rows still gets one (empty) shard, so its schema is visible
    remove_stale_shards(output, source, len(shards))
    log.info("%s: %d rows in %d shards, %d skipped", source, rows, len(shards), skipped)
    return {"rows": rows, "shards": shards, "by_split": by_split, "skipped": skipped}


def required_files(source: str) -> list[tuple[str, str]]:
    """(path, Debian package providing it) for `source`; read at call time so tests can repoint them."""
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


# --------------------------------------------------------------------------- emoji


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


def emoji_candidates(image_size: int) -> Iterator[Candidate]:
    """Candidates for the drawable single-code-point CLDR emoji with a non-empty caption, in key order."""
    require("emoji")
    renderer = EmojiRenderer(EMOJI_FONT, image_size)
    annotations = read_annotations(CLDR_ANNOTATIONS)
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


# --------------------------------------------------------------------------- openclipart


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def svg_metadata_tree(path: str) -> ET.Element | None:
    """The <metadata> element of an SVG, parsing no further than its end; None when there is none."""
    with open(path, "rb") as fh:
        for _, el in ET.iterparse(fh, events=("end",)):
            if _local(el.tag) == "metadata":
                return el
    return None


def metadata_from_tree(meta: ET.Element) -> tuple[str, list[str]]:
    """(title, keywords) of the first cc:Work: its own dc:title child and dc:subject rdf:li texts."""
    work = next((e for e in meta.iter() if _local(e.tag) == "Work"), None)
    if work is None:
        return "", []
    title = next(((c.text or "").strip() for c in work if c.tag == f"{DC}title"), "")
    keywords = [(li.text or "").strip() for s in work if s.tag == f"{DC}subject" for li in s.iter(f"{RDF}li")]
    return title, keywords


def metadata_from_text(text: str) -> tuple[str, list[str]]:
    """Regex fallback of metadata_from_tree for SVGs that do not parse as XML."""
    m = re.search(r"<(\w+:)?Work\b[^>]*>(.*?)</(\w+:)?Work>", text, re.DOTALL)
    if not m:
        return "", []
    work = re.sub(r"<(\w+:)?Agent\b.*?</(\w+:)?Agent>", "", m.group(2), flags=re.DOTALL)
    t = re.search(r"<(?:\w+:)?title\b[^>]*>(.*?)</(?:\w+:)?title>", work, re.DOTALL)
    s = re.search(r"<(?:\w+:)?subject\b[^>]*>(.*?)</(?:\w+:)?subject>", work, re.DOTALL)
    lis = re.findall(r"<(?:\w+:)?li\b[^>]*>(.*?)</(?:\w+:)?li>", s.group(1), re.DOTALL) if s else []
    return (_clean(t.group(1)) if t else ""), [_clean(v) for v in lis]


def _clean(markup: str) -> str:
    """Text of an XML fragment: tags removed, entities decoded, stripped."""
    return html.unescape(re.sub(r"<[^>]*>", "", markup)).strip()


def svg_metadata(path: str) -> tuple[str, list[str]]:
    """(title, keywords) of an openclipart SVG; a parse error falls back to a regex on its head."""
    try:
        meta = svg_metadata_tree(path)
        return metadata_from_tree(meta) if meta is not None else ("", [])
    except ET.ParseError as exc:
        log.debug("%s: %s; reading metadata with a regex", path, exc)
        with open(path, "rb") as fh:
            return metadata_from_text(fh.read(SVG_HEAD_BYTES).decode("utf-8", errors="replace"))


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


def clipart_key(rel_png: str) -> str:
    return "openclipart-" + hashlib.sha1(rel_png.encode("utf-8")).hexdigest()[:12]


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


def clipart_candidates(image_size: int) -> Iterator[Candidate]:
    """Candidates for every openclipart PNG (sorted paths), in key order."""
    require("openclipart")
    root = OPENCLIPART_ROOT
    for key, rel in sorted((clipart_key(rel), rel) for rel in clipart_files(root)):
        yield Candidate(key, lambda rel=rel: clipart_entry(root, rel, image_size))


# --------------------------------------------------------------------------- entry point


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
    makers = {"emoji": emoji_candidates, "openclipart": clipart_candidates}
    summary: dict = {
        "rows": 0,
        "shards": [],
        "by_split": {"train": 0, "val": 0, "test": 0},
        "sources": {},
        "skipped": 0,
    }
    for name in wanted:
        part = write_source(output, name, makers[name](image_size), limit=limit, shard_rows=shard_rows)
        summary["rows"] += part["rows"]
        summary["shards"] += part["shards"]
        summary["skipped"] += part["skipped"]
        summary["sources"][name] = part["rows"]
        for split, n in part["by_split"].items():
            summary["by_split"][split] += n
    return summary
