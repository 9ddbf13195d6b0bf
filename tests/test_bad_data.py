"""Nothing lost: every awkward input kind, its outcome, and the docs/bad-data.md table built from it."""

from __future__ import annotations

import os
import re
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import CLIPProcessor

from encoders.errors import InputError
from encoders.images import ImageRejected, decode_image
from encoders.loading import ModelLoadError, resolve_model_dir
from encoders.models import describe_checkpoint, load_towers
from index_builder.embeddings import list_shards
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from tests import images

ROOT = os.path.dirname(os.path.dirname(__file__))
GOOD = images.save(images.base(), "JPEG", quality=90)
LONG = "a red triangle " * 7000  # 105,000 characters

# (input kind, row fields) -> expected outcome; docs/bad-data.md's table is checked against this.
IMAGE_CASES = {
    **{k: (v, "embedded") for k, v in images.valid_images().items()},
    **{k: (v, f"rejected: `{r}`") for k, (v, r) in images.bad_images().items()},
}
CAPTION_CASES = {
    "caption null": (None, "embedded, fused = image vector (`empty_caption`)"),
    "caption empty": ("", "embedded, fused = image vector (`empty_caption`)"),
    "caption whitespace only": (" \t\n ", "embedded, fused = image vector (`empty_caption`)"),
    "caption of 105,000 characters": (LONG, "embedded, caption truncated to the model's context"),
    "caption with emoji and CJK": ("red triangle 🔺 赤い三角形 빨간 삼각형", "embedded"),
    "caption with control characters": ("red\x00tri\x07angle\r\n", "embedded"),
}
OTHER_CASES = {
    "caption not valid UTF-8 (binary caption column)": "embedded, bad bytes replaced by U+FFFD",
    "id null": "rejected: `null_id`",
    "id duplicated across shards (later copy)": "rejected: `duplicate_id` (first copy by input order kept)",
    "status not `success`": "skipped (counted)",
    "empty shard (0 rows)": "nothing to embed; counted as 0 rows",
}


def _schema(caption_type: pa.DataType | None = None):
    return pa.schema(
        [("key", pa.string()), ("caption", caption_type or pa.string()), ("status", pa.string()), ("jpg", pa.binary())]
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("bad")
    rows, expect = [], {}
    for i, (kind, (data, _)) in enumerate(IMAGE_CASES.items()):
        rows.append({"key": f"img{i}", "caption": "a red triangle", "status": "success", "jpg": data})
        expect[kind] = f"img{i}"
    for i, (kind, (caption, _)) in enumerate(CAPTION_CASES.items()):
        rows.append({"key": f"cap{i}", "caption": caption, "status": "success", "jpg": GOOD})
        expect[kind] = f"cap{i}"
    rows += [
        {"key": None, "caption": "no id", "status": "success", "jpg": GOOD},
        {"key": "dup", "caption": "first copy", "status": "success", "jpg": GOOD},
        {"key": "failed", "caption": "x", "status": "failed_to_download", "jpg": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), root / "a.parquet", row_group_size=10)
    second = [
        {"key": "dup", "caption": b"second copy", "status": "success", "jpg": GOOD},
        {"key": "latin1", "caption": "caf\xe9 cr\xe8me".encode("latin-1"), "status": "success", "jpg": GOOD},
    ]
    pq.write_table(pa.Table.from_pylist(second, schema=_schema(pa.binary())), root / "b.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=_schema()), root / "c.parquet")
    manifest = run_embed(
        EmbedSettings(inputs=[str(root / "*.parquet")], output=str(root / "out"), model=tiny_clip, batch_size=4)
    ).to_dict()
    out = pa.concat_tables([pq.read_table(s.path) for s in list_shards(str(root / "out"))])
    rejects = pq.read_table(root / "out" / "rejects").to_pylist()
    return manifest, out, rejects, expect


def _outcome(key, out, rejects):
    ids = out.column("id").to_pylist()
    if key in ids:
        return "embedded"
    reasons = [r["reason"] for r in rejects if r["id"] == key]
    return f"rejected: `{reasons[0]}`" if reasons else "missing"


@pytest.mark.beam
def test_every_image_kind_has_its_outcome(run):
    manifest, out, rejects, expect = run
    for kind, (_, outcome) in IMAGE_CASES.items():
        assert _outcome(expect[kind], out, rejects) == outcome, kind


@pytest.mark.beam
def test_caption_kinds_and_other_rows(run, tiny_clip):
    manifest, out, rejects, expect = run
    table = {r["id"]: r for r in out.to_pylist()}
    for kind, (_, outcome) in CAPTION_CASES.items():
        assert _outcome(expect[kind], out, rejects) == "embedded", kind
        row = table[expect[kind]]
        if "empty_caption" in outcome:
            assert np.allclose(row["fused_embedding"], row["image_embedding"]) and not any(row["text_embedding"])
        else:
            assert abs(np.linalg.norm(row["text_embedding"]) - 1) < 1e-5
    long_row = table[expect["caption of 105,000 characters"]]
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    towers = load_towers(tiny_clip, device="cpu")
    with torch.no_grad():
        tokens = processor(text=[LONG], return_tensors="pt", truncation=True, max_length=77)
        direct = torch.nn.functional.normalize(towers.model.get_text_features(**tokens).pooler_output, dim=-1)[
            0
        ].numpy()
    assert float(np.dot(direct, long_row["text_embedding"])) >= 0.999
    assert table["latin1"]["caption"] == "caf\ufffd cr\ufffdme"
    assert table["dup"]["caption"] == "first copy"
    dup = [r for r in rejects if r["id"] == "dup"]
    assert len(dup) == 1 and dup[0]["reason"] == "duplicate_id" and dup[0]["source_file"].endswith("b.parquet")
    assert "a.parquet row " in dup[0]["message"]
    assert [r["reason"] for r in rejects if r["id"] is None] == ["null_id"]
    c = manifest["counts"]
    assert c["read"] == len(IMAGE_CASES) + len(CAPTION_CASES) + 3 + 2
    assert c["skipped"] == 1 and c["empty_caption"] == 3
    assert c["embedded"] == out.num_rows == len(IMAGE_CASES) - len(images.bad_images()) + len(CAPTION_CASES) + 2
    assert c["rejected"] == len(rejects) == len(images.bad_images()) + 2
    assert sum(c["rejects_by_reason"].values()) == c["rejected"]


def test_docs_table_matches_the_tests():
    page = open(os.path.join(ROOT, "docs", "bad-data.md"), encoding="utf-8").read()
    section = page.split("## What happens to bad data", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)[2:])
    expected = {
        **{k: v[1] for k, v in IMAGE_CASES.items()},
        **{k: v[1] for k, v in CAPTION_CASES.items()},
        **OTHER_CASES,
    }
    missing = {k: v for k, v in expected.items() if table.get(k) != v}
    assert not missing, f"docs/bad-data.md 'What happens to bad data' is out of date for: {missing}"


def test_valid_odd_images_decode_correctly():
    data, upright = images.exif_rotated_jpeg()
    img = decode_image(data).convert("RGB")
    assert img.size == upright.size
    assert np.abs(np.asarray(img, np.int16) - np.asarray(upright, np.int16)).mean() < 8
    data, arr = images.sixteen_bit_png()
    assert np.array_equal(np.asarray(decode_image(data)), (arr >> 8).astype(np.uint8))
    for fmt in ("GIF", "WEBP"):
        first = decode_image(images.animated(fmt)).convert("RGB").getpixel((20, 20))
        assert first[0] > 200 and first[2] < 60, (fmt, first)
    cmyk = decode_image(images.valid_images()["CMYK JPEG"]).convert("RGB").getpixel((40, 30))
    assert cmyk[0] > 150 and cmyk[1] < 100, cmyk


def test_extreme_aspect_images_match_a_direct_processor_call(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    for size in ((2001, 3), (3, 1500), (1, 1)):
        img = images.base((max(size), max(size))).resize(size)
        ours = towers.encode_images([img])[0].numpy()
        with torch.no_grad():
            direct = towers.model.get_image_features(**processor(images=[img], return_tensors="pt")).pooler_output
        direct = torch.nn.functional.normalize(direct, dim=-1)[0].numpy()
        assert float(np.dot(ours, direct)) >= 0.999, size
    strip = Image.new("RGB", (200_000, 1), (10, 200, 10))  # would be 6.4M x 32 px unbounded
    assert towers.encode_images([strip]).shape == (1, towers.dim)


@pytest.mark.beam
def test_bad_files_fail_by_name_or_are_skipped_and_recorded(tmp_path, tiny_clip):
    good = [{"key": str(i), "caption": "c", "status": "success", "jpg": GOOD} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(good, schema=_schema()), tmp_path / "good.parquet", row_group_size=3)
    (tmp_path / "torn.parquet").write_bytes(b"PAR1" + os.urandom(200))  # a writer died: no footer
    cfg = EmbedSettings(inputs=[str(tmp_path / "*.parquet")], output=str(tmp_path / "out"), model=tiny_clip)
    with pytest.raises(InputError, match="torn.parquet"):
        run_embed(cfg)
    cfg = replace(cfg, skip_bad_files=True)
    m = run_embed(cfg).to_dict()
    assert m["counts"]["embedded"] == 6 and [b["path"] for b in m["bad_files"]] == [str(tmp_path / "torn.parquet")]
    # A corrupt row group inside a readable file: its rows are rejected, not lost.
    path = tmp_path / "good.parquet"
    pf = pq.ParquetFile(path)
    start = pf.metadata.row_group(1).column(3).data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    m = run_embed(cfg).to_dict()
    c = m["counts"]
    assert (c["read"], c["embedded"], c["rejected"]) == (6, 3, 3)
    assert c["rejects_by_reason"] == {"unreadable_row_group": 3}
    assert {b["row_group"] for b in m["bad_files"]} == {None, 1}
    # the same when a read-ahead thread reads the row groups (with decode-ahead, the CUDA default)
    m = run_embed(replace(cfg, decode_ahead="on", output=str(tmp_path / "out-ahead"))).to_dict()
    assert m["counts"] == c and {b["row_group"] for b in m["bad_files"]} == {None, 1}
    assert "read" in m["timings"]["decode_ahead_s"] and "wait" in m["timings"]["stages_s"]


@pytest.mark.beam
def test_duplicate_policy_allow_keeps_every_copy(tmp_path, tiny_clip):
    rows = [{"key": "same", "caption": f"copy {i}", "status": "success", "jpg": GOOD} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp_path / "in.parquet")
    m = run_embed(
        EmbedSettings(
            inputs=[str(tmp_path / "in.parquet")], output=str(tmp_path / "o"), model=tiny_clip, duplicate_ids="allow"
        )
    ).to_dict()
    assert m["counts"]["embedded"] == 3
    m = run_embed(
        EmbedSettings(inputs=[str(tmp_path / "in.parquet")], output=str(tmp_path / "o"), model=tiny_clip)
    ).to_dict()
    assert m["counts"]["embedded"] == 1 and m["counts"]["rejects_by_reason"] == {"duplicate_id": 2}


def test_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path, tiny_clip):
    import shutil

    bad = tmp_path / "mismatch"
    shutil.copytree(tiny_clip, bad)
    processor = CLIPProcessor.from_pretrained(bad)
    processor.tokenizer.add_tokens([f"<extra{i}>" for i in range(10)])
    processor.save_pretrained(bad)
    with pytest.raises(ModelLoadError, match="tokenizer has 524 tokens but the text tower embeds only 514"):
        describe_checkpoint(resolve_model_dir(str(bad)))
    with pytest.raises(ModelLoadError, match="does not belong to this model"):
        load_towers(str(bad), device="cpu")


def test_pixel_cap_is_configurable(tiny_clip):
    big = images.save(Image.new("RGB", (3000, 2000), (1, 2, 3)), "PNG")
    assert decode_image(big).size == (3000, 2000)
    with pytest.raises(ImageRejected) as err:
        decode_image(big, max_pixels=5_000_000)
    assert err.value.reason == "too_many_pixels"
    assert decode_image(big, max_pixels=6_000_000).size == (3000, 2000)


@pytest.mark.beam
def test_the_default_tensor_path_agrees_with_the_pil_path(run, tiny_clip, tmp_path):
    """The run fixture's default (auto: the tensor path on a CPU) against `--preprocess pil` on every
    awkward kind: the same rows embedded, rejected (same reasons) and skipped, and the same vectors."""
    manifest, out, rejects, expect = run
    src = os.path.dirname(manifest["inputs"][0])
    m = run_embed(
        EmbedSettings(
            inputs=[os.path.join(src, "*.parquet")],
            output=str(tmp_path / "p"),
            model=tiny_clip,
            batch_size=4,
            preprocess="pil",
        )
    ).to_dict()
    assert m["counts"] == manifest["counts"]  # the same rows embedded, rejected (same reasons), skipped
    p_out = pa.concat_tables([pq.read_table(s.path) for s in list_shards(str(tmp_path / "p"))])
    assert p_out.column("id").equals(out.column("id"))
    a = np.array(p_out.column("image_embedding").to_pylist())
    b = np.array(out.column("image_embedding").to_pylist())
    cos = np.sum(a * b, axis=1)
    assert manifest["runtime"]["preprocess"] == "tensor" and m["runtime"]["preprocess"] == "pil"
    assert cos.min() >= 0.999, sorted(cos)[:5]
