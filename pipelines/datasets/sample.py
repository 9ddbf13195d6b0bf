"""A small synthetic catalogue in img2dataset's Parquet schema, for the demo and the tests.

Images are real encoded JPEG/PNG bytes of drawn shapes ("a red circle on a white
background"); a few rows per shard carry a failed img2dataset status and a null image, as
img2dataset writes them. Deterministic for a given seed.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from encoders import storage
from pipelines.datasets import img2dataset
from pipelines.datasets.settings import SampleSettings

COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 170), "orange": (245, 140, 20), "black": (10, 10, 10), "pink": (250, 150, 190),
}  # fmt: skip
BACKGROUNDS = {"white": (255, 255, 255), "grey": (128, 128, 128), "light blue": (190, 220, 250)}
SHAPES = ("circle", "square", "triangle", "ring", "cross")


def draw(shape: str, colour: tuple, background: tuple, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    a, b = size // 5, size - size // 5
    if shape == "circle":
        d.ellipse([a, a, b, b], fill=colour)
    elif shape == "square":
        d.rectangle([a, a, b, b], fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, a), (a, b), (b, b)], fill=colour)
    elif shape == "ring":
        d.ellipse([a, a, b, b], outline=colour, width=max(2, size // 10))
    else:
        w = max(2, size // 8)
        d.rectangle([size // 2 - w, a, size // 2 + w, b], fill=colour)
        d.rectangle([a, size // 2 - w, b, size // 2 + w], fill=colour)
    return img


def make_sample(
    output: str,
    *,
    rows: int = SampleSettings.rows,
    shards: int = SampleSettings.shards,
    failed_per_shard: int = 2,
    seed: int = SampleSettings.seed,
    row_group_size: int | None = None,
) -> list[str]:
    """Write `shards` Parquet files (alternating jpg / png columns) under `output`; return their paths."""
    rng = random.Random(seed)
    storage.makedirs(output)
    paths = []
    per_shard = [rows // shards + (1 if i < rows % shards else 0) for i in range(shards)]
    n = 0
    for s, count in enumerate(per_shard):
        fmt = "jpg" if s % 2 == 0 else "png"
        records = []
        for i in range(count):
            shape, colour, bg = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
            size = rng.randrange(48, 160)
            data = img2dataset.encode(draw(shape, COLOURS[colour], BACKGROUNDS[bg], size), fmt)
            failed = i >= count - failed_per_shard
            common = dict(url=f"https://example.invalid/{n}.{fmt}", query=f"{colour} {shape}")
            caption = f"a {colour} {shape} on a {bg} background"
            if failed:
                records.append(
                    img2dataset.record(
                        f"{s:05d}{i:04d}",
                        caption,
                        fmt,
                        None,
                        status="failed_to_download",
                        error_message="HTTP 404",
                        **common,
                    )
                )
            else:
                records.append(
                    img2dataset.record(f"{s:05d}{i:04d}", caption, fmt, data, size=(size, size), exif="{}", **common)
                )
            n += 1
        path = storage.join(output, f"{s:05d}.parquet")
        img2dataset.write(path, records, fmt, extra=("query",), row_group_size=row_group_size)
        paths.append(path)
    return paths
