"""Near-duplicate groups on planted vectors (issue 23's targets), figures printed and saved.

  python -m benchmarks.duplicates --n 1000000 --dim 256 --output benchmarks/results/duplicates.json

The data: n base vectors around 1,000 centres (natural pairs mostly well below 0.8), then
planted rows replacing the last ones: copies at cosine 0.99 of a base (1 to 3 per base), exact
copies (same vector and same key, as same image bytes would give), pairs just above and just
below the threshold, and a few dense clusters (members at 0.99 to a centre, so ~0.98 to each
other, more of them than the first k). Checked: every planted copy is in its base's group, no
just-below pair is joined directly, every similarity >= the threshold.

Timed: the full pass (structure built for the column, then every row searched) and a night
with 1% new rows (those rows searched against the same structure; the previous groups kept),
with CPU seconds beside wall seconds (the machine may be shared) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from index_builder.duplicates import find_groups
from index_builder.pair_search import build_lists


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def at_cosine(x: np.ndarray, cos: float, rng) -> np.ndarray:
    """Unit rows at exactly `cos` to the unit rows of x."""
    u = rng.standard_normal(x.shape).astype(np.float32)
    u = unit(u - np.sum(u * x, axis=1, keepdims=True) * x)
    return unit(cos * x + np.sqrt(1 - cos * cos) * u)


def planted(n: int, d: int, threshold: float, seed: int = 0) -> dict:
    """Vectors, exact keys and the planted answers (lists of (base row, copy rows))."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((1000, d)).astype(np.float32))
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        noise = unit(rng.standard_normal((m, d)).astype(np.float32))
        x[s : s + m] = unit(0.5 * centres[rng.integers(0, 1000, m)] + 0.866 * noise)
    keys = np.full(n, -1, np.int64)
    free = n  # planted rows overwrite the tail, bases come from the head
    bases = iter(range(n))

    def take(count: int) -> np.ndarray:
        nonlocal free
        free -= count
        return np.arange(free, free + count)

    answers = {"copies": [], "exact": [], "above": [], "below": [], "clusters": []}
    for _ in range(n // 100):  # 1% of bases get 1-3 copies at 0.99
        b, rows = next(bases), take(int(rng.integers(1, 4)))
        x[rows] = at_cosine(np.repeat(x[b : b + 1], len(rows), 0), 0.99, rng)
        answers["copies"].append((b, rows))
    for j in range(n // 1000):  # exact copies: the same vector and key
        b, rows = next(bases), take(2)
        x[rows], keys[[b, *rows]] = x[b], j
        answers["exact"].append((b, rows))
    for name, cos in (("above", threshold + 0.0005), ("below", threshold - 0.0005)):
        for _ in range(n // 1000):
            b, rows = next(bases), take(1)
            x[rows] = at_cosine(x[b : b + 1], cos, rng)
            answers[name].append((b, rows))
    for _ in range(5):  # dense clusters of 200
        b, rows = next(bases), take(200)
        x[rows] = at_cosine(np.repeat(x[b : b + 1], 200, 0), 0.99, rng)
        answers["clusters"].append((b, rows))
    return {"x": x, "keys": keys, "answers": answers, "ids": np.array([f"{i:08d}" for i in range(n)], dtype=object)}


def check(table: pa.Table, data: dict, threshold: float) -> dict:
    """Planted answers against the groups: found / missed counts per kind."""
    group = dict(zip(table.column("id").to_pylist(), table.column("group_id").to_pylist()))
    ids = data["ids"]
    out = {}
    for kind, planted_rows in data["answers"].items():
        together = sum(
            all(group.get(ids[r]) == group.get(ids[b]) is not None for r in rows) for b, rows in planted_rows
        )
        out[kind] = {"planted": len(planted_rows), "grouped": together}
    sim = table.column("similarity").to_numpy()
    out["min_similarity"] = float(sim.min()) if len(sim) else None
    ok = all(out[k]["grouped"] == out[k]["planted"] for k in ("copies", "exact", "above", "clusters"))
    out["ok"] = bool(ok and out["below"]["grouped"] == 0 and (not len(sim) or sim.min() >= threshold))
    return out


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)


def run(n: int, d: int, threshold: float, fresh_share: float, seed: int) -> dict:
    data, gen_s, _ = timed(lambda: planted(n, d, threshold, seed))
    x, ids, keys = data["x"], data["ids"], data["keys"]
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    search, build_s, build_cpu = timed(lambda: build_lists(x, seed=seed))
    (table, counts), search_s, search_cpu = timed(lambda: find_groups(ids, x, threshold, search=search, keys=keys))
    quality = check(table, data, threshold)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    # a night: the last fresh_share of the (non-planted) rows are new; yesterday knew the others
    rng = np.random.default_rng(seed + 1)
    fresh = np.zeros(n, bool)
    fresh[rng.choice(n, int(n * fresh_share), replace=False)] = True
    yesterday = table.filter(pa.array(~np.isin(table.column("id").to_numpy(zero_copy_only=False), ids[fresh])))
    (night, night_counts), night_s, night_cpu = timed(
        lambda: find_groups(ids, x, threshold, search=search, keys=keys, previous=yesterday, fresh=fresh)
    )
    same = night.sort_by("id").select(["id", "group_id"]).equals(table.sort_by("id").select(["id", "group_id"]))
    full_cpu = build_cpu + search_cpu
    return {
        "n": n,
        "dim": d,
        "threshold": threshold,
        "structure": f"{search.nlist} lists, nprobe {search.nprobe}",
        "generate_s": gen_s,
        "full_pass": {
            "build_s": build_s,
            "build_cpu_s": build_cpu,
            "search_s": search_s,
            "search_cpu_s": search_cpu,
            "cpu_s": round(full_cpu, 2),
            **counts,
        },
        "night": {
            "fresh_rows": int(fresh.sum()),
            "wall_s": night_s,
            "cpu_s": night_cpu,
            **night_counts,
            "cpu_share_of_full": round(night_cpu / full_cpu, 4),
            "search_cpu_share": round(night_cpu / search_cpu, 4),
            "same_groups_as_full": bool(same),
        },  # fmt: skip
        "quality": quality,
        "rss_mib": {"after_data": rss_data, "peak": peak, "vectors": x.nbytes >> 20},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--threshold", type=float, default=0.97)
    p.add_argument("--fresh-share", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON file for the figures (printed either way)")
    a = p.parse_args(argv)
    result = run(a.n, a.dim, a.threshold, a.fresh_share, a.seed)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "faiss": faiss.__version__,
    }
    result["command"] = "python -m benchmarks.duplicates " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(result, indent=2))
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["quality"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
