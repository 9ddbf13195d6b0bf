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
  reindex a full nightly run, then a second night with 1% of rows changed, 1% new and 0.5%
          deleted: embed stage cost ratio, index ids, unchanged vectors against a full rebuild
          (with --exact-shapes and without)
  plan    the driver's input planning (every Parquet footer read) over --plan-files small files,
          serial and with a thread pool, on local disk and on an S3 endpoint on localhost (moto
          server + s3fs, when installed); seconds per 1,000 files and 100k files extrapolated
  engines Beam in one process, Beam with 2 workers, Spark local[2] and local-cluster[2,1,1024] on
          the same rows: wall incl. start-up and CPU seconds of each run's process tree (engines.py)
Figures are printed, never asserted: figures and targets live in docs/performance.md, not in tests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from benchmarks.engines import bench_engines

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
    # ViT-B/32's input, one narrow layer per tower: preprocessing, not the forward passes, dominates
    "one-layer": dict(
        image_size=224,
        patch_size=32,
        hidden_size=64,
        num_layers=1,
        text_hidden_size=64,
        text_layers=1,
        projection_dim=64,
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
    """What a user would write by hand (benchmarks/bare_loop.py), as a process of its own with the
    environment this benchmark was given (no OpenMP or thread settings of ours): the loop's own
    figures plus the process's wall and CPU seconds from start to exit."""
    cmd = [sys.executable, "-m", "benchmarks.bare_loop", "--model", model_dir, "--batch-size", str(batch_size)]
    usage = run_usage([*cmd, "--device", device, "--t0", repr(time.time()), *files], capture=True)
    return {**json.loads(usage.pop("stdout").splitlines()[-1]), **usage}


def _poll_rss(pid: int, peaks: dict[str, int], stop) -> None:
    """Peak RssAnon (the process's own memory) and RssFile (file pages mapped and touched: shared
    libraries, an mmapped .ivfdata: clean, reclaimable) of `pid` in MiB, sampled every 0.1 s until
    `stop` is set; and VmHWM, the kernel's own peak RSS of the program `pid` runs (exact, not
    sampled, up to the last read)."""
    while not stop.wait(0.1):
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    name, _, value = line.partition(":")
                    if name in ("RssAnon", "RssFile", "VmHWM"):
                        peaks[name] = max(peaks.get(name, 0), int(value.split()[0]) // 1024)
        except (OSError, ValueError):
            return


def run_usage(cmd: list[str], capture: bool = False) -> dict:
    """{"wall_s", "cpu_s" (user + system), "peak_rss_mib", "peak_anon_mib", "peak_file_mib",
    "ru_maxrss_mib"} of a child process. CPU seconds compare two programs fairly on a shared machine,
    where wall time depends on what else runs; the anonymous/file split is sampled (Linux).

    peak_rss_mib is the child program's VmHWM (Linux; the kernel's peak, read every 0.1 s):
    ru_maxrss_mib, what wait4 reports and what this figure was until 2026-11-28, also counts the
    pages the child shared with this process between fork (vfork) and exec, so it is never below
    this process's own peak (torch imported, ~800 MiB): a build smaller than that read as that.
    `capture`: also "stdout", the child's output."""
    import threading

    t0 = time.perf_counter()
    out = tempfile.TemporaryFile() if capture else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peaks: dict[str, int] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_rss, args=(proc.pid, peaks, stop), daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    result = {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
              "peak_rss_mib": peaks.get("VmHWM") or usage.ru_maxrss // 1024, "peak_anon_mib": peaks.get("RssAnon"),
              "peak_file_mib": peaks.get("RssFile"), "ru_maxrss_mib": usage.ru_maxrss // 1024}  # fmt: skip
    if capture:
        out.seek(0)
        result["stdout"] = out.read().decode()
        out.close()
    return result


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of a child process."""
    usage = run_usage(cmd)
    return usage["wall_s"], usage["peak_rss_mib"]


def fusionindex(*args: str) -> list[str]:
    """The CLI as a user runs it (python -m works where the console script is not installed)."""
    return [sys.executable, "-m", "pipelines.cli", "-q", *args]


def bench_embed(work: Path, args) -> dict:
    """Bare loop and `fusionindex embed`, alternating `--repeat` times on the same data, each a
    process timed from start to exit (the headline: the wall ratio, start-up included).

    The fastest run of each is compared (as timeit does): on a shared machine noise only ever
    slows a run down, so the best run is the closest to the code's own cost. Every run's
    figure and the per-pair ratios are kept in the JSON, with CPU seconds (fairer than wall
    time where other jobs share the machine) and each side's time from process start to its
    first batch (bare loop) or first committed shard (embed: the earliest shard's mtime).
    """
    from encoders.random_models import make_random_clip

    # vocab 49408: OpenAI's tokenizer size, so clip-retrieval (peer section) can load the same model
    model = str(make_random_clip(work / "model", **MODELS[args.model], vocab_size=49408))
    files = make_jpeg_shards(work / "in", args.rows, args.image_size, rows_per_group=args.rows_per_group)
    out = work / "emb"
    bares, runs = [], []
    for _ in range(args.repeat):
        bares.append(bare_loop(files, model, args.batch_size, args.device))
        spawned = time.time()
        usage = run_usage(
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
        wall, rss = usage["wall_s"], usage["peak_rss_mib"]
        m = json.loads((out / "manifest.json").read_text())
        t = m["timings"]
        shards = list((out / "embeddings").glob("part-*.parquet"))
        runs.append(
            {
                "wall_s": round(wall, 2),
                "cpu_s": usage["cpu_s"],
                "first_shard_s": round(min(p.stat().st_mtime for p in shards) - spawned, 2) if shards else None,
                "startup_s": round(wall - t["units_s"], 2),
                "units_s": t["units_s"],
                "model_load_s": t["model_load_s"],
                "rows_per_s_wall": round(args.rows / wall, 1),
                "rows_per_s_beyond_startup": round(m["counts"]["embedded"] / t["units_s"], 1),
                "peak_rss_mib": rss,
                "stages_s": t.get("stages_s"),
                "decode_ahead_s": t.get("decode_ahead_s"),
                "host_us_per_row": t.get("host_us_per_row"),
                "runtime": m.get("runtime"),  # with the thread share each process ran (pipelines/threads.py)
            }
        )
    bare = max(bares, key=lambda b: b["rows_per_s"])
    best = max(runs, key=lambda r: r["rows_per_s_beyond_startup"])
    paired = [round(r["rows_per_s_beyond_startup"] / b["rows_per_s"], 3) for r, b in zip(runs, bares)]
    wall_ratios = [round(b["wall_s"] / r["wall_s"], 3) for r, b in zip(runs, bares)]  # > 1: embed is faster
    cpu_ratios = [round(b["cpu_s"] / r["cpu_s"], 3) for r, b in zip(runs, bares)]
    return {
        "wall_ratio": round(min(b["wall_s"] for b in bares) / min(r["wall_s"] for r in runs), 3),
        "paired_wall_ratios": wall_ratios,
        "cpu_ratio": round(min(b["cpu_s"] for b in bares) / min(r["cpu_s"] for r in runs), 3),
        "paired_cpu_ratios": cpu_ratios,
        "all_bare_wall_s": [b["wall_s"] for b in bares],
        "all_embed_wall_s": [r["wall_s"] for r in runs],
        # start to the first batch / the first committed shard: each run, and the fastest of each side
        "all_first_batch_s": [b.get("first_batch_s") for b in bares],
        "all_first_shard_s": [r["first_shard_s"] for r in runs],
        "first_batch_s": min((b["first_batch_s"] for b in bares if b.get("first_batch_s")), default=None),
        "first_shard_s": min((r["first_shard_s"] for r in runs if r["first_shard_s"]), default=None),
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


# the stages section's runs: the two preprocessing paths, and the tensor path with its reading, decoding
# and tokenizing in threads beside the forward passes (the CUDA default), which leaves the unit's thread
RUNS_OF_STAGES = {
    "tensor": ("--preprocess", "tensor", "--decode-ahead", "off"),
    "pil": ("--preprocess", "pil", "--decode-ahead", "off"),
    "tensor-ahead": ("--preprocess", "tensor", "--decode-ahead", "on"),
}


def bench_stages(work: Path, args) -> dict:
    """Where `embed`'s time goes, per stage (the manifest's table), for the tensor and PIL paths at
    the GPU batch size, and the host work per row: everything but decode and forward (read,
    classify, header probe, tokenize, assembly, write), the work one process must do per row to
    feed a GPU. A one-layer model keeps the section short; the host stages do not depend on it."""
    from encoders.random_models import make_random_clip

    model = work / "stages-model"
    if not model.exists():
        # the one-layer model at make_random_clip's 32 px input: its forward passes stay small
        make_random_clip(model, **{**MODELS["one-layer"], "image_size": 32, "patch_size": 8})
    src = work / "stages-in"
    if not src.exists():
        make_jpeg_shards(src, args.stages_rows, args.image_size, rows_per_group=1024)
    out: dict = {"rows": args.stages_rows, "image_size": args.image_size, "batch_size": args.stages_batch}
    runs: dict[str, list[dict]] = {path: [] for path in RUNS_OF_STAGES}
    for _ in range(args.repeat):  # the paths alternate, so a noisy minute slows one run of each, not one path
        for path, extra in RUNS_OF_STAGES.items():
            emb = work / f"stages-{path}"
            cmd = ["embed", "--input", str(src), "--output", str(emb), "--model", str(model), "--restart"]
            usage = run_usage(fusionindex(*cmd, "--batch-size", str(args.stages_batch), *extra))
            m = json.loads((emb / "manifest.json").read_text())
            t = m["timings"]
            runs[path].append(
                {
                    "units_s": t["units_s"],
                    "stages_s": t["stages_s"],
                    "other_s": t["other_s"],
                    "host_us_per_row": t["host_us_per_row"],
                    "unit_thread_host_us_per_row": t["unit_thread_host_us_per_row"],
                    "decode_ahead_s": t.get("decode_ahead_s"),
                    "rows_read": m["counts"]["read"],
                    "wall_s": usage["wall_s"],
                    "cpu_s": usage["cpu_s"],
                }
            )
    for path, done in runs.items():  # the run with the least host work, as timeit keeps the fastest
        out[path] = {
            **min(done, key=lambda r: r["host_us_per_row"]),
            "host_us_per_row_runs": [r["host_us_per_row"] for r in done],
            "units_s_runs": [r["units_s"] for r in done],
        }
    return out


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
    from encoders import storage
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


# Measured for issue 11 on its author's data (200k x 256 clustered, a 16 MB budget): autofaiss 2.18
# (faiss-cpu 1.9; it breaks on faiss 1.15) and a plain faiss `IVF1024,PQ64np`. Printed beside ours;
# with `make bench-autofaiss` the budget section also runs autofaiss itself on the same vectors.
AUTOFAISS_16MB = {"factory": "OPQ64_320,IVF2048_HNSW32,PQ64x8", "build_s": 405.6, "size_mb": 18.25,
                  "recall_10_at_10": 0.593, "nprobe": 1555, "ms_per_query": 7.9}  # fmt: skip
PLAIN_PQ64_16MB = {"factory": "IVF1024,PQ64np", "build_s": 10.5, "size_mb": 15.7, "recall_10_at_10": 0.497,
                   "ms_per_query": 0.06}  # fmt: skip

AUTOFAISS = r"""
import json, sys, time
from autofaiss import build_index
src, out, budget = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
_, infos = build_index(embeddings=src, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
                       max_index_memory_usage=budget, current_memory_available="8G", metric_type="ip")
json.dump({"build_s": time.perf_counter() - t, "infos": infos}, open(out + "/run.json", "w"))
"""


def run_autofaiss(work: Path, arrays: Iterable[np.ndarray], venv: Path, budget: str) -> tuple:
    """autofaiss (in its own venv) on `arrays` (written as .npy files, which it reads in name order:
    ids 0.. in that order) for `budget` of index memory: (the index with the search parameters
    autofaiss chose, its run record {build_s, infos}, run_usage's figures, the index file's bytes).
    RuntimeError when autofaiss fails."""
    import faiss

    npy, out = work / "autofaiss-in", work / "autofaiss-out"
    for path in (npy, out):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    for i, x in enumerate(arrays):
        np.save(npy / f"{i:05d}.npy", x)
    script = work / "autofaiss_build.py"
    script.write_text(AUTOFAISS)
    usage = run_usage([str(venv / "bin" / "python"), str(script), str(npy), str(out), budget])
    run = json.loads((out / "run.json").read_text())
    index = faiss.read_index(str(out / "knn.index"))
    faiss.ParameterSpace().set_index_parameters(index, run["infos"]["index_param"])
    return index, run, usage, (out / "knn.index").stat().st_size


def bench_autofaiss(work: Path, src: Path, venv: Path, budget: str, queries: int = 1000, seed: int = 12345) -> dict:
    """autofaiss (in its own venv) on the vectors of `src`, measured like `evaluate-index` measures
    ours: the same seeded queries drawn from the data, each excluded from its own exact neighbours,
    recall@1/10/100 at the search parameters autofaiss chose, latency with the same code."""
    from index_builder.embeddings import list_shards
    from index_builder.measure import exact_neighbours, latency, recall_at, truth_width
    from index_builder.sampling import read_vectors, sample_training_set

    if not (venv / "bin" / "python").exists():
        return {"skipped": f"no autofaiss venv at {venv}; create it with `make bench-autofaiss`"}
    shards = list_shards(str(src))
    # ids 0.. in shard order, as ours
    index, run, usage, index_bytes = run_autofaiss(work, (read_vectors(s, "fused")[0] for s in shards), venv, budget)
    x, ids, _ = sample_training_set(shards, "fused", queries, seed)
    gt = exact_neighbours(x, ids, (read_vectors(s, "fused") for s in shards), truth_width(10, index.ntotal))
    return {
        "factory": run["infos"].get("index_key"),
        "search_parameters": run["infos"]["index_param"],
        "build_s": round(run["build_s"], 2),
        **usage,
        "index_mb": round(index_bytes / 1e6, 2),
        "recall_at": recall_at(index, x, ids, gt, None),
        "latency": latency(index, x, 10, None),
        "infos": run["infos"],
    }


def bench_budget(work: Path, args) -> dict:
    """build-index choosing for a budget on clustered vectors, then evaluate-index re-measuring it."""
    src = work / "budget-vectors"
    if not (src / "manifest.json").exists():
        write_embeddings(src, args.budget_n, args.index_dim, shards=8, seed=3)
    out: dict = {"n": args.budget_n, "dim": args.index_dim, "target_recall": args.budget_target,
                 "autofaiss_16MB_recorded": AUTOFAISS_16MB, "plain_faiss_16MB_recorded": PLAIN_PQ64_16MB}  # fmt: skip
    out["autofaiss_16MB"] = bench_autofaiss(work, src, Path(args.autofaiss_venv), "16MB")
    for name, budget in (("16MB", ["--max-memory", "16MB"]), ("256B", ["--max-bytes-per-vector", "256"])):
        idx = work / f"budget-{name}"
        usage = run_usage(fusionindex("build-index", "--embeddings", str(src), "--output", str(idx), *budget,
                                      "--target-recall", str(args.budget_target)))  # fmt: skip
        m = json.loads((idx / "manifest.json").read_text())
        again = work / f"budget-{name}.eval.json"
        run_measured(fusionindex("evaluate-index", "--index", str(idx), "--json", str(again)))
        e = json.loads(again.read_text())
        out[name] = {
            "factory": m["factory"],
            **usage,
            "build_s": m["timings"]["total_s"],
            "tried": m["choice"]["tried"],
            "skipped": m["choice"].get("skipped", []),
            "reason": m["choice"]["reason"],
            "bytes_per_vector": m["bytes_per_vector"],
            "index_mb": round(m["memory_bytes"] / 1e6, 2),
            "nprobe": m["nprobe"],
            "recall_at": m["recall"]["recall_at"],
            "reached": m["recall"]["reached"],
            "latency": m["latency"],
            "evaluate_index_recall_at": e["recall_at"],
            "claim_minus_independent": {k: round(-v, 4) for k, v in e["difference"].items()},
        }
    return out


def bench_ondisk(work: Path, args) -> dict:
    """build-index --merge disk over args.ondisk_n vectors too many for the shard cache: peak RSS of
    the whole build (a child process) against the final index's size plus one shard's vectors."""
    src = work / "ondisk-vectors"
    shards = 64
    if not (src / "manifest.json").exists():
        write_embeddings(src, args.ondisk_n, args.index_dim, shards=shards, seed=4)
    idx = work / "ondisk-idx"
    usage = run_usage(fusionindex("build-index", "--embeddings", str(src), "--output", str(idx),
                                  "--factory", args.ondisk_factory, "--merge", "disk"))  # fmt: skip
    wall, rss_mib = usage["wall_s"], usage["peak_rss_mib"]
    m = json.loads((idx / "manifest.json").read_text())
    shard_mib = args.ondisk_n // shards * args.index_dim * 4 / 2**20
    index_mib = m["memory_bytes"] / 2**20
    return {
        "n": args.ondisk_n,
        "dim": args.index_dim,
        "factory": m["factory"],
        "merge": m["merge"],
        "wall_s": round(wall, 1),
        "timings": m["timings"],
        "peak_rss_mib": rss_mib,  # the build's own (VmHWM); ru_maxrss_mib: see run_usage
        "ru_maxrss_mib": usage["ru_maxrss_mib"],
        "peak_anon_mib": usage["peak_anon_mib"],  # the process's own memory
        "peak_file_mib": usage["peak_file_mib"],  # shared libraries, ivfdata pages a search mapped: clean
        "cpu_s": usage["cpu_s"],
        "index_mib": round(index_mib, 1),
        "one_shard_vectors_mib": round(shard_mib, 1),
        "rss_over_index_plus_shard": round(rss_mib / (index_mib + shard_mib), 3),
        "ru_maxrss_over_index_plus_shard": round(usage["ru_maxrss_mib"] / (index_mib + shard_mib), 3),
        "nprobe": m["nprobe"],
        "recall_at": m["recall"]["recall_at"],
        "reached": m["recall"]["reached"],
    }


def night_two(files: list[str], out: Path, *, changed: float, new: float, deleted: float, seed: int = 1) -> dict:
    """Night 1's shards with `changed` of the rows given a new caption (half) or image (half),
    `deleted` of them removed and `new` rows appended; returns the expected class of each id.
    Changes stay in the catalogue's own distribution (the same image generator and caption
    pattern), as a night of ordinary churn does: new kinds of items would rightly fail the drift
    test and retrain the template."""
    rng = np.random.default_rng(seed)
    tables = [pq.read_table(f) for f in files]
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    picked = rng.permutation(len(keys))
    n_changed, n_deleted, n_new = round(changed * len(keys)), round(deleted * len(keys)), round(new * len(keys))
    changed_ids = {keys[i] for i in picked[:n_changed]}
    deleted_ids = {keys[i] for i in picked[n_changed : n_changed + n_deleted]}
    out.mkdir(parents=True, exist_ok=True)
    schema = tables[0].schema
    for f, t in zip(files, tables):
        rows = []
        for r in t.to_pylist():
            if r["key"] in deleted_ids:
                continue
            if r["key"] in changed_ids:
                if int(r["key"]) % 2:
                    r["caption"] = r["caption"].replace(" round things", " square things")
                else:
                    buf = io.BytesIO()
                    photo_like(rng, 256).save(buf, "JPEG", quality=90)
                    r["jpg"] = buf.getvalue()
            rows.append(r)
        if f == files[-1]:
            for i in range(n_new):
                buf = io.BytesIO()
                photo_like(rng, 256).save(buf, "JPEG", quality=90)
                n = len(keys) + i
                caption = f"a photo of item {n} with {n % 7} round things"
                rows.append({"key": f"new{i:06d}", "caption": caption, "status": "success", "jpg": buf.getvalue()})
        pq.write_table(
            pa.Table.from_pylist(rows, schema=schema),
            out / Path(f).name,
            row_group_size=pq.ParquetFile(f).metadata.row_group(0).num_rows,
        )
    return {
        "changed": len(changed_ids),
        "deleted": len(deleted_ids),
        "new": n_new,
        "unchanged": len(keys) - len(changed_ids) - len(deleted_ids),
    }


def _night(root: Path, inputs: Path, model: str, args, *extra: str) -> dict:
    """One `fusionindex reindex` (a child process, as cron runs it); its run.json and wall time."""
    wall, _ = run_measured(
        fusionindex(
            "reindex",
            "--input",
            str(inputs),
            "--root",
            str(root),
            "--model",
            model,
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--report-queries",
            "0",
            "--min-recall",
            "0",
            "--max-reject-rate",
            "1",
            *extra,
        )  # fmt: skip
    )
    latest = json.loads((root / "LATEST").read_text())
    return {**json.loads((root / latest["run"] / "run.json").read_text()), "wall_s": round(wall, 2)}


def _run_vectors(root: Path) -> dict[str, bytes]:
    from index_builder.embeddings import arrow_to_vectors

    latest = json.loads((root / "LATEST").read_text())
    out = {}
    for f in sorted((root / latest["run"] / "embeddings").glob("part-*.parquet")):
        t = pq.read_table(f, columns=["id", "image_embedding", "text_embedding", "fused_embedding"])
        cols = [arrow_to_vectors(t.column(c))[0] for c in ("image_embedding", "text_embedding", "fused_embedding")]
        for k, i in enumerate(t.column("id").to_pylist()):
            out[i] = np.concatenate([c[k] for c in cols])
    return out


def bench_reindex(work: Path, args) -> dict:
    """A full night, then a second night (1% changed, 1% new, 0.5% deleted) on the same machine;
    once with --exact-shapes (the incremental night must equal a full rebuild byte for byte) and
    once with the default shapes (how far a full rebuild drifts from the copied vectors)."""
    from encoders.random_models import make_random_clip

    model = str(make_random_clip(work / "reindex-model", **MODELS[args.model]))
    # 1,024-row groups, as img2dataset-style shards hold them (a unit per row group: with 128-row
    # groups each unit of a quiet night would pad its two or three changed rows to a whole batch)
    files = make_jpeg_shards(work / "night1", args.reindex_rows, args.image_size, rows_per_group=1024)
    expected = night_two(files, work / "night2", changed=0.01, new=0.01, deleted=0.005)
    today = {
        k
        for f in sorted((work / "night2").glob("*.parquet"))
        for k in pq.read_table(f, columns=["key"]).column(0).to_pylist()
    }
    out: dict = {"rows": args.reindex_rows, "model": args.model, "batch_size": args.batch_size, "expected": expected}
    for shapes, flags in (("exact_shapes", ["--exact-shapes"]), ("default_shapes", [])):
        a, b = work / f"root-{shapes}", work / f"rebuild-{shapes}"
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)
        one = _night(a, work / "night1", model, args, *flags)
        two = _night(a, work / "night2", model, args, *flags)
        full = _night(b, work / "night2", model, args, *flags)
        inc, reb = _run_vectors(a), _run_vectors(b)
        latest = json.loads((a / "LATEST").read_text())
        ids = set(pq.read_table(a / latest["run"] / "index" / "ids.parquet", columns=["id"]).column(0).to_pylist())
        unchanged = [i for i in inc if i in reb and not i.startswith("new")]
        differ = [i for i in unchanged if inc[i].tobytes() != reb[i].tobytes()]
        out[shapes] = {
            "night1_embed_s": one["stages"]["embed"]["seconds"],
            "night2_embed_s": two["stages"]["embed"]["seconds"],
            "embed_cost_ratio": round(two["stages"]["embed"]["seconds"] / one["stages"]["embed"]["seconds"], 4),
            "night1_wall_s": one["wall_s"],
            "night2_wall_s": two["wall_s"],
            "night2_index_s": two["stages"]["index"]["seconds"],
            "night2_counts": two["counts"],
            "counts_as_expected": all(two["counts"][k] == v for k, v in expected.items()),
            "index_ids_exact": ids == today and two["index"]["ntotal"] == len(today),
            "template": two["index"]["training"]["mode"],
            "unchanged_rows_compared": len(unchanged),
            "unchanged_rows_differing_from_full_rebuild": len(differ),
            "max_abs_difference": float(max((np.abs(inc[i] - reb[i]).max() for i in differ), default=0.0)),
            "full_rebuild_embed_s": full["stages"]["embed"]["seconds"],
        }
    out["exact_shapes_cost"] = round(out["exact_shapes"]["night1_embed_s"] / out["default_shapes"]["night1_embed_s"], 3)
    return out


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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # unset: libgomp spins before sleeping
        "faiss": faiss_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_small_parquet_files(out: Path, n: int) -> list[str]:
    """`n` img2dataset-style Parquet files of 8 rows in 2 row groups each (tiny bytes as images):
    planning reads footers only, so the files' size does not matter, their number does."""
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(8)],
            "caption": ["c"] * 8,
            "jpg": [b"\xff\xd8"] * 8,
            "status": ["success"] * 8,
        }
    )
    paths = []
    for i in range(n):
        path = out / f"{i:06d}.parquet"
        if not path.exists():
            pq.write_table(table, path, row_group_size=4)
        paths.append(str(path))
    return paths


def _time_plans(pattern: str, threads: list[int], repeat: int) -> dict:
    """Fastest of `repeat` plan_inputs runs of `pattern` per thread count (the glob's listing included)."""
    from pipelines.inputs import Columns, plan_inputs

    out = {}
    for t in threads:
        best = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            plan = plan_inputs([pattern], Columns(), threads=t)
            took = time.perf_counter() - t0
            best = took if best is None else min(best, took)
        out[str(t)] = {"seconds": round(best, 3), "files": len(plan.files), "units": len(plan.units)}
    return out


def _moto_s3(files: list[str]):
    """(s3 url of the files' directory, stop) with the files on an S3 endpoint on localhost, or None
    when moto's server is not installed. Points fsspec's s3 at it, as tests/test_reindex.py does."""
    import socket

    import fsspec

    server_bin = Path(sys.executable).parent / "moto_server"
    if not server_bin.exists():
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(server_bin), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    fsspec.filesystem("s3").clear_instance_cache()
    for _ in range(100):  # the server takes a moment to listen
        try:
            fsspec.filesystem("s3", skip_instance_cache=True).mkdir("plan")
            break
        except Exception:  # noqa: BLE001 - any connection error means "not up yet"
            time.sleep(0.1)
    fs = fsspec.filesystem("s3")
    fs.put(str(Path(files[0]).parent), "plan/in", recursive=True)

    def stop() -> None:
        server.terminate()
        server.wait()
        fsspec.config.conf.pop("s3", None)
        fsspec.filesystem("s3").clear_instance_cache()

    return "s3://plan/in/*.parquet", stop


def bench_plan(work: Path, args) -> dict:
    """plan_inputs over args.plan_files files: serial (1 thread) against the default thread pool."""
    from pipelines.inputs import PLAN_THREADS

    threads = sorted({1, 8, PLAN_THREADS})
    files = write_small_parquet_files(work / "plan-files", args.plan_files)
    out: dict = {"files": len(files), "threads_default": PLAN_THREADS, "repeat": args.repeat}
    out["local"] = _time_plans(str(work / "plan-files" / "*.parquet"), threads, args.repeat)
    s3 = _moto_s3(files)
    if s3 is None:
        out["s3_moto"] = {"skipped": "moto_server is not installed (pip install 'moto[server]' s3fs)"}
    else:
        url, stop = s3
        try:
            out["s3_moto"] = _time_plans(url, threads, args.repeat)
        finally:
            stop()
    for where in ("local", "s3_moto"):
        for figures in out[where].values():
            if isinstance(figures, dict):
                per_1000 = figures["seconds"] / len(files) * 1000
                figures["s_per_1000_files"] = round(per_1000, 3)
                figures["extrapolated_100k_files_s"] = round(per_1000 * 100, 1)
    return out


def _engine_inputs(work: Path, rows: int) -> tuple[str, Path]:
    """(model dir, input dir) of the engines section (the small CLIP of width 256)."""
    from encoders.random_models import make_random_clip

    model = work / "engines-model"
    if not model.exists():
        make_random_clip(model, **MODELS["small"], vocab_size=49408)
    inp = work / f"engines-in-{rows}"
    if not inp.exists():
        make_jpeg_shards(inp, rows, 256, rows_per_group=128)
    return str(model), inp


def table(results: dict) -> str:
    lines = []
    if "engines" in results:
        from benchmarks.engines import table as engines_table

        lines += engines_table(results["engines"])
    if "embed" in results:
        e, bare, emb = results["embed"], results["embed"]["bare_loop"], results["embed"]["embed"]
        lines += [
            f"embed ({e['model']}, {e['rows']} JPEGs of {e['image_size']} px, batch {e['batch_size']}, {e['device']}"
            f"{', ' + e['embed_args'] if e['embed_args'] else ''}; fastest of {e['runs']} alternating runs each):",
            f"  WALL RATIO bare loop / embed, processes start to exit: {e['wall_ratio']} (target >= 0.95); "
            f"runs: bare {e['all_bare_wall_s']} s, embed {e['all_embed_wall_s']} s, pairs {e['paired_wall_ratios']}",
            f"  CPU ratio {e['cpu_ratio']} (pairs {e['paired_cpu_ratios']})",
            f"  START to the first batch (bare loop) {e.get('first_batch_s')} s, to the first committed shard (embed) "
            f"{e.get('first_shard_s')} s (target: bare + 1 s; fastest of each; runs: bare "
            f"{e.get('all_first_batch_s')}, embed {e.get('all_first_shard_s')})",
            f"  bare loop                  {bare['rows_per_s']:>8.1f} rows/s  ({bare['seconds']} s in the loop, "
            f"{bare['wall_s']} s wall, {bare['cpu_s']} CPU s)",
            f"  fusionindex embed, wall    {emb['rows_per_s_wall']:>8.1f} rows/s  "
            f"({emb['wall_s']} s, start-up {emb['startup_s']} s)",
            f"  fusionindex embed, beyond start-up {emb['rows_per_s_beyond_startup']:>8.1f} rows/s  "
            f"-> ratio {e['ratio_beyond_startup']} (target >= 0.9)",
            f"  per-pair ratios {e['paired_ratios']}",
            f"  stages (s): {emb.get('stages_s')}; decode-ahead thread: {emb.get('decode_ahead_s')}; "
            f"host work {emb.get('host_us_per_row')} us/row",
        ]
    if "stages" in results:
        st = results["stages"]
        runs = [p for p in RUNS_OF_STAGES if p in st]
        lines += [
            f"embed stages ({st['rows']} JPEGs of {st['image_size']} px, batch {st['batch_size']}, one-layer model; "
            "seconds summed over units, on the units' thread, of the run with the least host work of "
            f"{len(st[runs[0]]['host_us_per_row_runs'])}; tensor-ahead reads, decodes and tokenizes in threads):",
            f"  {'stage':<10}" + "".join(f"{p:>14}" for p in runs),
        ]
        names = list(dict.fromkeys(k for p in runs for k in st[p]["stages_s"]))
        for k in [*names, "other"]:
            cells = [st[p]["stages_s"].get(k, 0.0) if k != "other" else st[p]["other_s"] for p in runs]
            lines.append(f"  {k:<10}" + "".join(f"{c:>14.3f}" for c in cells))
        lines.append(f"  {'unit time':<10}" + "".join(f"{st[p]['units_s']:>14.3f}" for p in runs))
        for p in runs:
            if st[p].get("decode_ahead_s"):
                lines.append(f"  {p} threads: {st[p]['decode_ahead_s']}")
        lines.append(
            "  host work per row (all but decode and forward; target <= 60 us): "
            + ", ".join(
                f"{p} {st[p]['host_us_per_row']} us ({st[p]['unit_thread_host_us_per_row']} on the unit's thread; "
                f"runs {st[p]['host_us_per_row_runs']})"
                for p in runs
            )
        )
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
    if "reindex" in results:
        r = results["reindex"]
        lines.append(f"reindex ({r['rows']} rows, {r['model']}, second night {r['expected']}):")
        for shapes in ("exact_shapes", "default_shapes"):
            x = r[shapes]
            ok = {k: "exact" if x[k] else "WRONG" for k in ("counts_as_expected", "index_ids_exact")}
            lines.append(
                f"  {shapes:<15} embed stage night 1 {x['night1_embed_s']} s, night 2 {x['night2_embed_s']} s -> "
                f"{x['embed_cost_ratio']:.3f} (target <= 0.10); counts {ok['counts_as_expected']}, "
                f"ids {ok['index_ids_exact']}, template {x['template']}; unchanged rows differing from a full "
                f"rebuild {x['unchanged_rows_differing_from_full_rebuild']} of {x['unchanged_rows_compared']} "
                f"(max {x['max_abs_difference']:.1e})"
            )
        lines.append(f"  --exact-shapes costs {r['exact_shapes_cost']}x the default on a full night")
    if "budget" in results:
        b, a = results["budget"], results["budget"]["autofaiss_16MB_recorded"]
        lines.append(
            f"build-index with a budget ({b['n']} x {b['dim']} clustered, target recall@10 {b['target_recall']}):"
        )
        for name in ("16MB", "256B"):
            x = b[name]
            lines.append(
                f"  {name:<5} {x['factory']}: {x['wall_s']} s wall / {x['cpu_s']} s CPU, {x['index_mb']} MB, "
                f"nprobe {x['nprobe']}, "
                f"recall@1/10/100 {x['recall_at']} (reached {x['reached']}), {x['latency']['batch_1_ms']} ms a query; "
                f"independent re-measure differs by {x['claim_minus_independent']}; "
                f"tried {[t['factory'] for t in x['tried']]}"
            )
        af = b.get("autofaiss_16MB", {"skipped": "not run"})
        if "skipped" in af:
            lines.append(f"  autofaiss at 16 MB: {af['skipped']}")
        else:
            ours = b["16MB"]
            lines.append(
                f"  autofaiss at 16 MB, same vectors: {af['factory']} ({af['search_parameters']}), "
                f"{af['wall_s']} s wall / {af['cpu_s']} s CPU, {af['index_mb']} MB, recall@1/10/100 "
                f"{af['recall_at']}, {af['latency']['batch_1_ms']} ms a query -> ours builds "
                f"{af['wall_s'] / ours['wall_s']:.1f}x (wall) / {af['cpu_s'] / ours['cpu_s']:.1f}x (CPU) faster, "
                f"searches {af['latency']['batch_1_ms'] / ours['latency']['batch_1_ms']:.1f}x faster, "
                f"recall@10 {ours['recall_at']['10'] - af['recall_at']['10']:+.3f} (targets >= 10x, >= 10x, >= 0)"
            )
        lines.append(
            f"  autofaiss at 16 MB on the issue author's data (recorded): {a['factory']}, {a['build_s']} s, "
            f"{a['size_mb']} MB, recall {a['recall_10_at_10']}, {a['ms_per_query']} ms a query"
        )
    if "ondisk" in results:
        o = results["ondisk"]
        lines.append(
            f"build-index --merge disk {o['factory']} on {o['n']} x {o['dim']}: {o['wall_s']} s, peak RSS "
            f"{o['peak_rss_mib']} MiB (peaks: own {o.get('peak_anon_mib')}, file pages {o.get('peak_file_mib')}) "
            f"vs index {o['index_mib']} MiB + one shard {o['one_shard_vectors_mib']} MiB -> "
            f"{o['rss_over_index_plus_shard']} (target <= 1.3; wait4's ru_maxrss {o.get('ru_maxrss_mib')} MiB, "
            f"{o.get('ru_maxrss_over_index_plus_shard')}, counts the bench's own pages: run_usage); "
            f"recall {o['recall_at']} at nprobe {o['nprobe']}"
        )
    if "plan" in results:
        p = results["plan"]
        lines.append(f"input planning, {p['files']} files (fastest of {p['repeat']}; 100k extrapolated linearly):")
        for where in ("local", "s3_moto"):
            if "skipped" in p[where]:
                lines.append(f"  {where}: {p[where]['skipped']}")
                continue
            for t, x in p[where].items():
                lines.append(
                    f"  {where:<8} {t:>3} threads: {x['seconds']} s, {x['s_per_1000_files']} s per 1,000 files, "
                    f"~{x['extrapolated_100k_files_s']} s for 100k"
                )
    if "pq" in results:
        p = results["pq"]
        lines += [
            f"PQ training {p['n']} x 64: polysemous {p['train_s']['polysemous']} s vs np {p['train_s']['np']} s "
            f"({p['slowdown']}x)"
        ]
    if "frontier" in results:
        from benchmarks import frontier

        lines += frontier.table(results["frontier"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sections",
        default="embed,stages,peer,rss,index,pq",
        help="comma-separated; also: reindex (~25 min at --reindex-rows 16384), budget (~5 min), ondisk (~10 min), "
        "plan (~1 min), frontier (~1 h at --frontier-n 200000), engines (~10 min idle at 2,048 rows and --repeat 2)",
    )
    ap.add_argument(
        "--peer-venv", default=str(ROOT / ".peer-venv"), help="venv holding clip-retrieval 2.45 (make bench-peer)"
    )
    ap.add_argument(
        "--autofaiss-venv",
        default=str(ROOT / ".autofaiss-venv"),
        help="venv holding autofaiss 2.18 + faiss-cpu 1.9 (make bench-autofaiss); the budget section runs it",
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
    ap.add_argument("--stages-rows", type=int, default=8192, help="rows of the stages section")
    ap.add_argument("--stages-batch", type=int, default=256, help="batch size (and row group) of the stages section")
    ap.add_argument("--index-n", type=int, default=100_000)
    ap.add_argument("--index-dim", type=int, default=256)
    ap.add_argument("--pq-n", type=int, default=20_000)
    ap.add_argument("--budget-n", type=int, default=200_000, help="vectors of the budget section")
    ap.add_argument("--budget-target", type=float, default=0.9, help="--target-recall of the budget section")
    ap.add_argument("--ondisk-n", type=int, default=2_000_000, help="vectors of the on-disk section")
    ap.add_argument("--ondisk-factory", default="IVF4096,SQ8", help="factory of the on-disk section")
    ap.add_argument("--reindex-rows", type=int, default=4096, help="rows of the reindex section's full night")
    ap.add_argument("--plan-files", type=int, default=2000, help="Parquet files of the plan section")
    ap.add_argument("--frontier-n", type=int, default=200_000, help="vectors of each set of the frontier section")
    ap.add_argument("--frontier-sets", default="isotropic-256,anisotropic-512", help="the frontier section's sets")
    ap.add_argument("--frontier-target", type=float, default=0.95, help="--target-recall of the frontier section")
    ap.add_argument("--frontier-threads", type=int, default=2, help="faiss threads of the frontier section")
    ap.add_argument("--frontier-budgets", default="32,64,96,128,192,256", help="bytes per vector, comma-separated")
    ap.add_argument(
        "--frontier-autofaiss",
        action="store_true",
        help="also build autofaiss's index for the memory each chosen index takes (--autofaiss-venv)",
    )
    ap.add_argument(
        "--frontier-reuse",
        default=None,
        help="comma-separated results files (frontier-<set>.json, frontier-autofaiss.json) whose sweeps and "
        "autofaiss records the frontier section reuses instead of building them again",
    )
    ap.add_argument("--engines-rows", type=int, default=2048, help="rows of the engines section")
    ap.add_argument(
        "--engines-runs", default=None, help="the engines section's runs, comma-separated (beam always; default: all)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="embed, index and plan sections: runs of each side, fastest compared",
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
            ("stages", lambda: bench_stages(work, args)),
            ("rss", lambda: bench_rss(work, args)),
            ("index", lambda: bench_index(work, args)),
            ("pq", lambda: bench_pq(args)),
            ("reindex", lambda: bench_reindex(work, args)),
            ("budget", lambda: bench_budget(work, args)),
            ("ondisk", lambda: bench_ondisk(work, args)),
            ("plan", lambda: bench_plan(work, args)),
            ("frontier", lambda: _frontier(work, args)),
            ("engines", lambda: bench_engines(work, args, fusionindex, _engine_inputs)),
        ):
            if name in sections:
                t = time.perf_counter()
                results[name] = fn()
                print(f"[{name}: {time.perf_counter() - t:.0f} s]", file=sys.stderr)
    print(table(results))
    write_results(args.output, results)
    return 0


def _frontier(work: Path, args) -> dict:
    from benchmarks.frontier import bench_frontier

    return bench_frontier(work, args)


def write_results(path: str | Path, results: dict) -> None:
    """The figures as JSON (benchmarks/results/ by default), parents created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
