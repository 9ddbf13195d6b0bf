"""Towers against direct transformers calls, fusion maths, image decoding, model loading."""

from __future__ import annotations

import io
import json
import os

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, CLIPModel, CLIPProcessor

from encoders.errors import SettingsError
from encoders.fusion import WeightedFusion, fusion_from_params
from encoders.images import ImageRejected, decode_image
from encoders.loading import ModelLoadError, fingerprint, resolve_model_dir
from encoders.models import describe_checkpoint, load_towers
from encoders.towers import embed_pairs, embed_query
from pipelines.datasets.img2dataset import encode
from pipelines.datasets.sample import draw


def direct(model_dir, images=None, texts=None):
    """What a user gets calling CLIPModel + CLIPProcessor themselves."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        if images is not None:
            out = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        else:
            out = model.get_text_features(**processor(text=texts, return_tensors="pt", padding=True)).pooler_output
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_image_tower_matches_direct_clip_call_for_many_modes(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    base = draw("circle", (200, 30, 30), (255, 255, 255), 90)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    variants = [base, base.convert("L"), base.convert("P"), rgba, base.resize((300, 40)), base.convert("CMYK")]
    ours = towers.encode_images(variants).numpy()
    theirs = direct(tiny_clip, images=variants)
    assert ours.shape == (len(variants), towers.dim)
    assert np.all(cosines(ours, theirs) >= 0.999)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_text_tower_matches_direct_clip_call(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    texts = ["a red circle", "A BLUE square on grey", "emoji 😀 and 日本語", "x " * 500]
    ours = towers.encode_texts(texts).numpy()
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        tokens = processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=77)
        theirs = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1).numpy()
    assert np.all(cosines(ours, theirs) >= 0.999)


def test_weighted_fusion_formula_and_missing_text():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    has_text = torch.tensor([True, True, False, True])
    fused = WeightedFusion(0.3, 0.7)(img, txt, has_text)
    expected = 0.3 * img + 0.7 * txt
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(fused[[0, 1, 3]], expected[[0, 1, 3]], atol=1e-6)
    assert torch.allclose(fused[2], img[2], atol=1e-6)
    assert torch.allclose(fused.norm(dim=-1), torch.ones(4), atol=1e-6)
    # beta = 0: fused is the image vector; alpha = 0: the text vector (where there is text)
    assert torch.allclose(WeightedFusion(1, 0)(img, txt, has_text), img, atol=1e-6)
    assert torch.allclose(WeightedFusion(0, 1)(img, txt, has_text)[0], txt[0], atol=1e-6)
    assert fusion_from_params(WeightedFusion(0.3, 0.7).params()) == WeightedFusion(0.3, 0.7)


@pytest.mark.parametrize("alpha,beta", [(-1, 1), (0, 0), (1, -0.5)])
def test_fusion_rejects_bad_weights(alpha, beta):
    with pytest.raises(SettingsError, match="--alpha"):
        WeightedFusion(alpha, beta)


def test_embed_pairs_blank_captions_use_image_vector(tiny_clip):
    towers = load_towers(tiny_clip, device="cpu")
    images = [draw(s, (0, 0, 200), (255, 255, 255), 64) for s in ("circle", "square", "ring")]
    out = embed_pairs(towers, WeightedFusion(), images, ["a blue circle", None, "   "])
    assert out.has_text.tolist() == [True, False, False]
    assert np.allclose(out.fused[1:], out.image[1:], atol=1e-6)
    assert np.all(out.text[1:] == 0)
    assert not np.allclose(out.fused[0], out.image[0])
    q = embed_query(towers, WeightedFusion(), text="a blue circle", image=images[0])
    assert np.allclose(q[0], out.fused[0], atol=1e-5)


def test_decode_image_reasons():
    good = encode(draw("square", (1, 2, 3), (255, 255, 255), 40), "png")
    assert decode_image(good).size == (40, 40)
    cases = {
        None: "missing_image",
        b"": "empty_image",
        os.urandom(500): "not_an_image",
        b"<html><body>404 Not Found</body></html>": "not_an_image",
        good[: len(good) // 2]: "corrupt_image",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageRejected) as err:
            decode_image(data)
        assert err.value.reason == reason, data[:20] if data else data
    with pytest.raises(ImageRejected) as err:
        decode_image(good, max_pixels=40 * 40 - 1)
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as err:
        decode_image(good, max_bytes=10)
    assert err.value.reason == "image_too_large"


def test_model_loading_errors(tmp_path, tiny_clip):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "nope"))
    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(bert)
    with pytest.raises(ModelLoadError, match="not a CLIP-like"):
        describe_checkpoint(resolve_model_dir(str(bert)))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((open(os.path.join(tiny_clip, "config.json"))).read())
    torch.save(CLIPModel.from_pretrained(tiny_clip).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        resolve_model_dir(str(pickled))
    assert resolve_model_dir(str(pickled), allow_pickle=True) == pickled
    with pytest.raises(ModelLoadError, match="hub"):
        resolve_model_dir("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in tests


def test_model_from_fsspec_url_matches_local(tiny_clip):
    fs = fsspec.filesystem("memory")
    for name in os.listdir(tiny_clip):
        with open(os.path.join(tiny_clip, name), "rb") as src, fs.open(f"/models/tiny/{name}", "wb") as dst:
            dst.write(src.read())
    remote = load_towers("memory://models/tiny", device="cpu")
    local = load_towers(tiny_clip, device="cpu")
    assert remote.fingerprint() == local.fingerprint() == fingerprint(resolve_model_dir(tiny_clip))
    img = [Image.open(io.BytesIO(encode(draw("ring", (9, 9, 9), (200, 200, 200), 50), "jpg")))]
    assert np.allclose(remote.encode_images(img), local.encode_images(img))
    assert json.loads(open(os.path.join(remote.model_dir, "config.json")).read())["model_type"] == "clip"
