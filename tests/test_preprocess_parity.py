"""The tensor preprocessing path against the reference (the checkpoint's own processor on PIL's
decode) on a CPU, which is what lets `--preprocess auto` pick the faster tensor path there.

Rows: drawn JPEGs (q90 and noisy q75) and PNGs (RGB, grayscale JPEG, palette) at sizes from 20x20
(smaller than the crop) to 640x480 and aspect ratios up to 1:2.8, every awkward kind of
tests/images.py (CMYK, 16-bit, RGBA, palette with transparency, EXIF-rotated, animated, 1x1, 4000x3),
real clip-art PNGs (RGBA, LA, palette) from Debian's openclipart-png when installed, and bad rows.

Tolerances (normalised pixel units, i.e. after (x - mean) / std): max abs <= 1e-5, mean abs <= 1e-6.
Measured when written: 0.0 and 0.0 on every row (bit-equal: both paths decode with libjpeg-turbo
and resize with torchvision's antialiased bicubic; transformers 5's CLIPImageProcessor is the
torchvision backend). Before the crop fix in encoders/tensor_images.py the max was 3.8 (a one-pixel
crop shift wherever the resized margin is odd) on 3 of 30 clip-art PNGs and on drawn sizes such
as 138x102. Vectors under the trained model (`trained_clip`, tests/conftest.py): cosine >= 0.999
asserted, min measured 1.0000000 over the 68 good rows; the control: 9 distinct drawn classes
under that model at most 0.90 asserted (measured max 0.740, mean -0.015), so 0.999 is met by
no two different pictures. The whole file: ~30 s on 2 busy cores (training included).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from encoders.images import ImageRejected, decode_image
from encoders.models import load_preprocessing
from encoders.tensor_images import TensorPreprocessor
from index_builder.embeddings import arrow_to_vectors, list_shards
from pipelines.datasets.catalogue import OPENCLIPART_ROOT
from pipelines.datasets.sample import BACKGROUNDS, COLOURS, SHAPES, draw
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from tests import images

pytestmark = [pytest.mark.beam]

MAX_ABS, MEAN_ABS = 1e-5, 1e-6  # normalised units; measured 0.0 / 0.0 (see the docstring)
COSINE = 0.999
DISTINCT_AT_MOST = 0.9  # the control: different drawn classes under the trained model (measured 0.740)
SIZES = [(20, 20), (31, 17), (48, 48), (96, 96), (138, 102), (200, 120), (120, 333), (640, 480), (257, 255)]
CLIPART_MODES = ("RGBA", "LA", "P")
CLIPART_PER_MODE = 4


def drawn_rows() -> dict[str, bytes]:
    """Drawn shapes as JPEGs and PNGs of every size in SIZES (they must always be there)."""
    rows, rng = {}, np.random.default_rng(0)
    for k, (w, h) in enumerate(SIZES):
        shape, colour, bg = SHAPES[k % 5], list(COLOURS)[k % 8], list(BACKGROUNDS.values())[k % 3]
        img = draw(shape, COLOURS[colour], bg, max(w, h)).resize((w, h))
        noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{shape}-{colour} {w}x{h}"
        rows[f"{name} JPEG q90"] = images.save(img, "JPEG", quality=90)
        rows[f"{name} noisy JPEG q75"] = images.save(Image.fromarray(noisy), "JPEG", quality=75)
        rows[f"{name} PNG"] = images.save(img, "PNG")
        rows[f"{name} grayscale JPEG"] = images.save(img.convert("L"), "JPEG")
        rows[f"{name} palette PNG"] = images.save(img.convert("P"), "PNG")
    return rows


def clipart_rows() -> dict[str, bytes]:
    """Real PNGs from openclipart-png: the first few of each mode (transparency included); none
    when the package is not installed."""
    rows, counts = {}, dict.fromkeys(CLIPART_MODES, 0)
    for folder, _, files in sorted(os.walk(os.path.join(OPENCLIPART_ROOT, "png"))):
        for name in sorted(f for f in files if f.endswith(".png")):
            path = os.path.join(folder, name)
            with Image.open(path) as im:
                mode, pixels = im.mode, im.width * im.height
            if counts.get(mode, CLIPART_PER_MODE) < CLIPART_PER_MODE and pixels <= 2_000_000:
                counts[mode] += 1
                with open(path, "rb") as f:
                    rows[f"openclipart {name} ({mode})"] = f.read()
        if all(n == CLIPART_PER_MODE for n in counts.values()):
            break
    return rows


def good_rows() -> dict[str, bytes]:
    return {**drawn_rows(), **images.valid_images(), **clipart_rows()}


def bad_rows() -> dict[str, tuple[bytes, str]]:
    jpeg = images.save(draw("circle", COLOURS["red"], BACKGROUNDS["white"], 96), "JPEG", quality=90)
    return {**images.bad_images(), "JPEG cut after its header": (jpeg[:200], "corrupt_image")}


def test_pixels_are_the_reference_paths_within_the_tolerance(tiny_clip):
    """Called directly on the same bytes, in one batch (the tensor path groups by size) and alone."""
    pre = load_preprocessing(tiny_clip)
    tensor = TensorPreprocessor(pre.recipe(), "cpu")
    good, bad = good_rows(), bad_rows()
    assert len(drawn_rows()) == 5 * len(SIZES)
    datas = list(good.values()) + [d for d, _ in bad.values()]
    pixels, rejected = tensor(datas)
    assert [r.reason if r else None for r in rejected] == [None] * len(good) + [r for _, r in bad.values()]
    for (name, data), ours in zip(good.items(), pixels):
        ref = pre.pixels([decode_image(data)])[0]
        diff = (ours - ref).abs()
        assert diff.max() <= MAX_ABS and diff.mean() <= MEAN_ABS, (name, float(diff.max()), float(diff.mean()))
        torch.testing.assert_close(tensor([data])[0][0], ours, rtol=0, atol=MAX_ABS)
    for name, (data, reason) in bad.items():
        with pytest.raises(ImageRejected) as err:
            decode_image(data)
        assert err.value.reason == reason, name


def embed_vectors(model: str, parquet: str, out: str, preprocess: str) -> tuple[dict, dict]:
    """`embed --preprocess <preprocess>`: the image vectors by id, and the rejects' reasons by id."""
    m = run_embed(EmbedSettings(inputs=(parquet,), output=out, model=model, batch_size=8, preprocess=preprocess))
    assert m.runtime["preprocess"] == preprocess
    table = pa.concat_tables([pq.read_table(s.path) for s in list_shards(out)])
    vectors = arrow_to_vectors(table.column("image_embedding"))[0]
    rejects = {r["id"]: r["reason"] for r in pq.read_table(os.path.join(out, "rejects")).to_pylist()}
    return dict(zip(table.column("id").to_pylist(), vectors)), rejects


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory, trained_clip) -> tuple[dict, dict, dict, dict, list[str]]:
    """One Parquet file of every row, embedded with --preprocess pil and --preprocess tensor."""
    root = tmp_path_factory.mktemp("parity")
    good, bad = good_rows(), bad_rows()
    rows = [{"key": f"g{i}", "caption": "", "jpg": d} for i, d in enumerate(good.values())]
    rows += [{"key": f"b{i}", "caption": "", "jpg": d} for i, (d, _) in enumerate(bad.values())]
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("jpg", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "rows.parquet", row_group_size=16)
    pil, pil_rejects = embed_vectors(trained_clip, str(root / "rows.parquet"), str(root / "pil"), "pil")
    tensor, tensor_rejects = embed_vectors(trained_clip, str(root / "rows.parquet"), str(root / "tensor"), "tensor")
    return pil, tensor, pil_rejects, tensor_rejects, list(good)


def test_every_good_rows_vector_agrees_and_bad_rows_are_rejected_the_same(both_paths):
    pil, tensor, pil_rejects, tensor_rejects, names = both_paths
    assert set(pil) == set(tensor) == {f"g{i}" for i in range(len(names))}
    cos = {i: float(pil[i] @ tensor[i] / np.linalg.norm(pil[i]) / np.linalg.norm(tensor[i])) for i in pil}
    print(f"pil vs tensor under the trained model: min cosine {min(cos.values()):.7f} over {len(cos)} rows")
    low = {names[int(i[1:])]: c for i, c in cos.items() if c < COSINE}
    assert not low, low
    reasons = [r for _, r in bad_rows().values()]
    assert pil_rejects == tensor_rejects == {f"b{i}": r for i, r in enumerate(reasons)}


def test_the_control_distinct_pictures_are_far_apart_under_the_trained_model(both_paths):
    """What makes 0.999 meaningful: two different drawn classes (same size, both paths' vectors)
    are well below it, so rows agreeing at 0.999 show the same picture, not any picture."""
    pil, tensor, _, _, names = both_paths
    keys = [f"g{i}" for i, n in enumerate(names) if n.split("-")[0] in SHAPES and n.endswith("PNG")]
    keys = [k for k in keys if "palette" not in names[int(k[1:])]]  # one PNG per class: 9 classes
    unit = {k: v / np.linalg.norm(v) for k, v in pil.items()}
    distinct = [float(unit[a] @ unit[b]) for j, a in enumerate(keys) for b in keys[j + 1 :]]
    print(f"distinct drawn classes: max cosine {max(distinct):.4f}, mean {np.mean(distinct):.4f}")
    assert len(distinct) == 36 and max(distinct) <= DISTINCT_AT_MOST < COSINE
