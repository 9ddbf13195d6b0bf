"""Header probe micro-benchmark: PIL's Image.open (+ getexif) against encoders.headers.

    python -m benchmarks.header_probe [--images 300] [--size 256] [--repeat 7]

Real pictures: openclipart PNGs (Debian's openclipart-png; smooth noise where it is missing),
scaled to --size px and saved as JPEGs (every 4th with an EXIF orientation, every 8th
progressive) and as PNGs. Prints microseconds per image, fastest of --repeat passes over the
set, for: the probe as it was (PIL only), the header parser alone, and tensor_images._probe
(parser first, PIL where it abstains). One core; figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time

import numpy as np
from PIL import Image

from encoders.headers import read_header
from encoders.tensor_images import EXIF_ORIENTATION, _probe
from pipelines.datasets.catalogue import OPENCLIPART_ROOT

CAP = 10**9


def pil_probe(data: bytes) -> tuple[tuple[int, int], int] | None:
    """The probe before the parser: what _probe did for every image."""
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION, 1) if "exif" in image.info else 1
    except Exception:
        return None
    return size, orientation


def pictures(n: int, size: int, seed: int = 0) -> tuple[list[Image.Image], str]:
    root = os.path.join(OPENCLIPART_ROOT, "png")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".png"))
    rng = random.Random(seed)
    out = []
    if paths:
        for path in rng.sample(paths, min(n, len(paths))):
            with Image.open(path) as im:
                rgba = im.convert("RGBA")
            flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            flat.thumbnail((size, size))
            out.append(flat)
        return out, f"openclipart-png ({len(paths)} files)"
    gen = np.random.default_rng(seed)
    for _ in range(n):
        small = Image.fromarray(gen.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        out.append(small.resize((size, size), Image.Resampling.BICUBIC))
    return out, "smooth noise (openclipart-png not installed)"


def encode(images: list[Image.Image]) -> dict[str, list[bytes]]:
    jpegs, pngs = [], []
    for i, im in enumerate(images):
        kw: dict = {"quality": 90}
        if i % 4 == 0:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = 1 + i % 8
            kw["exif"] = exif.tobytes()
        if i % 8 == 1:
            kw["progressive"] = True
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        jpegs.append(buf.getvalue())
        buf = io.BytesIO()
        im.save(buf, "PNG")
        pngs.append(buf.getvalue())
    return {"JPEG": jpegs, "PNG": pngs}


def per_image_us(fn, datas: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for d in datas:
            fn(d)
        best = min(best, time.perf_counter() - t)
    return best / len(datas) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    images, source = pictures(args.images, args.size)
    sets = encode(images)
    print(f"{len(images)} pictures from {source}, <= {args.size} px; us per image, fastest of {args.repeat}")
    print(f"{'format':6} {'mean bytes':>10} {'PIL probe':>10} {'parser':>8} {'_probe':>8} {'answered':>9}")
    for fmt, datas in sets.items():
        answered = [read_header(d) for d in datas]
        for d, a in zip(datas, answered):  # the parser's answers are PIL's
            assert a is None or pil_probe(d) == ((a[0], a[1]), a[2])
        pil = per_image_us(pil_probe, datas, args.repeat)
        parser = per_image_us(read_header, datas, args.repeat)
        probe = per_image_us(lambda d: _probe(d, CAP, CAP), datas, args.repeat)
        mean = sum(map(len, datas)) / len(datas)
        share = sum(a is not None for a in answered) / len(datas)
        print(f"{fmt:6} {mean:10.0f} {pil:10.1f} {parser:8.1f} {probe:8.1f} {share:9.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
