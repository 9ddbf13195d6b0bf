"""Parquet written by Hugging Face `datasets` itself (the `Image` feature, struct<bytes, path>, with
`id`/`text` columns and no status): planned, embedded like img2dataset's, bad structs rejected."""

from __future__ import annotations

import io
import os

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from encoders.errors import InputError
from index_builder.embeddings import arrow_to_vectors, list_shards
from pipelines.cli import main
from pipelines.datasets.img2dataset import encode
from pipelines.datasets.items import load_items
from pipelines.datasets.sample import COLOURS, SHAPES, draw
from pipelines.inputs import Columns, plan_inputs, read_unit

HF = ["--id-column", "id", "--caption-column", "text"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A `datasets` Dataset saved with to_parquet: good JPEG/PNG bytes, PIL images (datasets encodes
    them), a caption-less row, and three bad images: none, a path-only struct, bytes that are no image."""
    root = tmp_path_factory.mktemp("hf")
    outside = root / "photos"
    outside.mkdir()
    draw("ring", (0, 0, 200), (255, 255, 255), 60).save(outside / "kept-outside.jpg")
    ids, texts, pictures, expected = [], [], [], {}
    for i, (shape, colour) in enumerate((s, c) for s in SHAPES for c in list(COLOURS)[:3]):
        img = draw(shape, COLOURS[colour], (255, 255, 255), 40 + 7 * i)
        pictures.append(
            img.convert("RGBA") if i % 5 == 0 else {"bytes": encode(img, "jpg" if i % 2 else "png"), "path": None}
        )
        ids.append(100 + i)
        texts.append(None if i == 3 else f"a {colour} {shape}")
        expected[str(100 + i)] = "embedded"
    for i, (picture, reason) in enumerate(
        [
            (None, "missing_image"),
            (str(outside / "kept-outside.jpg"), "image_path_only"),
            ({"bytes": b"<html>gone</html>", "path": None}, "not_an_image"),
        ]
    ):
        ids.append(900 + i)
        texts.append("a broken row")
        pictures.append(picture)
        expected[str(900 + i)] = reason
    features = datasets.Features(
        {"id": datasets.Value("int64"), "text": datasets.Value("string"), "image": datasets.Image()}
    )
    ds = datasets.Dataset.from_dict({"id": ids, "text": texts, "image": pictures}, features=features)
    (root / "data").mkdir()
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return str(root / "data"), expected


def test_the_image_struct_is_detected_and_read(hf_dir):
    path, expected = hf_dir
    schema = pq.read_schema(os.path.join(path, "train-00000-of-00001.parquet"))
    assert (
        str(schema.field("image").type) == "struct<bytes: binary, path: string>" and b"huggingface" in schema.metadata
    )
    with pytest.raises(InputError, match="missing column 'key' .*--id-column id --caption-column text"):
        plan_inputs([path], Columns())
    plan = plan_inputs([path], Columns(id="id", caption="text"))
    unit = plan.units[0]
    assert unit.columns.image == "image" and unit.columns.image_struct and unit.columns.status is None
    rows = {r.id: r for r in read_unit(unit)}
    assert set(rows) == set(expected)
    assert rows["900"].image is None and rows["900"].image_path is None
    assert rows["901"].image is None and rows["901"].image_path.endswith("kept-outside.jpg")
    assert Image.open(io.BytesIO(rows["100"].image)).format == "PNG"  # datasets encoded the PIL image


@pytest.mark.beam
def test_embed_matches_a_direct_transformers_call_and_rejects_bad_structs(hf_dir, tiny_clip, tmp_path, capsys):
    path, expected = hf_dir
    out = str(tmp_path / "out")
    assert main(["-q", "embed", "--input", path, "--output", out, "--model", tiny_clip, "--batch-size", "4", *HF]) == 0
    table = pq.read_table(list_shards(out)[0].path)
    rejects = {r["id"]: r["reason"] for r in pq.read_table(os.path.join(out, "rejects")).to_pylist()}
    assert {i: "embedded" for i in table.column("id").to_pylist()} | rejects == expected

    source = {r.id: r for r in read_unit(plan_inputs([path], Columns(id="id", caption="text")).units[0])}
    ids = table.column("id").to_pylist()
    images = [Image.open(io.BytesIO(source[i].image)) for i in ids]
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        direct = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        with_text = [i for i in ids if source[i].caption]
        tokens = processor(text=[source[i].caption for i in with_text], return_tensors="pt", padding=True)
        direct_text = model.get_text_features(**tokens).pooler_output
    direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    direct_text = torch.nn.functional.normalize(direct_text, dim=-1).numpy()
    ours, _ = arrow_to_vectors(table.column("image_embedding"))
    ours_text, has_text = arrow_to_vectors(table.column("text_embedding"))
    assert np.sum(ours * direct, axis=1).min() >= 0.999
    assert np.sum(ours_text[has_text] * direct_text, axis=1).min() >= 0.999
    assert has_text.tolist() == [bool(source[i].caption) for i in ids]


def test_training_reads_the_same_file_through_the_same_reader(hf_dir):
    path, expected = hf_dir
    items = load_items([path], "train", Columns(id="id", caption="text", query="query", split="split"))
    assert {it.id for it in items} == {
        i for i, e in expected.items() if e != "missing_image" and e != "image_path_only"
    }
