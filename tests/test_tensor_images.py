"""The tensor (GPU) preprocessing path, run on the CPU: orientation and batching must not change pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from encoders.tensor_images import Recipe, TensorPreprocessor, byte_view, orient
from tests import images

RECIPE = Recipe(32, (32, 32), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))


def jpeg_with_orientation(orientation: int, size=(64, 40)) -> bytes:
    pixels = np.random.default_rng(orientation).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return images.save(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pil_does(orientation):
    """CUDA's decode_jpeg ignores apply_exif_orientation, so the path decodes without it and
    rotates itself; on the CPU that must equal torchvision's own EXIF handling and PIL's."""
    data = jpeg_with_orientation(orientation)
    ours = TensorPreprocessor(RECIPE, "cpu").decode([data])[0]
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    assert torch.equal(ours, decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True))
    pil = torch.from_numpy(np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB")))).permute(
        2, 0, 1
    )
    assert ours.shape == pil.shape
    assert (ours.int() - pil.int()).abs().max() <= 2  # same libjpeg family; allow rounding differences


def test_jpegs_are_decoded_from_views_of_their_bytes_which_stay_unchanged():
    """The decoder reads the row's bytes in place (no copy per image), and leaves them as they were."""
    datas = [jpeg_with_orientation(o, size=(48 + o, 40)) for o in (1, 6)]
    kept = [bytes(bytearray(d)) for d in datas]  # copies with other buffers
    view = byte_view(datas[0])
    assert view.numel() == len(datas[0]) and view.data_ptr() == byte_view(datas[0]).data_ptr()
    assert torch.equal(view, torch.tensor(list(datas[0]), dtype=torch.uint8))
    decoded = TensorPreprocessor(RECIPE, "cpu").decode(datas)
    assert datas == kept
    for d, out in zip(kept, decoded):
        raw = torch.frombuffer(bytearray(d), dtype=torch.uint8)
        assert torch.equal(out, decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True))


def test_orient_is_the_identity_for_orientation_one_and_unknown_values():
    t = torch.arange(6).view(1, 2, 3)
    assert torch.equal(orient(t, 1), t) and torch.equal(orient(t, 0), t)


def test_out_of_range_orientation_is_left_to_pil():
    """EXIF orientation 9 is not a valid value: PIL ignores it, so must we (stored layout kept)."""
    data = jpeg_with_orientation(9)
    out = TensorPreprocessor(RECIPE, "cpu").decode([data])[0]
    assert tuple(out.shape) == (3, 40, 64)


def test_same_size_images_batched_equal_one_at_a_time():
    """Grouping by size (one resize per size) gives the pixels of a per-image transform, in input order."""
    rng = np.random.default_rng(0)
    sizes = [(64, 40), (50, 50), (64, 40), (30, 90), (50, 50), (64, 40)]
    datas = [images.save(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), "JPEG") for w, h in sizes]
    datas.insert(2, b"not an image")
    pre = TensorPreprocessor(RECIPE, "cpu")
    pixels, rejected = pre(datas)
    assert [r is not None for r in rejected] == [False, False, True, False, False, False, False]
    one_by_one = torch.stack([pre.transform(t) for t in pre.decode(datas) if isinstance(t, torch.Tensor)])
    assert pixels.shape == (6, 3, 32, 32)
    torch.testing.assert_close(pixels, one_by_one, rtol=0, atol=1e-5)


def test_chunks_hold_at_most_the_pixel_budget_and_keep_order():
    pre = TensorPreprocessor(RECIPE, "cpu", chunk_pixels=100)
    headers = pre.headers([images.save(Image.new("RGB", (w, 10)), "JPEG") for w in (4, 5, 2, 20, 3)] + [b"junk"])
    assert [h.pixels for h in headers] == [40, 50, 20, 200, 30, 0]
    chunks = pre.chunks(headers)
    assert chunks == [[0, 1], [2], [3], [4, 5]]  # an image over the budget goes alone
    assert [i for c in chunks for i in c] == list(range(6))


def test_small_pixel_budget_gives_the_same_batch():
    """Decoding chunk by chunk (bounded device memory) changes nothing in the output."""
    rng = np.random.default_rng(1)
    datas = [
        images.save(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), fmt)
        for (w, h), fmt in zip(
            [(64, 40), (50, 50), (64, 40), (30, 90), (50, 50)], ["JPEG", "PNG", "JPEG", "JPEG", "JPEG"]
        )
    ]
    datas.insert(1, None)
    whole, rejected = TensorPreprocessor(RECIPE, "cpu")(datas)
    chunked, rejected_chunked = TensorPreprocessor(RECIPE, "cpu", chunk_pixels=3000)(datas)
    assert (
        [r is None for r in rejected] == [r is None for r in rejected_chunked] == [True, False, True, True, True, True]
    )
    assert rejected_chunked[1].reason == "missing_image"
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["clip", "dual"])
@pytest.mark.parametrize("size", [(43, 32), (138, 102), (102, 138), (279, 173), (302, 334), (53, 32), (20, 12)])
def test_resize_and_crop_are_the_reference_paths(tiny_clip, family, size):
    """Resized to a long side whose margin is odd (43 - 32 = 11), transformers' CLIP processor crops
    from offset 5 and torchvision's center_crop from 6 (half offsets rounded to even): a one-pixel
    shift that moved pixels by up to 3.8 normalised units. The tensor path crops as each family's
    own path does (and the dual family's resize is bilinear, v2.Resize's default)."""
    from encoders.dual import DualPreprocessing
    from encoders.models import load_preprocessing

    pre = load_preprocessing(tiny_clip) if family == "clip" else DualPreprocessing(None, {"image_size": 32})
    arr = np.random.default_rng(sum(size)).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ours = TensorPreprocessor(pre.recipe(), "cpu").transform(torch.from_numpy(arr).permute(2, 0, 1))
    torch.testing.assert_close(ours, pre.pixels([Image.fromarray(arr)])[0], rtol=0, atol=1e-5)
