"""The weight-free preprocessing (`load_preprocessing`) gives the loaded towers' own tensors, for both families."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from encoders.dual import DualTowers
from encoders.loading import ModelLoadError
from encoders.models import load_preprocessing, load_towers, save_model
from encoders.random_models import make_random_bert
from encoders.text import MAX_CAPTION_CHARS
from encoders.towers import Preprocessing, Towers
from pipelines.datasets.sample import draw

CAPTIONS = ["a red circle", "", "word " * 400, "x" * (MAX_CAPTION_CHARS + 50) + " tail"]


@pytest.fixture(scope="module")
def tiny_dual(tmp_path_factory) -> str:
    bert = make_random_bert(tmp_path_factory.mktemp("bert"))
    towers = DualTowers.create(str(bert), projection_dim=16, image_size=32, device="cpu")
    return str(save_model(towers, tmp_path_factory.mktemp("dual") / "m"))


def images() -> list[Image.Image]:
    """Different sizes, modes and aspects (bound_aspect crops the 6:1 one)."""
    return [
        draw("circle", (200, 0, 0), (255, 255, 255), 48),
        draw("square", (0, 0, 200), (255, 255, 255), 40).convert("RGBA"),
        draw("triangle", (0, 150, 0), (255, 255, 255), 64).convert("L"),
        Image.new("RGB", (300, 50), (30, 60, 90)),
    ]


@pytest.mark.parametrize("family", ["clip", "dual"])
@pytest.mark.parametrize("fixed_rows", [None, 6])
def test_preprocessing_without_weights_gives_the_towers_own_tensors(family, fixed_rows, request):
    spec = request.getfixturevalue("tiny_clip" if family == "clip" else "tiny_dual")
    towers = load_towers(spec, device="cpu")
    pre = load_preprocessing(spec)
    assert not isinstance(pre, Towers) and isinstance(pre, Preprocessing)
    towers.fixed_rows = pre.fixed_rows = fixed_rows
    pixels = pre.pixels(images())
    assert pixels.dtype == torch.float32
    assert torch.equal(pixels, towers.pixels(images()))
    # and the forward on those pixels is encode_images' own result
    assert torch.equal(towers.encode_pixels(pixels), towers.encode_images(images()))
    ours, theirs = pre.text_tokens(CAPTIONS), towers.text_tokens(CAPTIONS)
    assert ours.keys() == theirs.keys() == set(towers.token_keys)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert len(ours["input_ids"]) == (fixed_rows or len(CAPTIONS))
    assert torch.equal(towers.encode_texts(CAPTIONS, tokens=ours), towers.encode_texts(CAPTIONS))


@pytest.mark.parametrize("family", ["clip", "dual"])
def test_preprocessing_reads_no_weights(family, request, tmp_path):
    """Weight files overwritten with junk: the towers no longer load, the preprocessing still does."""
    spec = request.getfixturevalue("tiny_clip" if family == "clip" else "tiny_dual")
    broken = shutil.copytree(spec, tmp_path / "broken")
    for f in broken.rglob("*.safetensors"):
        f.write_bytes(b"not weights")
    with pytest.raises(Exception):  # noqa: B017 (safetensors and transformers raise several types)
        load_towers(str(broken), device="cpu")
    pre = load_preprocessing(str(broken))
    assert torch.equal(pre.pixels(images()), load_preprocessing(spec).pixels(images()))


def test_preprocessing_of_a_directory_without_a_processor_says_how_to_fix_it(tiny_clip, tmp_path):
    bare = shutil.copytree(tiny_clip, tmp_path / "bare")
    for f in ("preprocessor_config.json", "processor_config.json"):
        (bare / f).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="save"):
        load_preprocessing(str(bare))
