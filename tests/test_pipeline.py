"""The embed pipeline on Beam's local runners over real JPEG/PNG bytes in Parquet."""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from encoders.errors import InputError
from index_builder.embeddings import arrow_to_vectors, list_shards, vectors_to_arrow
from pipelines.datasets.img2dataset import encode
from pipelines.datasets.sample import draw
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings


def read_dir(path):
    return pa.concat_tables([pq.read_table(s.path) for s in list_shards(path)])


def input_rows(sample_dir):
    tables = [pq.read_table(os.path.join(sample_dir, f)) for f in sorted(os.listdir(sample_dir))]
    rows = []
    for t in tables:
        image_col = "jpg" if "jpg" in t.column_names else "png"
        for r in t.to_pylist():
            rows.append({**r, "image": r[image_col]})
    return rows


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_clip, sample_dir):
    out = str(tmp_path_factory.mktemp("emb"))
    manifest = run_embed(
        EmbedSettings(inputs=[f"{sample_dir}/*.parquet"], output=out, model=tiny_clip, batch_size=8)
    ).to_dict()
    return out, manifest


@pytest.mark.beam
def test_every_success_row_embedded_once_with_ids_and_counts(embedded, sample_dir):
    out, manifest = embedded
    rows = input_rows(sample_dir)
    success = [r["key"] for r in rows if r["status"] == "success"]
    table = read_dir(out)
    assert table.column("id").to_pylist() == success  # once each, in input order
    c = manifest["counts"]
    assert (c["read"], c["embedded"], c["skipped"], c["rejected"]) == (
        len(rows),
        table.num_rows,
        len(rows) - len(success),
        0,
    )
    assert not os.path.exists(os.path.join(out, "rejects"))
    assert manifest["shards"] == 6 and len(list_shards(out)) == 6
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk == manifest and on_disk["dim"] == 16
    assert on_disk["model"]["fingerprint"].startswith("sha256:")
    assert on_disk["fusion"] == {"kind": "weighted", "alpha": 0.5, "beta": 0.5}
    for col in ("image_embedding", "text_embedding", "fused_embedding"):
        assert table.schema.field(col).type == pa.list_(pa.float32(), 16)
        x, _ = arrow_to_vectors(table.column(col))
        assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)


@pytest.mark.beam
def test_manifest_stage_timings_add_up_to_the_unit_time(embedded):
    _, manifest = embedded
    t = manifest["timings"]
    stages = t["stages_s"]
    # the default (tensor) path on a CPU: every stage of the list ran (copy and wait did
    # not: no previous run, no decode-ahead on a CPU)
    assert set(stages) == {"read", "classify", "probe", "decode", "tokenize", "forward", "assemble", "write"}
    assert all(v > 0 for v in stages.values())
    assert abs(t["other_s"]) <= 0.1 * t["units_s"]  # the stages cover the units' time
    assert sum(stages.values()) + t["other_s"] == pytest.approx(t["units_s"], abs=1e-3)
    host = sum(v for k, v in stages.items() if k not in ("decode", "forward"))
    assert t["host_us_per_row"] == pytest.approx(host / manifest["counts"]["read"] * 1e6, rel=0.01)


@pytest.mark.beam
def test_pipeline_vectors_equal_direct_clip_calls(embedded, sample_dir, tiny_clip):
    out, _ = embedded
    table = read_dir(out)
    by_id = {r["key"]: r for r in input_rows(sample_dir)}
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    ids = table.column("id").to_pylist()
    images = [Image.open(io.BytesIO(by_id[i]["image"])) for i in ids]
    captions = [by_id[i]["caption"] for i in ids]
    with torch.no_grad():
        inputs = processor(text=captions, images=images, return_tensors="pt", padding=True)
        img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        txt = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    img = torch.nn.functional.normalize(img, dim=-1).numpy()
    txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
    ours_img, _ = arrow_to_vectors(table.column("image_embedding"))
    ours_txt, _ = arrow_to_vectors(table.column("text_embedding"))
    ours_fused, _ = arrow_to_vectors(table.column("fused_embedding"))
    assert np.all(np.sum(ours_img * img, axis=1) >= 0.999)
    assert np.all(np.sum(ours_txt * txt, axis=1) >= 0.999)
    fused = 0.5 * img + 0.5 * txt
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    assert np.all(np.sum(ours_fused * fused, axis=1) >= 0.999)
    assert table.column("caption").to_pylist() == captions


@pytest.mark.beam
def test_rerun_is_deterministic_and_direct_runner_agrees(embedded, tiny_clip, sample_dir, tmp_path, caplog):
    out, _ = embedded
    again = str(tmp_path / "again")
    with caplog.at_level(logging.INFO, logger="pipelines.embed.progress"):
        m = run_embed(
            EmbedSettings(inputs=[f"{sample_dir}/*.parquet"], output=again, model=tiny_clip, batch_size=5),
            ["--runner", "DirectRunner"],
        ).to_dict()
    units = m["shards"]  # the driver watched the shards commit: the last progress line says all of them
    assert (
        f"progress: {m['counts']['read']:,} / {m['counts']['read']:,} rows (100.0%), {units} / {units}" in caplog.text
    )
    a, b = read_dir(out), read_dir(again)
    assert a.column("id").equals(b.column("id"))
    for col in ("image_embedding", "text_embedding", "fused_embedding"):
        assert np.allclose(arrow_to_vectors(a.column(col))[0], arrow_to_vectors(b.column(col))[0], atol=1e-5)


def _catalogue(path, rows):
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("status", pa.string()), ("jpg", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.mark.beam
def test_bad_rows_are_rejected_not_dropped_and_blank_captions_counted(tmp_path, tiny_clip):
    good = encode(draw("circle", (10, 200, 10), (255, 255, 255), 64), "jpg")
    rows = [
        {"key": "ok", "caption": "a green circle", "status": "success", "jpg": good},
        {"key": "nocap", "caption": None, "status": "success", "jpg": good},
        {"key": "blank", "caption": "  ", "status": "success", "jpg": good},
        {"key": "junk", "caption": "x", "status": "success", "jpg": b"<html>oops</html>"},
        {"key": "cut", "caption": "x", "status": "success", "jpg": good[:100]},
        {"key": None, "caption": "x", "status": "success", "jpg": good},
        {"key": "failed", "caption": "x", "status": "failed_to_download", "jpg": None},
    ]
    _catalogue(tmp_path / "in.parquet", rows)
    m = run_embed(
        EmbedSettings(inputs=[str(tmp_path / "in.parquet")], output=str(tmp_path / "out"), model=tiny_clip)
    ).to_dict()
    assert m["counts"] == {
        "read": 7,
        "embedded": 3,
        "rejected": 3,
        "skipped": 1,
        "empty_caption": 2,
        "new": 3,
        "changed": 0,
        "unchanged": 0,
        "metadata_changed": 0,
        "rejects_by_reason": {"corrupt_image": 1, "not_an_image": 1, "null_id": 1},
    }
    table = read_dir(str(tmp_path / "out"))
    assert table.column("id").to_pylist() == ["ok", "nocap", "blank"]
    fused, _ = arrow_to_vectors(table.column("fused_embedding"))
    image, _ = arrow_to_vectors(table.column("image_embedding"))
    text, has_text = arrow_to_vectors(table.column("text_embedding"))
    assert has_text.tolist() == [True, False, False]
    assert np.allclose(fused[1:], image[1:])
    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    assert [(r["id"], r["row_index"], r["reason"]) for r in rejects] == [
        ("junk", 3, "not_an_image"),
        ("cut", 4, "corrupt_image"),
        (None, 5, "null_id"),
    ]
    assert all(r["source_file"].endswith("in.parquet") and r["message"] for r in rejects)


@pytest.mark.beam
def test_failed_run_leaves_no_manifest(tmp_path, tiny_clip):
    good = encode(draw("square", (200, 10, 10), (255, 255, 255), 64), "jpg")
    path = tmp_path / "in.parquet"
    _catalogue(path, [{"key": str(i), "caption": "c", "status": "success", "jpg": good} for i in range(20)])
    out = str(tmp_path / "out")
    run_embed(EmbedSettings(inputs=[str(path)], output=out, model=tiny_clip))
    assert os.path.exists(os.path.join(out, "manifest.json"))
    # Corrupt the data pages but keep the footer: planning passes, reading fails mid-pipeline.
    data = bytearray(path.read_bytes())
    for i in range(8, len(data) // 2):
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="in.parquet"):
        run_embed(EmbedSettings(inputs=[str(path)], output=out, model=tiny_clip))
    assert not os.path.exists(os.path.join(out, "manifest.json"))


def test_output_dir_with_foreign_files_is_refused(tmp_path, tiny_clip, sample_dir):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a fusionindex run"):
        run_embed(EmbedSettings(inputs=[f"{sample_dir}/*.parquet"], output=str(tmp_path), model=tiny_clip))
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.beam
def test_multi_process_workers(tmp_path, tiny_clip, sample_dir, embedded):
    out = str(tmp_path / "mp")
    m = run_embed(
        EmbedSettings(inputs=[f"{sample_dir}/*.parquet"], output=out, model=tiny_clip),
        ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
    ).to_dict()
    assert m["counts"]["embedded"] == 56
    assert read_dir(out).column("id").equals(read_dir(embedded[0]).column("id"))
    from pipelines.threads import usable_cores

    threads = m["runtime"]["threads"]  # each worker process: its share of the cores (pipelines/threads.py)
    assert threads["processes"] == 2 and threads["cores"] == usable_cores()
    assert threads["source"] != "share" or threads["threads"] == max(1, usable_cores() // 2)


def test_a_failing_item_is_isolated_from_its_batch(tiny_clip):
    from encoders.models import load_towers
    from pipelines.embed.handler import EmbeddingModelHandler
    from pipelines.embed.outcomes import Embedded, Rejected

    handler = EmbeddingModelHandler(EmbedSettings(inputs=(), output="", model=tiny_clip))
    towers = load_towers(tiny_clip, device="cpu")
    good = [draw(s, (200, 0, 0), (255, 255, 255), 50) for s in ("circle", "ring", "cross")]
    unprocessable = Image.new("La", (20, 20))  # the CLIP processor raises on this mode
    out = handler._embed(
        towers, [good[0], unprocessable, good[1], good[2]], ["a", "b", "c", None], ["0", "1", "2", "3"]
    )
    assert [type(r) for r in out] == [Embedded, Rejected, Embedded, Embedded]
    assert out[1].reason == "embed_failed" and "La" in out[1].message
    alone = handler._embed(towers, good[:1], ["a"], ["0"])[0]
    assert np.allclose(alone.fused, out[0].fused, atol=1e-5)


@pytest.mark.beam
def test_handler_works_inside_beam_run_inference(tiny_clip):
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.testing.util import assert_that

    from pipelines.embed.handler import EmbeddingModelHandler
    from pipelines.embed.outcomes import Embedded, ItemInput, Rejected

    handler = EmbeddingModelHandler(EmbedSettings(inputs=(), output="", model=tiny_clip, batch_size=2))
    items = [
        ("a", ItemInput("a", "red", encode(draw("circle", (200, 0, 0), (255, 255, 255), 40), "jpg"))),
        ("b", ItemInput("b", None, encode(draw("square", (0, 0, 200), (255, 255, 255), 40), "png"))),
        ("c", ItemInput("c", "junk", b"not an image")),
    ]

    def check(results):
        got = dict(results)
        assert set(got) == {"a", "b", "c"}
        assert isinstance(got["a"], Embedded) and got["a"].has_text
        assert isinstance(got["b"], Embedded) and not got["b"].has_text
        assert isinstance(got["c"], Rejected) and got["c"].reason == "not_an_image"

    with beam.Pipeline("FnApiRunner") as p:
        assert_that(p | beam.Create(items) | RunInference(KeyedModelHandler(handler)), check)


@pytest.mark.beam
def test_large_model_mode_shares_one_model_and_gives_the_same_vectors(tmp_path, tiny_clip, sample_dir, embedded):
    m = run_embed(
        EmbedSettings(
            inputs=[f"{sample_dir}/*.parquet"], output=str(tmp_path / "lm"), model=tiny_clip, large_model=True
        )
    ).to_dict()
    assert m["counts"]["embedded"] == 56
    assert m["runtime"]["model_sharing"] == "per_machine"
    assert "large-model server" in m["runtime"]["threads"]["engine"]  # the forward passes' process
    # the worker preprocessed and tokenized (before, the shared model's process did both, inside
    # the proxy calls counted as forward, and the table had no tokenize); the stages add up
    t = m["timings"]
    assert {"decode", "tokenize", "forward"} <= set(t["stages_s"]) and t["stages_s"]["tokenize"] > 0
    assert abs(t["other_s"]) <= 0.1 * t["units_s"]
    a, b = read_dir(str(tmp_path / "lm")), read_dir(embedded[0])
    assert a.column("id").equals(b.column("id"))
    assert np.allclose(
        arrow_to_vectors(a.column("fused_embedding"))[0], arrow_to_vectors(b.column("fused_embedding"))[0], atol=1e-5
    )


@pytest.mark.beam
def test_decode_ahead_and_streamed_batches_give_the_same_shards(tmp_path, tiny_clip, sample_dir, embedded):
    """The CUDA-default decode-ahead thread, forced on here on the CPU, changes nothing in the output."""
    m = run_embed(
        EmbedSettings(
            inputs=[f"{sample_dir}/*.parquet"],
            output=str(tmp_path / "ahead"),
            model=tiny_clip,
            batch_size=5,
            decode_ahead="on",
        )
    ).to_dict()
    assert m["counts"] == embedded[1]["counts"]
    # the decode thread read headers, decoded (the default tensor path: resized and normalised too)
    # and tokenized; the unit's thread waited for it
    t = m["timings"]
    assert set(t["decode_ahead_s"]) >= {"probe", "decode", "tokenize"}
    assert "wait" in t["stages_s"] and not {"probe", "tokenize"} & set(t["stages_s"])
    assert abs(t["other_s"]) <= 0.1 * t["units_s"]
    a, b = read_dir(str(tmp_path / "ahead")), read_dir(embedded[0])
    assert a.column("id").equals(b.column("id"))
    assert np.allclose(
        arrow_to_vectors(a.column("fused_embedding"))[0], arrow_to_vectors(b.column("fused_embedding"))[0], atol=1e-5
    )


@pytest.mark.beam
def test_the_gpu_checks_parity_tool_passes_equal_runs_and_fails_a_changed_vector(tmp_path, embedded, capsys):
    """benchmarks/compare_embeddings, which gpu_check.sh runs on `--decode-ahead on` vs `stream`."""
    import shutil

    from benchmarks.compare_embeddings import compare as figures
    from benchmarks.compare_embeddings import main as compare

    out, copy = embedded[0], tmp_path / "copy"
    shutil.copytree(out, copy)
    assert compare([out, str(copy)]) == 0
    assert '"cosine_min": 1.0' in capsys.readouterr().out
    shard = list_shards(str(copy))[0].path
    table = pq.read_table(shard)
    fused = arrow_to_vectors(table.column("fused_embedding"))[0].copy()
    fused[1] = -fused[1]
    i = table.schema.get_field_index("fused_embedding")
    pq.write_table(table.set_column(i, table.schema.field(i), vectors_to_arrow(fused)), shard)
    assert compare([out, str(copy)]) == 1
    assert "parity FAILED: cosine below 0.999 in fused" in capsys.readouterr().out
    f = figures(out, str(copy))
    assert f["fused"]["cosine_min"] < -0.99 and f["image"]["cosine_min"] > 0.99999 and f["same_ids"]


def test_the_driver_resolves_the_model_and_runtime_once_and_hands_them_down(
    tmp_path, tiny_clip, sample_dir, monkeypatch
):
    """One run (in-process workers): --model is described once, by the driver, and the Runtime
    resolved once; the handler and the towers' loader use the records they are handed."""
    import encoders.models
    import pipelines.embed.embedder
    import pipelines.embed.run

    calls: dict[str, int] = {"describe": 0, "runtime": 0}

    def counted(name, real):
        def call(*args, **kw):
            calls[name] += 1
            return real(*args, **kw)

        return call

    monkeypatch.setattr(
        encoders.models, "describe_checkpoint", counted("describe", encoders.models.describe_checkpoint)
    )
    for module in (pipelines.embed.run, pipelines.embed.embedder):
        monkeypatch.setattr(module, "resolve_runtime", counted("runtime", module.resolve_runtime))
    m = run_embed(
        EmbedSettings(inputs=[f"{sample_dir}/*.parquet"], output=str(tmp_path / "o"), model=tiny_clip)
    ).to_dict()
    assert m["counts"]["embedded"] == 56 and calls == {"describe": 1, "runtime": 1}
