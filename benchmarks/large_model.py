"""--large-model's inputs and what crosses to the shared model per row (figures, not pass/fail).

    python -m benchmarks.large_model data DIR    # DIR/data/*.parquet (4,096 256 px JPEGs), DIR/clip
    python -m benchmarks.large_model bytes DIR   # bytes per row sent through the proxy, PIL vs tensors

`data` makes the inputs of docs/performance.md's --large-model comparison (a CLIP whose forward is small, so
preprocessing dominates); the timed command is there. `bytes` measures one 64-row batch
of DIR/data: the PIL images the worker used to send (pickled into the request) against the
pixel and token tensors it sends now (torch's multiprocessing reductions: a pickle of shared
memory handles, plus the tensors' bytes, written once into shared memory).
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.bench import MODELS, make_jpeg_shards
from encoders.random_models import make_random_clip
from encoders.stages import NO_CLOCK
from pipelines.embed.handler import EmbeddingModelHandler, wire_dtype
from pipelines.embed.outcomes import ItemInput
from pipelines.embed.settings import EmbedSettings, Runtime


def make_data(root: Path, rows: int = 4096) -> None:
    make_jpeg_shards(root / "data", rows, size=256, rows_per_group=128)
    make_random_clip(root / "clip", **MODELS["one-layer"])


def bytes_per_row(root: Path, batch_size: int = 64) -> dict[str, float]:
    """Bytes per row crossing to the model: `pil_pickled` (before), and now `handles_pickled`
    through the socket plus `shared_fp32` / `shared_bf16` in shared memory."""
    first = sorted((root / "data").glob("*.parquet"))[0]
    table = pq.read_table(first).slice(0, batch_size).to_pylist()
    batch = [ItemInput(r["key"], r["caption"], r["jpg"]) for r in table]
    settings = EmbedSettings(inputs=(), output="", model=str(root / "clip"), batch_size=batch_size, large_model=True)
    handler = EmbeddingModelHandler(settings)
    images = handler._decoded(batch, None, NO_CLOCK).images  # the decoded PIL images
    texts = [item.caption for item in batch]
    pre = handler.worker_preprocessing()
    pixels, tokens = pre.pixels(images), pre.text_tokens(texts)
    n = len(batch)
    bf16 = wire_dtype(Runtime("cuda", "pil", "bf16", "per_machine"))
    return {
        "pil_pickled": (len(ForkingPickler.dumps((images,))) + len(ForkingPickler.dumps((texts,)))) / n,
        "handles_pickled": (len(ForkingPickler.dumps((pixels,))) + len(ForkingPickler.dumps(((texts,), tokens)))) / n,
        "shared_fp32": (pixels.nbytes + sum(t.nbytes for t in tokens.values())) / n,
        "shared_bf16": (pixels.to(bf16).nbytes + sum(t.nbytes for t in tokens.values())) / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("data", "bytes"))
    p.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    if args.what == "data":
        make_data(args.dir)
    else:
        for name, value in bytes_per_row(args.dir).items():
            print(f"{name}: {value:,.0f} B/row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
