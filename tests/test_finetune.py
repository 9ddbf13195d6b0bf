"""Fine-tuning, attention fusion, the dual (ResNet + text encoder) family, and evaluation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from encoders.dual import DualTowers
from encoders.fusion import AttentionFusion, WeightedFusion
from encoders.images import decode_image
from encoders.loading import ModelLoadError
from encoders.models import load_towers, save_model
from encoders.random_models import make_random_bert
from encoders.settings import TrainConfig
from encoders.train import Example, Trainer, info_nce
from index_builder.pair_recall import recall_at_k
from pipelines.cli import main
from pipelines.datasets.items import load_items, unique_query_rows
from pipelines.datasets.sample import draw
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from pipelines.training.evaluation import run_evaluate
from pipelines.training.finetune import run_finetune
from pipelines.training.settings import FinetuneSettings


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return str(make_random_bert(tmp_path_factory.mktemp("bert")))


def test_attention_fusion_starts_as_even_weights_and_learns():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    has_text = torch.tensor([True] * 7 + [False])
    att = AttentionFusion(6, hidden=4)
    assert torch.allclose(att(img, txt, has_text), WeightedFusion()(img, txt, has_text), atol=1e-6)
    c = att.weights(img, txt)
    assert c.shape == (8, 2) and torch.allclose(c.sum(-1), torch.ones(8))
    target = img  # learn to trust the image: c_image -> 1
    opt = torch.optim.Adam(att.parameters(), lr=0.1)
    for _ in range(100):
        loss = -(att(img, txt, has_text) * target).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert att.weights(img, txt)[:, 0].min() > 0.9
    assert torch.allclose(att(img, txt, has_text)[7], img[7], atol=1e-6)  # no text: image vector


def test_info_nce_prefers_aligned_pairs_and_recall_counts_ranks():
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    scale = torch.tensor(np.log(10.0))
    assert info_nce(x, x, scale) < info_nce(x, x.roll(1, 0), scale)
    items = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [0, 0.9, 0.5, 0], [0, 0, 0, 1]], dtype=np.float32)
    r = recall_at_k(queries, items, np.array([0, 2, 3]), ks=(1, 2))
    assert r == {"R@1": 2 / 3, "R@2": 1.0}


def test_dual_model_roundtrip_through_save_and_load(tmp_path, tiny_bert):
    towers = DualTowers.create(tiny_bert, projection_dim=16, image_size=32, device="cpu")
    images = [draw(s, (200, 20, 20), (255, 255, 255), 48) for s in ("circle", "square")]
    before_i, before_t = towers.encode_images(images), towers.encode_texts(["red circle", "x"])
    out = save_model(towers, tmp_path / "m", fusion=AttentionFusion(16, 8), meta={"note": "t"})
    loaded = load_towers(str(out), device="cpu")
    assert loaded.family == "dual" and loaded.dim == 16 and isinstance(loaded.learned_fusion, AttentionFusion)
    assert torch.allclose(before_i, loaded.encode_images(images), atol=1e-5)
    assert torch.allclose(before_t, loaded.encode_texts(["red circle", "x"]), atol=1e-5)
    assert json.loads((out / "fusionindex.json").read_text())["fusion"]["kind"] == "attention"


def test_training_steps_lower_the_loss_on_a_fixed_batch(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    colours = [(200, 0, 0), (0, 160, 0), (0, 0, 200), (230, 200, 0)]
    shapes = ["circle", "square", "triangle", "cross"]
    batch = [
        Example(str(i), lambda c=c, s=s: draw(s, c, (255, 255, 255), 48), f"{s} {i}", f"q {s} {i}")
        for i, (c, s) in enumerate((c, s) for c in colours for s in shapes)
    ]
    trainer = Trainer(towers, AttentionFusion(towers.dim), TrainConfig(lr=1e-3, head_lr=1e-2))
    trainer.set_train(True)
    losses = [trainer.step(batch) for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0]


def test_an_image_that_does_not_decode_is_left_out_and_recorded_not_fatal(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    trainer = Trainer(towers, AttentionFusion(towers.dim), TrainConfig())
    trainer.set_train(True)
    good = [
        Example(s, lambda s=s: draw(s, (9, 9, 200), (255, 255, 255), 40), f"a {s}", None) for s in ("circle", "ring")
    ]
    bad = Example("broken", lambda: decode_image(b"<html>"), "a broken row", None)
    assert isinstance(trainer.step([good[0], bad, good[1]]), float)
    assert trainer.unusable == {"broken": "not_an_image"}
    assert trainer.step([good[0], bad]) is None  # one usable item has no negatives: no step


def test_frozen_text_tower_stays_in_eval_mode_and_its_outputs_are_cached(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    trainer = Trainer(towers, AttentionFusion(towers.dim), TrainConfig(freeze={"text"}))
    trainer.set_train(True)
    assert not towers.model.text_model.training and towers.model.vision_model.training
    before = [p.clone() for p in towers.model.text_model.parameters()]
    batch = [
        Example(s, lambda s=s: draw(s, (9, 9, 200), (255, 255, 255), 40), f"a {s}", f"{s}?")
        for s in ("circle", "ring", "cross")
    ]
    trainer.step(batch)
    assert len(trainer._text_cache) == 6
    cached = trainer.texts(["a ring"])
    with torch.no_grad():
        direct = towers.text_features(towers.tokenize(["a ring"]))
    assert torch.allclose(cached.detach(), direct, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, towers.model.text_model.parameters()))


@pytest.mark.beam
def test_finetune_cli_resume_evaluate_and_embed_with_attention(tmp_path, tiny_bert, sample_dir):
    out = tmp_path / "model"
    args = [
        "finetune",
        "--train",
        sample_dir,
        "--val",
        sample_dir,
        "--output",
        str(out),
        "--text-model",
        tiny_bert,
        "--image-size",
        "32",
        "--projection-dim",
        "16",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "-q",
    ]
    assert main(["-q", *args[:-1], "--epochs", "1"]) == 0
    first = json.loads((out / "training.json").read_text())
    assert first["epochs_done"] == 1 and (out / "checkpoints" / "epoch-001" / "trainer.pt").exists()
    h = first["history"][0]
    assert h["val_metric"] == "mean of text_to_image and query_to_fused R@10"
    assert h["val_recall"] == pytest.approx((h["val_text_to_image_R@10"] + h["val_query_to_fused_R@10"]) / 2)
    assert main(["-q", *args[:-1], "--epochs", "2", "--resume"]) == 0
    second = json.loads((out / "training.json").read_text())
    assert [h["epoch"] for h in second["history"]] == [1, 2] and second["history"][0] == first["history"][0]
    assert set(os.listdir(out)) >= {
        "config.json",
        "model.safetensors",
        "text",
        "fusion.safetensors",
        "fusionindex.json",
    }
    meta = json.loads((out / "fusionindex.json").read_text())
    assert meta["training"]["freeze"] == ["text"]  # the pretrained text tower is locked by default

    report = run_evaluate(str(out), [sample_dir], split=None)
    for task in (
        "text_to_image",
        "image_to_text",
        "query_to_image",
        "query_to_fused_weighted",
        "query_to_fused_attention",
    ):
        assert set(report[task]) == {"R@1", "R@5", "R@10"} and all(0 <= v <= 1 for v in report[task].values())
    items = load_items([sample_dir], None)
    assert report["items"] == 56 and 0 < report["queries"] == len(unique_query_rows(items)) < 56
    assert len({items[i].query for i in unique_query_rows(items)}) == report["queries"]

    emb = tmp_path / "emb"
    m = run_embed(EmbedSettings(inputs=[sample_dir], output=str(emb), model=str(out), fusion="attention")).to_dict()
    assert m["fusion"]["kind"] == "attention" and m["model"]["family"] == "dual" and m["counts"]["embedded"] == 56
    idx = tmp_path / "idx"
    assert main(["-q", "build-index", "--embeddings", str(emb), "--output", str(idx)]) == 0
    assert main(["-q", "search", "--index", str(idx), "--text", "red circle", "--k", "3"]) == 0
    page = tmp_path / "report.html"
    assert (
        main(
            [
                "-q",
                "report",
                "--index",
                str(idx),
                "--output",
                str(page),
                "--queries",
                "blue square",
                "--queries-from",
                sample_dir,
                "--split",
                "all",
                "--n",
                "3",
                "--k",
                "4",
            ]
        )
        == 0
    )
    text = page.read_text()
    assert text.count("<h3>") == 4 and "&ldquo;blue square&rdquo;" in text
    assert text.count("data:image/jpeg;base64,") >= 16 and "find their own item" in text


def test_time_budget_stops_after_checkpointing(tmp_path, tiny_clip, sample_dir):
    cfg = FinetuneSettings(
        train=[sample_dir],
        val=[sample_dir],
        output=str(tmp_path / "m"),
        model=tiny_clip,
        fusion="weighted",
        trainer=TrainConfig(epochs=3, batch_size=8, max_minutes=0),
    )
    s = run_finetune(cfg)
    assert s["epochs_done"] == 1 and s["history"][0]["batches"] == 1 and "time budget" in s["stopped"]
    assert load_towers(str(tmp_path / "m"), device="cpu").family == "clip"
    assert not (tmp_path / "m" / "fusion.safetensors").exists()


def test_weighted_fusion_embed_refuses_attention_without_learned_weights(tmp_path, tiny_clip, sample_dir):
    with pytest.raises(ModelLoadError, match="no learned attention fusion"):
        run_embed(EmbedSettings(inputs=[sample_dir], output=str(tmp_path / "o"), model=tiny_clip, fusion="attention"))
    assert len(load_items([sample_dir], "train")) == 56  # no split column: every success row
