"""fusionindex benchmarks: the pipeline against what it wraps, on the same data and model.

    python -m benchmarks.bench [--rows 512] [--model small|vit-b-32] [--batch-size 32] ...

Prints a table and writes benchmarks/results/latest.json. Sections:
  embed   bare loop (read Parquet, decode, preprocess, forward; plain Python) vs
          `fusionindex embed` (subprocess: wall incl. start-up; and throughput beyond
          start-up = rows / time spent inside row groups, from the run's metrics);
          fastest of --repeat alternating runs each
  peer    clip-retrieval 2.45 `inference` on the same JPEGs (as webdataset tars) and model
  rss     peak RSS of `fusionindex embed` at N and 10N rows
  index   `fusionindex build-index` vs a plain faiss script (same factory: sample, train,
          add per shard into template copies, merge, write); fastest of --repeat runs each
  pq      PQ training time with and without polysemous training
Figures are printed, never asserted: targets live in the README, not in tests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {
    "small": dict(
        image_size=224,
        patch_size=32,
        hidden_size=256,
        num_layers=6,
        text_hidden_size=256,
        text_layers=6,
        projection_dim=256,
    ),
    "vit-b-32": dict(
        image_size=224,
        patch_size=32,
        hidden_size=768,
        num_layers=12,
        text_hidden_size=512,
        text_layers=12,
        projection_dim=512,
    ),
}


def photo_like(rng: np.random.Generator, size: int) -> Image.Image:
    """Shapes over smooth noise: JPEGs of photo-like size (~20-40 KB at 256 px)."""
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y, r = rng.integers(0, size, 3)
        draw.ellipse(
            [x - r // 3, y - r // 3, x + r // 3, y + r // 3], fill=tuple(int(c) for c in rng.integers(0, 255, 3))
        )
    noise = rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def make_jpeg_shards(out: Path, rows: int, size: int = 256, rows_per_group: int = 128, seed: int = 0) -> list[str]:
    """img2dataset-schema shards of real JPEGs; one file per 1,024 rows."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, rows, 1024):
        n = min(1024, rows - start)
        records = []
        for i in range(start, start + n):
            buf = io.BytesIO()
            photo_like(rng, size).save(buf, "JPEG", quality=90)
            records.append(
                {
                    "key": f"{i:08d}",
                    "caption": f"a photo of item {i} with {i % 7} round things",
                    "status": "success",
                    "jpg": buf.getvalue(),
                }
            )
        path = out / f"{start // 1024:05d}.parquet"
        schema = pa.schema(
            [("key", pa.string()), ("caption", pa.string()), ("status", pa.string()), ("jpg", pa.binary())]
        )
        pq.write_table(pa.Table.from_pylist(records, schema=schema), path, row_group_size=rows_per_group)
        paths.append(str(path))
    return paths


def bare_loop(files: list[str], model_dir: str, batch_size: int, device: str = "cpu") -> dict:
    """What a user would write by hand: the same work as `embed`, minus the pipeline.

    On CUDA it uses bf16 autocast like `embed` does; preprocessing is the processor's (CPU).
    """
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval().to(device)
    processor = CLIPProcessor.from_pretrained(model_dir)
    rows = 0
    t0 = time.perf_counter()
    for f in files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(rg, columns=["key", "caption", "jpg"])
            images, captions = t.column("jpg").to_pylist(), t.column("caption").to_pylist()
            for s in range(0, len(images), batch_size):
                pics = [Image.open(io.BytesIO(b)) for b in images[s : s + batch_size]]
                inputs = processor(
                    text=captions[s : s + batch_size],
                    images=pics,
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=77,
                ).to(device)
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")),
                ):
                    img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
                    txt = model.get_text_features(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).pooler_output
                    torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
                rows += len(pics)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss // 1024


def fusionindex(*args: str) -> list[str]:
    """The CLI as a user runs it (python -m works where the console script is not installed)."""
    return [sys.executable, "-m", "pipelines.cli", "-q", *args]


def bench_embed(work: Path, args) -> dict:
    """Bare loop and `fusionindex embed`, alternating `--repeat` times on the same data.

    The fastest run of each is compared (as timeit does): on a shared machine noise only ever
    slows a run down, so the best run is the closest to the code's own cost. Every run's
    figure and the per-pair ratios are kept in the JSON.
    """
    from encoders.random_models import make_random_clip

    # vocab 49408: OpenAI's tokenizer size, so clip-retrieval (peer section) can load the same model
    model = str(make_random_clip(work / "model", **MODELS[args.model], vocab_size=49408))
    files = make_jpeg_shards(work / "in", args.rows, args.image_size, rows_per_group=args.rows_per_group)
    out = work / "emb"
    bares, runs = [], []
    for _ in range(args.repeat):
        bares.append(bare_loop(files, model, args.batch_size, args.device))
        wall, rss = run_measured(
            fusionindex(
                "embed",
                "--input",
                str(work / "in"),
                "--output",
                str(out),
                "--model",
                model,
                "--batch-size",
                str(args.batch_size),
                "--restart",
                "--device",
                args.device,
                *args.embed_args.split(),
            )
        )
        m = json.loads((out / "manifest.json").read_text())
        t = m["timings"]
        runs.append(
            {
                "wall_s": round(wall, 2),
                "startup_s": round(wall - t["units_s"], 2),
                "units_s": t["units_s"],
                "model_load_s": t["model_load_s"],
                "rows_per_s_wall": round(args.rows / wall, 1),
                "rows_per_s_beyond_startup": round(m["counts"]["embedded"] / t["units_s"], 1),
                "peak_rss_mib": rss,
            }
        )
    bare = max(bares, key=lambda b: b["rows_per_s"])
    best = max(runs, key=lambda r: r["rows_per_s_beyond_startup"])
    paired = [round(r["rows_per_s_beyond_startup"] / b["rows_per_s"], 3) for r, b in zip(runs, bares)]
    return {
        "model": args.model,
        "rows": args.rows,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": args.device,
        "embed_args": args.embed_args,
        "runs": args.repeat,
        "bare_loop": bare,
        "embed": best,
        "ratio_beyond_startup": round(best["rows_per_s_beyond_startup"] / bare["rows_per_s"], 3),
        "paired_ratios": paired,
        "all_bare_rows_per_s": [b["rows_per_s"] for b in bares],
        "all_embed_rows_per_s_beyond_startup": [r["rows_per_s_beyond_startup"] for r in runs],
    }


def write_webdataset(files: list[str], out: Path) -> list[str]:
    """The same rows as webdataset tars ({key}.jpg + {key}.txt), clip-retrieval's input format."""
    import tarfile

    out.mkdir(parents=True, exist_ok=True)
    tars = []
    for i, f in enumerate(files):
        path = out / f"{i:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in pq.read_table(f, columns=["key", "caption", "jpg"]).to_pylist():
                for ext, data in (("jpg", row["jpg"]), ("txt", row["caption"].encode())):
                    info = tarfile.TarInfo(f"{row['key']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tars.append(str(path))
    return tars


def bench_peer(work: Path, args) -> dict:
    """clip-retrieval 2.45 `inference` vs `fusionindex embed`: same JPEGs, model, batch size; wall time.

    Needs the embed section's data and a venv with clip-retrieval (`make bench-peer` makes one).
    """
    exe = Path(args.peer_venv) / "bin" / "clip-retrieval"
    if not exe.exists():
        return {"skipped": f"no clip-retrieval at {exe}; create it with `make bench-peer`"}
    files = sorted(str(p) for p in (work / "in").glob("*.parquet"))
    tars = write_webdataset(files, work / "wds")
    pattern = str(work / "wds" / f"{{00000..{len(tars) - 1:05d}}}.tar")
    cmd = [
        str(exe),
        "inference",
        "--input_dataset",
        pattern,
        "--output_folder",
        str(work / "cr-out"),
        "--input_format",
        "webdataset",
        "--clip_model",
        f"hf_clip:{work / 'model'}",
        "--batch_size",
        str(args.batch_size),
        "--num_prepro_workers",
        str(os.cpu_count() or 1),
        "--enable_metadata",
        "False",
        "--enable_wandb",
        "False",
    ]
    import shutil

    shutil.rmtree(work / "cr-out", ignore_errors=True)
    peer_wall, peer_rss = run_measured(cmd)
    embedded = sum(np.load(p).shape[0] for p in (work / "cr-out" / "img_emb").glob("*.npy"))
    ours_wall, ours_rss = run_measured(
        fusionindex(
            "embed",
            "--input",
            str(work / "in"),
            "--output",
            str(work / "peer-emb"),
            "--model",
            str(work / "model"),
            "--batch-size",
            str(args.batch_size),
            "--restart",
            "--device",
            args.device,
        )
    )
    return {
        "rows": args.rows,
        "clip_retrieval_wall_s": round(peer_wall, 2),
        "clip_retrieval_rows": int(embedded),
        "clip_retrieval_peak_rss_mib": peer_rss,
        "fusionindex_wall_s": round(ours_wall, 2),
        "fusionindex_peak_rss_mib": ours_rss,
        "speedup": round(peer_wall / ours_wall, 2),
    }


def bench_rss(work: Path, args) -> dict:
    from encoders.random_models import make_random_clip

    model = str(make_random_clip(work / "rss-model", **MODELS["small"]))
    out = {}
    for n in (args.rss_rows, args.rss_rows * 10):
        # one row group per file, as img2dataset writes them: memory must follow the batch
        make_jpeg_shards(work / f"rss-{n}", n, args.image_size, rows_per_group=1024, seed=n)
        _, rss = run_measured(
            fusionindex(
                "embed",
                "--input",
                str(work / f"rss-{n}"),
                "--output",
                str(work / f"rss-out-{n}"),
                "--model",
                model,
                "--batch-size",
                str(args.batch_size),
            )
        )
        out[str(n)] = rss
    small, big = out.values()
    return {"peak_rss_mib": out, "ratio_10n_over_n": round(big / small, 3)}


def write_embeddings(root: Path, n: int, d: int, shards: int, seed: int = 0) -> None:
    from index_builder import storage
    from index_builder.embeddings import embeddings_table, shard_name

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, d)).astype(np.float32)
    (root / "embeddings").mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        m = n // shards
        x = centres[rng.integers(0, 256, m)] + 0.5 * rng.standard_normal((m, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        table = embeddings_table([f"{i}-{j}" for j in range(m)], [""] * m, x, x, x)
        pq.write_table(table, root / "embeddings" / shard_name(i, shards))
    storage.write_json(str(root / "manifest.json"), {"dim": d})


PLAIN_FAISS = r"""
import sys, time, glob, numpy as np, pyarrow.parquet as pq, faiss
src, out, factory, train_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
files = sorted(glob.glob(src + "/embeddings/part-*.parquet"))
def vecs(f):
    col = pq.read_table(f, columns=["fused_embedding"]).column(0).combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)
xs = [vecs(f) for f in files]
allx = np.concatenate(xs)
rng = np.random.default_rng(0)
xt = allx[np.sort(rng.choice(len(allx), min(train_size, len(allx)), replace=False))]
index = faiss.index_factory(xt.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
index.train(xt)
merged = faiss.clone_index(index)
start = 0
for x in xs:
    part = faiss.clone_index(index)
    part.add_with_ids(x, np.arange(start, start + len(x)))
    merged.merge_from(part, 0)
    start += len(x)
faiss.write_index(merged, out)
print(time.perf_counter() - t0)
"""


def bench_index(work: Path, args) -> dict:
    """Both builds run `--repeat` times, alternating; the fastest run of each is compared."""
    from index_builder.factory import choose_factory, choose_train_size

    src = work / "vectors"
    write_embeddings(src, args.index_n, args.index_dim, shards=8)
    factory = choose_factory(args.index_n, args.index_dim)
    train_size = choose_train_size(args.index_n, factory)
    script = work / "plain_faiss.py"
    script.write_text(PLAIN_FAISS)
    ours, plain, recall_s = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(script), str(src), str(work / "plain.faiss"), factory, str(train_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_measured(
            fusionindex("build-index", "--embeddings", str(src), "--output", str(work / "idx"), "--factory", factory)
        )
        ours.append(time.perf_counter() - t0)
        m = json.loads((work / "idx" / "manifest.json").read_text())
        recall_s.append(m["timings"]["recall_s"])
    best = int(np.argmin(ours))
    core = ours[best] - recall_s[best]
    return {
        "n": args.index_n,
        "dim": args.index_dim,
        "factory": factory,
        "train_size": train_size,
        "runs": args.repeat,
        "build_index_wall_s": round(ours[best], 2),
        "build_index_recall_s": recall_s[best],
        "build_index_without_recall_s": round(core, 2),
        "plain_faiss_wall_s": round(min(plain), 2),
        "all_build_index_s": [round(x, 2) for x in ours],
        "all_plain_faiss_s": [round(x, 2) for x in plain],
        "ratio_without_recall": round(core / min(plain), 3),
        "recall_at_10": m["recall"]["recall_at_k"],
    }


def bench_pq(args) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.pq_n, 64)).astype(np.float32)
    out = {}
    for name, factory in (("polysemous", "IVF64,PQ16"), ("np", "IVF64,PQ16np")):
        index = faiss.index_factory(64, factory)
        t0 = time.perf_counter()
        index.train(x)
        out[name] = round(time.perf_counter() - t0, 2)
    return {"n": args.pq_n, "dim": 64, "train_s": out, "slowdown": round(out["polysemous"] / out["np"], 2)}


def machine() -> dict:
    import torch

    try:  # the embed section runs without faiss (the GPU check carries no faiss wheel)
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def table(results: dict) -> str:
    lines = []
    if "embed" in results:
        e, bare, emb = results["embed"], results["embed"]["bare_loop"], results["embed"]["embed"]
        lines += [
            f"embed ({e['model']}, {e['rows']} JPEGs of {e['image_size']} px, batch {e['batch_size']}, {e['device']}"
            f"{', ' + e['embed_args'] if e['embed_args'] else ''}; fastest of {e['runs']} alternating runs each):",
            f"  bare loop                  {bare['rows_per_s']:>8.1f} rows/s  ({bare['seconds']} s)",
            f"  fusionindex embed, wall    {emb['rows_per_s_wall']:>8.1f} rows/s  "
            f"({emb['wall_s']} s, start-up {emb['startup_s']} s)",
            f"  fusionindex embed, beyond start-up {emb['rows_per_s_beyond_startup']:>8.1f} rows/s  "
            f"-> ratio {e['ratio_beyond_startup']} (target >= 0.9)",
            f"  per-pair ratios {e['paired_ratios']}",
        ]
    if "peer" in results:
        p = results["peer"]
        lines += [
            f"peer: {p['skipped']}"
            if "skipped" in p
            else f"clip-retrieval inference {p['clip_retrieval_wall_s']} s ({p['clip_retrieval_rows']} rows) vs "
            f"fusionindex embed {p['fusionindex_wall_s']} s, walls with start-up -> {p['speedup']}x"
        ]
    if "rss" in results:
        r = results["rss"]
        lines += [f"peak RSS of embed: {r['peak_rss_mib']} MiB -> 10N/N {r['ratio_10n_over_n']} (target <= 1.25)"]
    if "index" in results:
        i = results["index"]
        lines += [
            f"build-index {i['factory']} on {i['n']} x {i['dim']}: {i['build_index_wall_s']} s "
            f"({i['build_index_recall_s']} s of it measuring recall) vs plain faiss {i['plain_faiss_wall_s']} s "
            f"-> ratio without recall {i['ratio_without_recall']} (target <= 1.1)"
        ]
    if "pq" in results:
        p = results["pq"]
        lines += [
            f"PQ training {p['n']} x 64: polysemous {p['train_s']['polysemous']} s vs np {p['train_s']['np']} s "
            f"({p['slowdown']}x)"
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="embed,peer,rss,index,pq")
    ap.add_argument(
        "--peer-venv", default=str(ROOT / ".peer-venv"), help="venv holding clip-retrieval 2.45 (make bench-peer)"
    )
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--rows-per-group",
        type=int,
        default=128,
        help="Parquet row group size of the generated shards (a batch never spans row groups)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--embed-args", default="", help="extra `fusionindex embed` options, e.g. '--preprocess tensor'")
    ap.add_argument("--rss-rows", type=int, default=200)
    ap.add_argument("--index-n", type=int, default=100_000)
    ap.add_argument("--index-dim", type=int, default=256)
    ap.add_argument("--pq-n", type=int, default=20_000)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="embed and index sections: alternating runs of each side, fastest compared",
    )
    ap.add_argument("--output", default=str(RESULTS / "latest.json"))
    ap.add_argument("--workdir", default=None, help="keep generated data here (default: a temporary directory)")
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, fn in (
            ("embed", lambda: bench_embed(work, args)),
            ("peer", lambda: bench_peer(work, args)),
            ("rss", lambda: bench_rss(work, args)),
            ("index", lambda: bench_index(work, args)),
            ("pq", lambda: bench_pq(args)),
        ):
            if name in sections:
                t = time.perf_counter()
                results[name] = fn()
                print(f"[{name}: {time.perf_counter() - t:.0f} s]", file=sys.stderr)
    print(table(results))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
