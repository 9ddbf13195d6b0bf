"""An embed run against a previous one (what a nightly reindex does): a Beam join by id, exact
new / changed / unchanged / deleted counts, unchanged rows' vectors copied byte for byte."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from encoders.random_models import make_random_clip
from index_builder.embeddings import arrow_to_vectors, list_shards
from index_builder.records import PreviousRun
from pipelines.datasets import img2dataset
from pipelines.datasets.sample import COLOURS, draw, make_sample
from pipelines.embed.run import previous_run, run_embed
from pipelines.embed.settings import TENSOR_REVISION, EmbedSettings

pytestmark = [pytest.mark.beam]


def rows_of(directory: str) -> dict[str, dict]:
    out = {}
    for name in sorted(os.listdir(directory)):
        for r in pq.read_table(os.path.join(directory, name)).to_pylist():
            out[r["key"]] = r
    return out


def vectors(emb: str) -> dict[str, dict[str, bytes]]:
    table = pq.read_table(os.path.dirname(list_shards(emb)[0].path))
    cols = {c: arrow_to_vectors(table.column(c))[0] for c in ("image_embedding", "text_embedding", "fused_embedding")}
    return {i: {c: cols[c][k].tobytes() for c in cols} for k, i in enumerate(table.column("id").to_pylist())}


def night_two(night1: str, out: str) -> dict[str, set[str]]:
    """Night 1's shards with 3 images and 2 captions changed, 4 rows gone, 1 row failed, 5 new
    rows; returns the ids expected in each class."""
    os.makedirs(out)
    rows = rows_of(night1)
    success = [k for k, r in rows.items() if r["status"] == "success"]
    changed_image, changed_caption, gone, failed = success[0:3], success[3:5], success[5:9], success[9:10]
    expect = {"changed": set(changed_image + changed_caption), "deleted": set(gone + failed), "new": set()}
    for name in sorted(os.listdir(night1)):
        records = []
        fmt = "jpg" if "jpg" in pq.read_schema(os.path.join(night1, name)).names else "png"
        for r in pq.read_table(os.path.join(night1, name)).to_pylist():
            if r["key"] in gone:
                continue
            if r["key"] in changed_image:
                r[fmt] = img2dataset.encode(draw("cross", COLOURS["pink"], (0, 0, 0), 70), fmt)
            if r["key"] in changed_caption:
                r["caption"] += ", now on sale"
            if r["key"] in failed:
                r["status"], r[fmt] = "failed_to_download", None
            records.append(r)
        if name == sorted(os.listdir(night1))[-1]:
            for i in range(5):
                key = f"new{i}"
                data = img2dataset.encode(draw("ring", COLOURS["green"], (255, 255, 255), 40 + i), fmt)
                records.append(
                    img2dataset.record(key, f"a new green ring {i}", fmt, data, size=(40 + i, 40 + i), query="x")
                )
                expect["new"].add(key)
        img2dataset.write(os.path.join(out, name), records, fmt, extra=("query",), row_group_size=12)
    today = {k for k, r in rows_of(out).items() if r["status"] == "success"}
    expect["unchanged"] = today - expect["changed"] - expect["new"]
    return expect


@pytest.fixture(scope="module")
def nights(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("nights")
    make_sample(str(root / "in1"), rows=60, shards=2, failed_per_shard=2, seed=4, row_group_size=12)
    expect = night_two(str(root / "in1"), str(root / "in2"))
    first = run_embed(
        EmbedSettings(inputs=(str(root / "in1"),), output=str(root / "e1"), model=tiny_clip, batch_size=8)
    ).to_dict()
    second = run_embed(
        EmbedSettings(inputs=(str(root / "in2"),), output=str(root / "e2"), model=tiny_clip, batch_size=8),
        previous=str(root / "e1"),
    ).to_dict()
    return root, expect, first, second


def test_night_two_counts_every_class_exactly(nights):
    root, expect, first, second = nights
    c = second["counts"]
    assert {k: c[k] for k in ("new", "changed", "unchanged", "deleted")} == {k: len(v) for k, v in expect.items()}
    assert c["embedded"] == len(vectors(str(root / "e2"))) == c["new"] + c["changed"] + c["unchanged"]
    assert first["counts"]["new"] == first["counts"]["embedded"] and "deleted" not in first["counts"]
    assert second["previous"]["comparable"] is True and second["previous"]["path"] == str(root / "e1")
    ids = set(vectors(str(root / "e2")))
    assert ids == expect["new"] | expect["changed"] | expect["unchanged"]


def test_unchanged_rows_copy_their_vectors_and_the_rest_are_embedded(nights, tiny_clip, tmp_path):
    root, expect, first, second = nights
    one, two = vectors(str(root / "e1")), vectors(str(root / "e2"))
    assert all(two[i] == one[i] for i in expect["unchanged"])  # byte for byte
    assert all(two[i]["image_embedding"] != one[i]["image_embedding"] for i in sorted(expect["changed"])[:3])
    assert all(two[i]["text_embedding"] != one[i]["text_embedding"] for i in sorted(expect["changed"])[3:])
    full = run_embed(
        EmbedSettings(inputs=(str(root / "in2"),), output=str(tmp_path / "full"), model=tiny_clip, batch_size=8)
    ).to_dict()
    rebuilt = vectors(str(tmp_path / "full"))
    assert set(rebuilt) == set(two) and full["counts"]["new"] == full["counts"]["embedded"]
    for i in expect["changed"] | expect["new"]:
        for col, raw in two[i].items():
            a, b = np.frombuffer(raw, np.float32), np.frombuffer(rebuilt[i][col], np.float32)
            assert float(a @ b) >= 0.99999, (i, col)


def test_another_model_makes_every_row_seen_before_changed(nights, tmp_path):
    root, expect, first, second = nights
    other = str(make_random_clip(tmp_path / "other-clip", seed=7))
    m = run_embed(
        EmbedSettings(inputs=(str(root / "in2"),), output=str(tmp_path / "e"), model=other, batch_size=8),
        previous=str(root / "e1"),
    ).to_dict()
    c = m["counts"]
    assert m["previous"]["comparable"] is False
    assert m["previous"]["reason"] == "the model's weights or preprocessing changed", m["previous"]
    assert (c["unchanged"], c["changed"], c["new"]) == (
        0,
        len(expect["changed"] | expect["unchanged"]),
        len(expect["new"]),
    )


def test_another_preprocessing_path_makes_every_row_seen_before_changed(nights, tiny_clip, tmp_path):
    """The pixels are part of what a vector means: night 1 ran auto (the tensor path on a CPU, the
    checkpoint having a tensor recipe); a night asking for the PIL path copies none of its vectors."""
    root, expect, first, second = nights
    assert first["runtime"]["preprocess"] == "tensor" and first["settings"]["preprocess"] == "auto"
    m = run_embed(
        EmbedSettings(
            inputs=(str(root / "in2"),), output=str(tmp_path / "e"), model=tiny_clip, batch_size=8, preprocess="pil"
        ),
        previous=str(root / "e1"),
    ).to_dict()
    assert m["previous"]["comparable"] is False
    assert m["previous"]["reason"] == f"the preprocessing changed (tensor r{TENSOR_REVISION} -> pil)", m["previous"]
    assert (m["counts"]["unchanged"], m["counts"]["new"]) == (0, len(expect["new"]))


def test_yesterdays_preprocessing_is_read_from_its_manifest_and_its_threads_are_not_compared(nights, tmp_path):
    """A manifest without the field (or without a runtime) was made when auto meant the PIL path on
    a CPU; a tensor runtime without a pixel revision made revision 1's pixels (a crop a pixel off);
    a runtime listed per thread share (shards made with other torch threads) is still one
    preprocessing path, and comparable."""
    root, expect, first, second = nights
    copy = str(tmp_path / "e1")
    shutil.copytree(root / "e1", copy)
    fingerprint, fusion = first["model"]["fingerprint"], first["fusion"]

    def compare(runtime, today: str) -> PreviousRun:
        manifest = json.loads((root / "e1" / "manifest.json").read_text())
        manifest["runtime"] = runtime
        with open(os.path.join(copy, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        return previous_run(copy, fingerprint, fusion, today)[1]

    tensor = f"tensor r{TENSOR_REVISION}"
    assert first["runtime"]["tensor_revision"] == TENSOR_REVISION
    old = {k: v for k, v in first["runtime"].items() if k not in ("preprocess", "tensor_revision")}
    for runtime in (old, None, {**old, "preprocess": "pil"}):
        assert compare(runtime, "pil").comparable, runtime
        changed = compare(runtime, tensor)
        assert not changed.comparable and changed.reason == f"the preprocessing changed (pil -> {tensor})", runtime
    unrevised = compare({**old, "preprocess": "tensor"}, tensor)
    assert unrevised.reason == f"the preprocessing changed (tensor r1 -> {tensor})"
    threads = [first["runtime"], {**first["runtime"], "threads": {**first["runtime"]["threads"], "threads": 1}}]
    assert compare(threads, tensor).comparable and compare(first["runtime"], tensor).comparable
    mixed = [first["runtime"], {**old, "preprocess": "pil"}]
    assert compare(mixed, tensor).reason == f"the preprocessing changed (pil+{tensor} -> {tensor})"


def test_exact_shapes_make_an_incremental_night_equal_a_full_rebuild_byte_for_byte(tmp_path):
    """With --exact-shapes a row's vectors do not depend on the rows batched with it, so copying
    night 1's vectors gives what a full rebuild of night 2 computes, to the last bit. (Without it,
    batch sizes and text padding shift when rows come and go: about 1e-7 apart, docs/performance.md.)"""
    clip = str(make_random_clip(tmp_path / "clip", image_size=64, patch_size=16, hidden_size=128, num_layers=3))
    make_sample(str(tmp_path / "in1"), rows=80, shards=2, failed_per_shard=2, seed=9, row_group_size=20)
    expect = night_two(str(tmp_path / "in1"), str(tmp_path / "in2"))

    def run(night: str, out: str, **kw):
        s = EmbedSettings(
            inputs=(str(tmp_path / night),), output=str(tmp_path / out), model=clip, batch_size=8, exact_shapes=True
        )
        return run_embed(s, **kw)

    run("in1", "e1")
    run("in2", "e2", previous=str(tmp_path / "e1"))
    run("in2", "full")
    two, full = vectors(str(tmp_path / "e2")), vectors(str(tmp_path / "full"))
    assert set(two) == set(full) and len(expect["unchanged"]) > 50
    assert all(two[i] == full[i] for i in two)
