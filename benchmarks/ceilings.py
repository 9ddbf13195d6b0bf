"""Ceilings on one device: rows/s of each part that bounds `embed`, measured alone.

  python -m benchmarks.ceilings --device cuda --model vit-b-32 --output benchmarks/results/ceilings.json

- forward, image tower / image + text towers (captions tokenized beforehand), at each --batch
  (bf16 autocast on CUDA as `embed` runs, fp32 elsewhere): the forward-pair ceiling is what
  `embed`'s rows/s is compared with (issue 13: >= 0.6 of it);
- decode_jpeg on the device, one batch call; the TensorPreprocessor (headers, decode, resize,
  normalise: `embed --preprocess tensor`'s decode stage); PIL decode + the checkpoint's image
  processor in one process (`--preprocess pil`'s, per worker process);
- tokenizing the captions (the Rust backend, encoders/tokens.py), one thread.
Each figure is the best of --repeat timed passes after a warm-up pass (CUDA synchronised).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import MODELS, machine, photo_like, write_results
from encoders import openmp


def best_rate(fn, rows: int, repeat: int, sync) -> float:
    """rows/s of the fastest of `repeat` calls of `fn` (after one warm-up call)."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return round(rows / min(times), 1)


def forward_rates(towers, pixels, captions: list[str], repeat: int, sync) -> tuple[float, float]:
    """rows/s of the image tower alone and of both towers, on a preprocessed, pre-tokenized batch."""
    tokens = towers.text_tokens(captions)
    image = best_rate(lambda: towers.encode_pixels(pixels), len(captions), repeat, sync)
    pair = best_rate(
        lambda: (towers.encode_pixels(pixels), towers.encode_texts(captions, tokens=tokens)),
        len(captions),
        repeat,
        sync,
    )
    return image, pair


def main(argv: list[str] | None = None) -> int:
    openmp.apply_defaults()  # as `fusionindex` runs (the CPU-side ceilings use torch's threads)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", choices=sorted(MODELS), default="vit-b-32")
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/fusionindex-ceilings")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from encoders.images import decode_image
    from encoders.models import load_towers
    from encoders.random_models import make_random_clip
    from encoders.tensor_images import TensorPreprocessor

    work = Path(args.workdir)
    model_dir = work / args.model
    if not model_dir.exists():
        make_random_clip(model_dir, **MODELS[args.model], vocab_size=49408)
    towers = load_towers(str(model_dir), device=args.device)
    towers.amp_dtype = torch.bfloat16 if args.device.startswith("cuda") else None
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    n = max(args.batch)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(min(n, 256)):
        buf = io.BytesIO()
        photo_like(rng, args.image_size).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    jpegs = (jpegs * (n // len(jpegs) + 1))[:n]
    captions = [f"a photo of item {i} with {i % 7} round things" for i in range(n)]
    pre = TensorPreprocessor(towers.recipe(), args.device)

    out: dict = {"device": args.device, "model": args.model, "image_size": args.image_size, "machine": machine()}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name()
    for b in args.batch:
        out[f"forward_image_b{b}"], out[f"forward_pair_b{b}"] = forward_rates(
            towers, pre(jpegs[:b])[0], captions[:b], args.repeat, sync
        )
    b = min(256, n)
    raw = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs[:b]]
    out[f"decode_jpeg_b{b}"] = best_rate(
        lambda: decode_jpeg(raw, mode=ImageReadMode.RGB, device=args.device), b, args.repeat, sync
    )
    out[f"tensor_preprocess_b{b}"] = best_rate(lambda: pre(jpegs[:b]), b, args.repeat, sync)
    out[f"pil_processor_b{b}"] = best_rate(
        lambda: towers.preprocess_images([decode_image(j) for j in jpegs[:b]]), b, max(1, args.repeat // 2), sync
    )
    out[f"tokenize_b{b}"] = best_rate(lambda: towers.text_tokens(captions[:b]), b, args.repeat, sync)
    pairs = [k for k in out if k.startswith("forward_pair_b")]
    out["forward_pair_ceiling"] = max(out[k] for k in pairs)
    for k, v in out.items():
        if isinstance(v, float):
            print(f"{k:<28} {v:>12,.1f} rows/s")
    if args.output:
        write_results(args.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
