"""`python -m benchmarks.close_calls --set isotropic-256 --memory 9319092`: one budget of the
frontier against autofaiss measured again on many fresh queries, for the budgets where the
frontier's 1000 queries leave the two within their noise.

The chooser (`build-index --max-memory M`, in process) and autofaiss (its own venv, the same M)
build on the frontier set's vectors; both are measured on `--queries` new points of the set's own
distribution (the same centres, other noise: benchmarks.frontier's `fresh` seed), exact truth by
inner product, each at the search parameters it chose (ours also at 2x and 4x its nprobe).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from benchmarks.frontier import QUERIES, SETS, SIZES, K, chooser_build, write_set
from index_builder import faiss_defaults
from index_builder.params import search_parameters

ROOT = Path(__file__).resolve().parent.parent


def recall(index: faiss.Index, q: np.ndarray, gt: np.ndarray, nprobe: int | None = None) -> float:
    params = None if nprobe is None else search_parameters(index, nprobe)
    return round(float(knn_intersection_measure(index.search(q, K, params=params)[1], gt)), 4)


def close_call(work: Path, name: str, memory: int, queries: int, fresh: int, venv: Path) -> dict:
    """Ours and autofaiss's index for `memory` bytes on set `name`, on `queries` fresh points."""
    from benchmarks.bench import run_autofaiss

    n = SIZES[name]
    x = SETS[name](n + QUERIES)[:n]  # the frontier's vectors (its 1000 queries follow them)
    q = SETS[name](queries, fresh=fresh)
    gt = faiss.knn(q, x, K, faiss.METRIC_INNER_PRODUCT)[1]
    write_set(work / name, x)
    m, cpu = chooser_build(work / name, work / "ours", None, None, 0.95, memory)
    ours = faiss.read_index(str(work / "ours" / "index.faiss"))
    out = {"set": name, "n": n, "memory": memory, "queries": queries, "fresh_seed": fresh,
           "ours": {"factory": m["factory"], "memory_bytes": m["memory_bytes"], "nprobe": m["nprobe"],
                    "cpu_s": round(cpu, 1), "recall_at_10": recall(ours, q, gt, m["nprobe"]),
                    "by_nprobe": {p: recall(ours, q, gt, p) for p in (m["nprobe"] * 2, m["nprobe"] * 4)}}}  # fmt: skip
    print(json.dumps(out["ours"]), flush=True)
    t = time.monotonic()
    index, run, usage, size = run_autofaiss(work, [x], venv, f"{memory}B")
    out["autofaiss"] = {"factory": run["infos"]["index_key"], "search_parameters": run["infos"]["index_param"],
                        "index_bytes": size, "wall_s": round(time.monotonic() - t, 1),
                        "recall_at_10": recall(index, q, gt)}  # fmt: skip
    print(json.dumps(out["autofaiss"]), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", required=True, choices=sorted(SETS))
    ap.add_argument("--memory", type=int, required=True, help="bytes given to both (--max-memory)")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--fresh-seed", type=int, default=777)
    ap.add_argument("--autofaiss-venv", default=str(ROOT / ".autofaiss-venv"))
    ap.add_argument("--threads", type=int, default=1, help="faiss threads of our build (autofaiss: its own)")
    ap.add_argument("--output", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    faiss_defaults.apply()
    with tempfile.TemporaryDirectory(prefix="close-call-") as work:
        out = close_call(Path(work), args.set, args.memory, args.queries, args.fresh_seed, Path(args.autofaiss_venv))
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
