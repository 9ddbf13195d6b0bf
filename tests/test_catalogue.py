"""Real-data catalogue from Debian packages (emoji font + CLDR, openclipart): schema, bytes, splits.

Tests that read the packages' files skip (with the apt-get line) where they are not installed;
the pure functions are tested everywhere."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from encoders.errors import InputError
from pipelines.datasets import catalogue
from pipelines.datasets.catalogue import make_catalogue, split_of
from pipelines.datasets.catalogue.emoji import emoji_caption, is_single_code_point
from pipelines.datasets.catalogue.openclipart import clipart_files, clipart_key, clipart_texts, path_words
from pipelines.datasets.catalogue.svg import SVG_HEAD_BYTES, metadata_from_text, svg_metadata
from pipelines.inputs import Columns, plan_inputs

NEEDED = [
    catalogue.EMOJI_FONT,
    catalogue.CLDR_ANNOTATIONS,
    os.path.join(catalogue.OPENCLIPART_ROOT, "png"),
    os.path.join(catalogue.OPENCLIPART_ROOT, "svg"),
]
needs_packages = pytest.mark.skipif(
    not all(os.path.exists(p) for p in NEEDED),
    reason="needs the Debian packages: "
    "apt-get install -y fonts-noto-color-emoji unicode-cldr-core openclipart-png openclipart-svg",
)

COLUMNS = [
    "key",
    "caption",
    "query",
    "split",
    "url",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
]
TYPES = {"width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(), "original_height": pa.int32()}


@pytest.fixture(scope="module")
def emoji(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("emoji"))
    return out, make_catalogue(out, source="emoji", limit=60)


@pytest.fixture(scope="module")
def clipart(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("openclipart"))
    return out, make_catalogue(out, source="openclipart", limit=40)


def read_rows(summary: dict, image_column: str) -> list[dict]:
    rows = []
    for path in summary["shards"]:
        table = pq.read_table(path)
        assert table.schema.names == COLUMNS + [image_column]
        for name in table.schema.names:
            expected = TYPES.get(name, pa.binary() if name == image_column else pa.string())
            assert table.schema.field(name).type == expected, name
        rows += table.to_pylist()
    return rows


def check_rows(rows: list[dict], summary: dict, image_column: str, image_format: str) -> None:
    assert len(rows) == summary["rows"]
    assert len({r["key"] for r in rows}) == len(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == summary["by_split"]
    for r in rows:
        assert r["split"] == split_of(r["key"])
        assert r["status"] == "success" and r["url"] is None and r["error_message"] is None and r["exif"] is None
        data = r[image_column]
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == image_format
            assert img.size == (r["width"], r["height"])
            img.load()
        assert r["caption"]
        if r["query"] is not None:
            assert r["query"] != r["caption"]
            assert r["query"].casefold() not in [k.casefold() for k in r["caption"].split(", ")]


@needs_packages
def test_emoji_catalogue(emoji):
    out, summary = emoji
    assert summary["rows"] == 60 and summary["sources"] == {"emoji": 60}
    assert [os.path.basename(p) for p in summary["shards"]] == ["emoji-00000.parquet"]
    rows = read_rows(summary, "png")
    check_rows(rows, summary, "png", "PNG")
    assert all(r["key"].startswith("emoji-") and r["query"] for r in rows)
    assert all((r["width"], r["height"]) == (224, 224) for r in rows)
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert len({r["sha256"] for r in rows}) == len(rows)  # every emoji draws a different picture
    plan = plan_inputs([out], Columns())
    assert plan.total_rows == 60 and {u.columns.image for u in plan.units} == {"png"}


@needs_packages
def test_emoji_images_are_drawn_not_blank(emoji):
    _, summary = emoji
    for r in read_rows(summary, "png")[:10]:
        img = Image.open(io.BytesIO(r["png"])).convert("RGB")
        colours = img.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # a real colour glyph, not an empty white square


@needs_packages
def test_openclipart_catalogue(clipart):
    out, summary = clipart
    assert summary["rows"] == 40 and summary["sources"] == {"openclipart": 40}
    assert [os.path.basename(p) for p in summary["shards"]] == ["openclipart-00000.parquet"]
    rows = read_rows(summary, "jpg")
    check_rows(rows, summary, "jpg", "JPEG")
    assert all(r["key"].startswith("openclipart-") for r in rows)
    assert all(max(r["width"], r["height"]) <= 224 for r in rows)
    assert sum(r["query"] is not None for r in rows) >= 0.8 * len(rows)
    assert all("unsorted" not in r["caption"].split(", ") for r in rows)
    plan = plan_inputs([out], Columns())
    assert plan.total_rows == 40 and {u.columns.image for u in plan.units} == {"jpg"}


def texts(summary: dict, prefix: str) -> list[tuple]:
    """(key, caption, query) of the summary's rows whose key starts with `prefix`, in file order."""
    cols = ["key", "caption", "query"]
    return [
        (r["key"], r["caption"], r["query"])
        for p in summary["shards"]
        for r in pq.read_table(p, columns=cols).to_pylist()
        if r["key"].startswith(prefix)
    ]


@needs_packages
def test_both_sources_shard_per_source_and_are_deterministic(tmp_path, emoji, clipart):
    summary = make_catalogue(str(tmp_path), source="both", limit=25, shard_rows=10)
    names = sorted(os.path.basename(p) for p in summary["shards"])
    assert names == [f"emoji-{i:05d}.parquet" for i in range(3)] + [f"openclipart-{i:05d}.parquet" for i in range(3)]
    assert summary["sources"] == {"emoji": 25, "openclipart": 25} and summary["rows"] == 50
    assert plan_inputs([str(tmp_path)], Columns()).total_rows == 50
    # the first rows by key are the same rows whatever the limit and shard size
    assert texts(summary, "emoji") == texts(emoji[1], "emoji")[:25]
    assert texts(summary, "openclipart") == texts(clipart[1], "openclipart")[:25]
    again = make_catalogue(str(tmp_path), source="both", limit=25, shard_rows=10)
    assert texts(again, "emoji") == texts(summary, "emoji") and texts(again, "openclipart") == texts(
        summary, "openclipart"
    )
    # a smaller rerun into the same directory leaves no stale shards behind
    make_catalogue(str(tmp_path), source="emoji", limit=5, shard_rows=10)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("emoji-")) == ["emoji-00000.parquet"]


def test_split_of_is_stable_across_processes_and_80_10_10():
    """The split of a key must not depend on the process (e.g. Python's salted hash()): a fresh
    interpreter with another hash seed must assign every key the same split."""
    keys = [f"item-{i}" for i in range(10_000)]
    splits = [split_of(k) for k in keys]
    code = (
        "from pipelines.datasets.catalogue import split_of; "
        "print(''.join(split_of(f'item-{i}')[0] for i in range(10_000)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert other == "".join(s[0] for s in splits)
    for name, share in (("train", 80), ("val", 10), ("test", 10)):
        assert abs(100 * splits.count(name) / len(keys) - share) <= 3, name


def test_caption_and_query_rules_without_the_packages():
    assert emoji_caption("grinning face", ["face", "Grinning Face", "grin", "face"]) == "face, grin"
    assert is_single_code_point("\U0001f600") and is_single_code_point("\u2764\ufe0f")
    assert not is_single_code_point("\U0001f468\u200d\U0001f469")
    assert path_words("animals/big_cats/lion-roaring_02.png") == ["animals", "big cats", "lion", "roaring"]
    caption, query = clipart_texts("Lion", ["lion", "cat", "unsorted", "big_cat"], "animals/lion_01.png")
    assert (caption, query) == ("cat, big cat, animals", "Lion")
    only = clipart_texts("Lion", [], "lion.png")  # the title is the only term: the caption keeps it
    assert only == ("lion", None)
    with pytest.raises(catalogue.SkipItem):
        clipart_texts("", [], "a_1.png")


def test_svg_metadata_regex_reads_title_and_keywords_without_the_packages():
    svg = (
        '<svg xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:cc="http://creativecommons.org/ns#" '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF><cc:Work>'
        "<dc:title>Red &amp; Green Apple</dc:title><cc:Agent><dc:title>author name</dc:title></cc:Agent>"
        "<dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li> apple </rdf:li></rdf:Bag></dc:subject>"
        "</cc:Work></rdf:RDF></metadata></svg>"
    )
    assert metadata_from_text(svg) == ("Red & Green Apple", ["fruit", "apple"])


def test_missing_package_is_named(tmp_path, monkeypatch):
    (tmp_path / "en.xml").write_text("<ldml/>")  # CLDR present, the font missing
    monkeypatch.setattr(catalogue, "CLDR_ANNOTATIONS", str(tmp_path / "en.xml"))
    monkeypatch.setattr(catalogue, "EMOJI_FONT", str(tmp_path / "nope" / "NotoColorEmoji.ttf"))
    with pytest.raises(InputError) as err:
        make_catalogue(str(tmp_path / "out"), source="emoji")
    msg = str(err.value)
    assert "fonts-noto-color-emoji" in msg and "apt-get install -y fonts-noto-color-emoji" in msg
    assert "unicode-cldr-core" not in msg.split("apt-get")[1]  # only the missing package is to install
    assert not (tmp_path / "out").exists()  # checked before writing anything
    monkeypatch.setattr(catalogue, "OPENCLIPART_ROOT", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="apt-get install -y openclipart-png openclipart-svg"):
        make_catalogue(str(tmp_path / "out"), source="openclipart")


@needs_packages
def test_regex_fallback_matches_xml_parse_on_real_svgs():
    for rel in clipart_files(catalogue.OPENCLIPART_ROOT)[::400]:
        svg = os.path.join(catalogue.OPENCLIPART_ROOT, "svg", rel[:-4] + ".svg")
        with open(svg, "rb") as fh:
            head = fh.read(SVG_HEAD_BYTES).decode("utf-8", errors="replace")
        assert metadata_from_text(head) == svg_metadata(svg), rel


@needs_packages
def test_bad_source_files_are_skipped_not_fatal(tmp_path, monkeypatch):
    src = catalogue.OPENCLIPART_ROOT
    rel = next(r for r in clipart_files(src) if r.startswith("animals/") and svg_metadata(f"{src}/svg/{r[:-4]}.svg")[0])
    png, svg = Path(f"{src}/png/{rel}").read_bytes(), Path(f"{src}/svg/{rel[:-4]}.svg").read_bytes()
    title = svg_metadata(f"{src}/svg/{rel[:-4]}.svg")[0]
    root = tmp_path / "openclipart"
    files = {
        "animals/cut_after_metadata_01": (
            png,
            svg[: svg.index(b"</metadata>") + len(b"</metadata>")],
        ),  # parse stops early
        "animals/malformed_head_01": (png, svg.replace(b"<metadata", b"<oops & <metadata", 1)),  # regex fallback
        "animals/broken_png_01": (b"\x89PNG not really", svg),
        "animals/no_svg_01": (png, None),
    }
    for stem, (png_bytes, svg_bytes) in files.items():
        (root / "png" / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / "svg" / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / "png" / f"{stem}.png").write_bytes(png_bytes)
        if svg_bytes is not None:
            (root / "svg" / f"{stem}.svg").write_bytes(svg_bytes)
    monkeypatch.setattr(catalogue, "OPENCLIPART_ROOT", str(root))
    summary = make_catalogue(str(tmp_path / "out"), source="openclipart")
    assert summary["rows"] == 2 and summary["skipped"] == 2
    rows = pq.read_table(summary["shards"][0]).to_pylist()
    assert [r["query"] for r in rows] == [title, title]
    assert all("animals" in r["caption"].split(", ") for r in rows)
    assert {r["key"] for r in rows} == {
        clipart_key(f"{s}.png") for s in ("animals/cut_after_metadata_01", "animals/malformed_head_01")
    }


@needs_packages
def test_writes_to_fsspec_urls():
    out = "memory://catalogue-test/out"
    summary = make_catalogue(out, source="emoji", limit=3, shard_rows=2)
    assert summary["shards"] == [f"{out}/emoji-00000.parquet", f"{out}/emoji-00001.parquet"]
    assert plan_inputs([out], Columns()).total_rows == 3
