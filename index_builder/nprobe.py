"""The nprobe of a built index (`tune`): the smallest that reaches the recall target on held-out
queries, measured against one exact ground truth (index_builder.measure), with the whole
recall-vs-nprobe table kept for the manifest."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from index_builder.choose import TOLERANCE, between, smallest_nprobe
from index_builder.measure import KS, recall_at
from index_builder.params import nprobe_ladder
from index_builder.split import members

log = logging.getLogger(__name__)

EXTRA_STEPS = 2  # ladder steps measured past the first nprobe reaching the target
# recall@k gained over two doublings of nprobe below which the ladder stops: smallest_nprobe would
# not take the larger nprobe for so little either
PLATEAU = TOLERANCE


def ks_for(k: int, ntotal: int) -> list[int]:
    """The recall@ cut-offs measured: KS and k, those below ntotal (a query never counts itself)."""
    return sorted(n for n in {*KS, k} if n <= max(1, ntotal - 1))


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    query_ids: np.ndarray,
    gt: np.ndarray,
    k: int,
    target: float,
    nprobe: int | None = None,
) -> dict:
    """The recall record of `index`: recall@k at power-of-two nprobes (up to two steps past the
    first reaching `target`, or until two doublings gain under PLATEAU; all up to nlist when
    `nprobe` is given), the chosen nprobe (`nprobe` when given, else the smallest reaching
    `target`, refined by bisection between ladder steps), whether the target was reached, and
    recall@1/10/100 there. Sets nothing on the index. `gt`: exact neighbours of `queries`
    without themselves (recall.exact_neighbours)."""
    ks = ks_for(k, index.ntotal)
    k = min(k, ks[-1])
    ivf = faiss.try_extract_index_ivf(members(index)[0])  # index shards share one template
    points: dict[int, dict[str, float]] = {}

    def at(p: int) -> float:
        if p not in points:
            points[p] = recall_at(index, queries, query_ids, gt, p, ks)
        return points[p][str(k)]

    if ivf is None:
        chosen, at_chosen = None, recall_at(index, queries, query_ids, gt, None, ks)
        reached = at_chosen[str(k)] >= target
    else:
        ladder = nprobe_ladder(ivf.nlist)
        first_hit = None
        for i, p in enumerate(ladder):
            r = at(p)
            if nprobe is not None:
                continue  # a fixed nprobe: the whole table, for comparison
            if r >= target and first_hit is None:
                first_hit = i
            if first_hit is not None and i >= first_hit + EXTRA_STEPS:
                break  # the table goes a little past the target, not to exhaustive search
            if i >= 2 and r - points[ladder[i - 2]][str(k)] < PLATEAU:
                break  # two doublings bought nothing: more probes will not reach it either
        if nprobe is not None:
            chosen = min(nprobe, ivf.nlist)
            reached = at(chosen) >= target
        else:
            chosen, reached = smallest_nprobe([(p, r[str(k)]) for p, r in points.items()], target)
            below = [p for p in points if p < chosen]
            low = max(below) if below and reached else None
            while low is not None and (mid := between(low, chosen)) is not None:
                if at(mid) >= target:
                    chosen = mid
                else:
                    low = mid
        at_chosen = points[chosen]
    record = {
        "queries": int(len(queries)),
        "k": k,
        "target": target,
        "nprobe": chosen,
        "reached": bool(reached),
        "recall_at_k": at_chosen[str(k)],
        "recall_at": at_chosen,
        "by_nprobe": [{"nprobe": p, "recall_at_k": r[str(k)], "recall_at": r} for p, r in sorted(points.items())],
    }
    if not reached:
        log.warning(
            "recall@%d %.3f at nprobe %s: the target %.3f is not reached%s",
            k,
            record["recall_at_k"],
            chosen,
            target,
            "" if nprobe is not None else " at any nprobe",
        )
    return record
