"""`python -m benchmarks.bench --sections frontier`: the budget chooser against a sweep of every
family, on two seeded sets of different shapes.

For each set and budget (bytes per vector): `build-index --max-bytes-per-vector B` (in process)
chooses and builds; the same build with `--factory <its choice>` times building the chosen
index alone; the sweep builds, on all the vectors with the build's training sample size, of
each family of index_builder.candidates the largest code within B (SQ types and PQ bit widths
counted as families of their own), and measures recall@10 at nprobe 1..64. Every recall is
measured the same way: 1000 queries drawn from the set's distribution but not stored, exact
truth by inner product. Each sweep index is trained by the builder's own training code
(index_builder.training.train_template: an OPQ rotation is the parametric one of
index_builder.opq, on the whole training sample). With --autofaiss-venv holding autofaiss,
autofaiss builds an index on the same vectors for the memory the chosen index takes, measured the
same way.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
from faiss.contrib.evaluation import knn_intersection_measure

from encoders import storage
from index_builder import faiss_defaults

BUDGETS = (32, 64, 96, 128, 192, 256)
MAX_NPROBE = 64
K = 10
QUERIES = 1000


def isotropic(n: int, seed: int = 21, d: int = 256, fresh: int | None = None) -> np.ndarray:
    """Clusters of equal spread in every direction: 256 Gaussian centres, noise 0.5, unit length.
    `fresh`: a seed for other points of the same distribution (the same centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, d)).astype(np.float32)
    rng = rng if fresh is None else np.random.default_rng(fresh)
    x = centres[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def anisotropic(n: int, seed: int = 22, d: int = 512, fresh: int | None = None) -> np.ndarray:
    """CLIP-like: a power-law spectrum in a random basis, 2000 clusters, a shared mean direction
    (all cosines positive), unit length. `fresh`: as isotropic's."""
    rng = np.random.default_rng(seed)
    scale = ((1 + np.arange(d)) ** -0.7).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    centres = rng.standard_normal((2000, d)).astype(np.float32) * scale
    rng = rng if fresh is None else np.random.default_rng(fresh)
    x = centres[rng.integers(0, 2000, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32) * scale
    x = x @ basis.T + 0.15 * basis[:, 0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


SETS = {"isotropic-256": isotropic, "anisotropic-512": anisotropic}
SIZES = {"isotropic-256": 200_000, "anisotropic-512": 150_000}  # n of frontier-autofaiss.json's rows (they name none)


def write_set(root: Path, x: np.ndarray, shards: int = 8) -> None:
    """x as an embed run's output under root (shards + manifest), the fused column holding it."""
    from index_builder.embeddings import embeddings_table, shard_name

    (root / "embeddings").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(x)), shards)):
        v = x[part]
        table = embeddings_table([str(j) for j in part], [""] * len(part), v, v, v)
        pq.write_table(table, root / "embeddings" / shard_name(i, shards))
    storage.write_json(str(root / "manifest.json"), {"dim": int(x.shape[1])})


def recall_curve(index: faiss.Index, q: np.ndarray, gt: np.ndarray, also: int | None = None) -> dict[int, float]:
    """recall@K at every power-of-two nprobe up to MAX_NPROBE (the index's nlist at most), and at `also`."""
    from index_builder.params import search_parameters

    nlist = faiss.extract_index_ivf(index).nlist
    out = {}
    ladder = [1 << i for i in range(MAX_NPROBE.bit_length()) if 1 << i <= min(MAX_NPROBE, nlist)]
    for p in ladder + ([also] if also and also not in ladder else []):
        found = index.search(q, K, params=search_parameters(index, p))[1]
        out[p] = round(float(knn_intersection_measure(found, gt)), 4)
    return out


def sweep_families(d: int, nlist: int, n: int, budget: float) -> list:
    """Of each family (SQ types and PQ bit widths apart), the largest code within `budget`."""
    from index_builder.candidates import largest_per_family, space

    cands = space(n, d, nlist)
    split = [c for c in cands]
    keyed = {}
    for c in split:
        key = c.family
        if c.family == "SQ":
            key = c.factory.split(",")[-1]
        elif c.family == "PQ":
            key = "PQx8" if c.factory.endswith("x8np") else "PQx<8"
        keyed.setdefault(key, []).append(c)
    out = []
    for members in keyed.values():
        out += largest_per_family(members, n, max_bytes_per_vector=budget)
    return sorted(out, key=lambda c: -c.bytes_per_vector)


def sweep_build(factory: str, x: np.ndarray, train_size: int, q: np.ndarray, gt: np.ndarray) -> dict:
    """One sweep index on all of x, trained on a seeded sample of train_size: its recall curve."""
    from index_builder.training import train_template

    t = time.monotonic()
    xt = x[np.random.default_rng(0).permutation(len(x))[: min(train_size, len(x))]]  # shuffled, as the build's
    index = train_template(factory, xt)
    index.add(x)
    curve = recall_curve(index, q, gt)
    best = max(curve, key=lambda p: (curve[p], -p))
    return {"factory": factory, "recall_at_10": curve[best], "nprobe": best, "curve": curve,
            "build_s": round(time.monotonic() - t, 2)}  # fmt: skip


def autofaiss_at(work: Path, x: np.ndarray, q: np.ndarray, gt: np.ndarray, memory: int, venv: Path) -> dict:
    """autofaiss (in its own venv, its own index choice and search parameters) on x for `memory`
    bytes of index, measured as every other row here: recall@K of q against gt."""
    from benchmarks.bench import run_autofaiss

    if not (venv / "bin" / "python").exists():
        return {"skipped": f"no autofaiss venv at {venv}; create it with `make bench-autofaiss`"}
    try:
        index, run, usage, index_bytes = run_autofaiss(work, [x], venv, f"{memory}B")
    except RuntimeError as exc:  # e.g. nothing of autofaiss's fits the memory
        return {"memory_bytes": memory, "error": str(exc).splitlines()[-1][:300]}
    found = index.search(q, K)[1]
    return {"factory": run["infos"].get("index_key"), "search_parameters": run["infos"]["index_param"],
            "memory_bytes": memory, "index_bytes": index_bytes,
            "recall_at_10": round(float(knn_intersection_measure(found, gt)), 4), **usage}  # fmt: skip


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def chooser_build(
    src: Path, out: Path, budget: float | None, factory: str | None, target: float, max_memory: int | None = None
) -> tuple[dict, float]:
    """(manifest, CPU seconds) of one in-process build-index: with a budget (bytes per vector, or
    max_memory bytes in all), or --factory."""
    from index_builder.build import build_index
    from index_builder.settings import BuildSettings

    c = _cpu()
    memory = None if max_memory is None else str(max_memory)
    m = build_index(BuildSettings(str(src), str(out), max_bytes_per_vector=budget, factory=factory,
                                  target_recall=target, max_memory=memory))  # fmt: skip
    return m.to_dict(), _cpu() - c


def earlier(paths: list[Path]) -> dict:
    """What --frontier-reuse files hold, by key: ("sweep", set, n, budget) -> the sweep's rows of
    an earlier frontier run (they do not depend on the chooser), ("autofaiss", set, n, budget) ->
    autofaiss's record of that budget (benchmarks/results/frontier-autofaiss.json's rows: its
    index for the memory the chooser's index took then, which the chooser is given again)."""
    out: dict = {}
    for path in paths:
        data = json.loads(path.read_text())
        if isinstance(data, dict):  # a frontier results file
            for name, r in data.get("frontier", {}).items():
                for row in r.get("budgets", []) if isinstance(r, dict) else []:
                    out[("sweep", name, r["n"], row["budget"])] = row["sweep"]
        else:  # autofaiss rows
            for row in data:
                af = row["autofaiss"]
                out[("autofaiss", row["set"], row.get("n", SIZES[row["set"]]), row["budget"])] = af
    return out


def ours_at(src: Path, work: Path, x: np.ndarray, q: np.ndarray, gt: np.ndarray, memory: int, target: float) -> dict:
    """The chooser given `memory` bytes in all (--max-memory): what it keeps and its recall@10."""
    out = work / "at-memory"
    m, cpu = chooser_build(src, out, None, None, target, memory)
    curve = recall_curve(faiss.read_index(str(out / "index.faiss")), q, gt, also=m["nprobe"])
    storage.remove(str(out), recursive=True)
    top = max(p for p in curve if p <= MAX_NPROBE)
    return {"factory": m["factory"], "max_memory": memory, "memory_bytes": m["memory_bytes"],
            "nprobe": m["nprobe"], "recall_at_10": curve[m["nprobe"]], "recall_at_10_nprobe_64": curve[top],
            "cpu_s": round(cpu, 1)}  # fmt: skip


def against_autofaiss(
    work: Path, src: Path, x, q, gt, memory: int, venv: Path, target: float, earlier_run: dict | None
) -> dict:
    """autofaiss for `memory` bytes (or `earlier_run`, its record for another memory), the chooser
    given the memory autofaiss was given (--max-memory: the same budget), and where autofaiss
    took more than that, the chooser given what it took."""
    af = earlier_run or autofaiss_at(work, x, q, gt, memory, venv)
    out = {"autofaiss": af}
    if "recall_at_10" not in af:
        return out
    out["ours_at_autofaiss_memory"] = ours_at(src, work, x, q, gt, af["memory_bytes"], target)
    if af.get("index_bytes", 0) > af["memory_bytes"]:
        out["ours_at_autofaiss_size"] = ours_at(src, work, x, q, gt, af["index_bytes"], target)
    return out


def bench_set(
    work: Path,
    name: str,
    n: int,
    target: float,
    partial: Path | None = None,
    budgets: tuple = BUDGETS,
    autofaiss: Path | None = None,
    reuse: dict | None = None,
) -> dict:
    """The chooser at every budget against the sweep, on set `name` of n vectors. `reuse`:
    earlier()'s sweeps and autofaiss records, used instead of building them again (a family
    added to the candidate space since is built and added to the reused sweep)."""
    from index_builder.factory import choose_nlist, choose_train_size

    x = SETS[name](n + QUERIES)
    x, q = x[:n], x[n:]
    gt = faiss.knn(q, x, K, faiss.METRIC_INNER_PRODUCT)[1]
    src = work / name
    write_set(src, x)
    d, nlist = x.shape[1], choose_nlist(n)
    train_size = choose_train_size(n, f"IVF{nlist},Flat")
    built: dict[str, dict] = {}
    reuse = reuse or {}
    rows = []
    for budget in budgets:
        sweep = list(reuse.get(("sweep", name, n, budget), []))
        have = {s["factory"] for s in sweep}  # reused rows; a family new since is built
        for c in sweep_families(d, nlist, n, budget):
            if c.factory in have:
                continue
            if c.factory not in built:
                built[c.factory] = {**sweep_build(c.factory, x, train_size, q, gt), "family": c.family,
                                    "bytes_per_vector": c.bytes_per_vector}  # fmt: skip
            sweep.append(built[c.factory])
        row = {"budget": budget, "sweep": sweep}
        if sweep:
            row["sweep_best"] = max(sweep, key=lambda s: s["recall_at_10"])
            m, cpu = chooser_build(src, work / f"{name}-{budget}", budget, None, target)
            alone, alone_cpu = chooser_build(src, work / f"{name}-{budget}-alone", None, m["factory"], target)
            index = faiss.read_index(str(work / f"{name}-{budget}" / "index.faiss"))
            curve = recall_curve(index, q, gt, also=m["nprobe"])
            top = max(p for p in curve if p <= MAX_NPROBE)
            row["chosen"] = {"factory": m["factory"], "bytes_per_vector": m["bytes_per_vector"],
                             "memory_bytes": m["memory_bytes"], "nprobe": m["nprobe"],
                             "recall_at_10": curve[m["nprobe"]],
                             "recall_at_10_nprobe_64": curve[top], "batch_1_ms": m["latency"]["batch_1_ms"],
                             "choose_build_s": m["timings"]["total_s"], "screen_s": m["timings"].get("screen_s"),
                             "choose_build_cpu_s": round(cpu, 1), "alone_s": alone["timings"]["total_s"],
                             "alone_cpu_s": round(alone_cpu, 1), "screened": m["choice"]["screened"]}  # fmt: skip
            row["chosen"]["ratio_to_alone"] = round(row["chosen"]["choose_build_s"] / row["chosen"]["alone_s"], 2)
            if autofaiss is not None:
                row.update(against_autofaiss(work, src, x, q, gt, m["memory_bytes"], autofaiss, target,
                                             reuse.get(("autofaiss", name, n, budget))))  # fmt: skip
            row["chosen"]["gap_to_sweep"] = round(
                row["sweep_best"]["recall_at_10"] - row["chosen"]["recall_at_10_nprobe_64"], 4
            )
            for path in (work / f"{name}-{budget}", work / f"{name}-{budget}-alone"):
                storage.remove(str(path), recursive=True)
        rows.append(row)
        print(frontier_row(name, row), flush=True)
        if partial is not None:  # a long run's figures so far, readable before it ends
            partial.write_text(json.dumps({"set": name, "n": n, "budgets": rows}, indent=1) + "\n")
    return {"n": n, "dim": d, "nlist": nlist, "train_size": train_size, "target_recall": target, "budgets": rows}


def frontier_row(name: str, row: dict) -> str:
    """One printed line: the budget, the sweep's best, the chosen index and its costs."""
    if "chosen" not in row:
        return f"  {name} {row['budget']:>4} B: nothing fits"
    b, c, af = row["sweep_best"], row["chosen"], row.get("autofaiss", {})
    theirs = f" | autofaiss {af['factory']} {af['recall_at_10']:.3f}" if "recall_at_10" in af else ""
    if "index_bytes" in af:
        theirs += f" in {af['index_bytes'] / 1e6:.1f} MB (given {af['memory_bytes'] / 1e6:.1f})"
    for key, what in (("ours_at_autofaiss_memory", "given as much"), ("ours_at_autofaiss_size", "at its size")):
        if (at := row.get(key)) is not None:
            theirs += f"; ours {what} {at['factory']} {at['recall_at_10']:.3f} (np {at['nprobe']})"
    return (f"  {name} {row['budget']:>4} B: sweep best {b['factory']} {b['recall_at_10']:.3f} (np {b['nprobe']}) | "
            f"chosen {c['factory']} {c['recall_at_10_nprobe_64']:.3f} at np 64, {c['recall_at_10']:.3f} at np "
            f"{c['nprobe']} | {c['choose_build_s']:.0f} s vs {c['alone_s']:.0f} s alone ({c['ratio_to_alone']}x), "
            f"{c['batch_1_ms']:.2f} ms/query{theirs}")  # fmt: skip


def bench_frontier(work: Path, args) -> dict:
    """Both sets at args.frontier_n vectors (fewer with --frontier-n for a quick run)."""
    faiss.omp_set_num_threads(args.frontier_threads)
    faiss_defaults.apply()  # as the CLI does for build-index: the chooser and the sweep run in this process
    budgets = tuple(int(b) if float(b).is_integer() else float(b) for b in args.frontier_budgets.split(","))
    out = {"budgets": list(budgets), "threads": args.frontier_threads}
    for name in args.frontier_sets.split(","):
        partial = Path(args.output).with_suffix(f".{name}.partial.json")
        venv = Path(args.autofaiss_venv) if args.frontier_autofaiss else None
        reuse = earlier([Path(p) for p in args.frontier_reuse.split(",")] if args.frontier_reuse else [])
        out[name] = bench_set(work, name, args.frontier_n, args.frontier_target, partial, budgets, venv, reuse)
    return out


def table(results: dict) -> list[str]:
    """The printed sweep table of every set: each family's recall@10 at each budget."""
    lines = []
    for name, r in results.items():
        if not isinstance(r, dict) or "budgets" not in r:
            continue
        lines.append(f"frontier {name} ({r['n']} x {r['dim']}, IVF{r['nlist']}, recall@10 at nprobe <= {MAX_NPROBE}):")
        for row in r["budgets"]:
            lines.append(frontier_row(name, row))
            for s in row["sweep"]:
                lines.append(f"      {s['factory']:<34} {s['bytes_per_vector']:>6g} B  {s['recall_at_10']:.3f} "
                             f"(np {s['nprobe']}, {s['build_s']:.0f} s)")  # fmt: skip
    return lines
