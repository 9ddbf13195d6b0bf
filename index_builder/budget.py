"""The candidates of a build tried in order, the best kept: the budget mode.

With a budget (--max-bytes-per-vector / --max-memory), `plan` lists the candidates of the largest
code size within it (index_builder.choose); `try_candidates` trains, adds and measures each until
one reaches the recall target, and keeps the one of the highest recall either way. Without a
budget the plan is one factory (--factory, a reused template's, or the default) and this is one
trial. The manifest's `choice` records every trial and every candidate the OPQ screen skipped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from encoders.errors import SettingsError
from index_builder.adding import AddParts, add_all, code_bytes, estimated_memory, lists_of
from index_builder.choose import Candidate, available_memory, candidates, merge_mode, to_try, within_budget
from index_builder.embeddings import Shard
from index_builder.factory import choose_factory
from index_builder.measure import exact_neighbours, truth_width
from index_builder.nprobe import tune
from index_builder.sampling import Samples, ShardCache
from index_builder.settings import BuildSettings
from index_builder.training import opq_screen, train_candidate

log = logging.getLogger(__name__)


def plan(cfg: BuildSettings, n: int, d: int) -> list[str]:
    """The factories to try, in order: --factory, or the candidates of the largest code size within
    the budget (SettingsError when none fits), or the default factory for n and d."""
    if cfg.factory:
        return [cfg.factory]
    if not cfg.budgeted:
        return [choose_factory(n, d)]
    every = candidates(n, d)
    fit = within_budget(every, n, cfg.max_bytes_per_vector, cfg.max_memory_bytes)
    if not fit:
        smallest: Candidate = min(every, key=lambda c: c.memory(n))
        raise SettingsError(
            f"no index of {n} vectors of dim {d} fits --max-bytes-per-vector {cfg.max_bytes_per_vector} / "
            f"--max-memory {cfg.max_memory}: the smallest here, {smallest.factory}, needs "
            f"{smallest.code_bytes:g} B per vector and {smallest.memory(n):,} bytes in all"
        )
    return [c.factory for c in to_try(fit)]


@dataclass
class Trial:
    """One candidate built and measured: its template, filled index and recall record."""

    factory: str
    template: faiss.Index
    index: faiss.Index
    recall: dict  # tune's record
    ondisk: str | None  # the directory of its on-disk lists (merged on disk), else None
    merge: str  # "ram" | "disk"
    train_s: float
    add_s: float
    recall_s: float

    def record(self) -> dict:
        """This trial's record in the manifest's `choice.tried`."""
        r = self.recall
        reached = "target reached" if r["reached"] else f"below the target {r['target']}"
        log.info("%s: recall@%d %.3f at nprobe %s (%s)", self.factory, r["k"], r["recall_at_k"], r["nprobe"], reached)
        return {
            "factory": self.factory,
            "bytes_per_vector": code_bytes(self.index),
            "nprobe": r["nprobe"],
            "recall_at_k": r["recall_at_k"],
            "reached": r["reached"],
            "train_s": round(self.train_s, 3),
            "add_merge_s": round(self.add_s, 3),
            "recall_s": round(self.recall_s, 3),
            "merge": self.merge,
        }


@dataclass
class Trials:
    """What try_candidates leaves: the trial kept, and the manifest's records of all of them."""

    best: Trial
    tried: list[dict] = field(default_factory=list)  # Trial.record() of each, in order
    skipped: list[dict] = field(default_factory=list)  # opq_screen's records
    ground_truth_s: float = 0.0

    @property
    def kept(self) -> dict:
        return next(t for t in self.tried if t["factory"] == self.best.factory)


@dataclass
class Inputs:
    """What every trial of one build works on."""

    cfg: BuildSettings
    shards: list[Shard]
    cache: ShardCache
    samples: Samples
    add_parts: AddParts | None
    scratch: str  # a local directory for on-disk lists

    @property
    def total(self) -> int:
        return sum(s.num_rows for s in self.shards)


def try_candidates(job: Inputs, factories: list[str], reused: faiss.Index | None, training: dict) -> Trials:
    """Build each of `factories` in order (on the `reused` template when given) until one reaches the
    target recall; keep the one of the highest recall. Candidates with an OPQ rotation not worth
    training are skipped (never the first). The ground truth is computed once, after the first
    training (not beside the training sample when there is one candidate)."""
    cfg, xt = job.cfg, job.samples.train
    best, tried, skipped, coarse, gt, truth_s = None, [], [], {}, None, 0.0
    for number, factory in enumerate(factories):
        if reused is None and tried and (skip := opq_screen(factory, xt.x, cfg.seed, coarse)) is not None:
            skipped.append(skip)
            continue
        xt.last = number == len(factories) - 1 and bool(job.samples.held_out)  # nothing reads xt after this
        template, train_s = (
            (reused, 0.0) if reused is not None else train_candidate(factory, xt, job.total, cfg, training, coarse)
        )
        if xt.last:
            xt.x = None  # not held while adding (a reused template trained nothing)
        if gt is None:
            gt, truth_s = _ground_truth(job)
        trial = _add_and_measure(job, number, factory, template, train_s, gt)
        tried.append(trial.record())
        if best is None or trial.recall["recall_at_k"] > best.recall["recall_at_k"]:
            best = trial
        if trial.recall["reached"]:
            break
    return Trials(best, tried, skipped, truth_s)


def _ground_truth(job: Inputs) -> tuple[np.ndarray, float]:
    """(the exact neighbours of the recall queries, seconds)."""
    t = time.monotonic()
    s = job.samples
    gt = exact_neighbours(s.queries, s.query_ids, (job.cache.vectors(shard) for shard in job.shards),
                          truth_width(job.cfg.recall_k, s.n_valid))  # fmt: skip
    return gt, time.monotonic() - t


def _add_and_measure(job: Inputs, number: int, factory: str, template, train_s: float, gt: np.ndarray) -> Trial:
    """Add every shard into `template` (merged on disk under scratch/number when merge_mode says so)
    and measure its recall."""
    cfg, s = job.cfg, job.samples
    t = time.monotonic()
    merge = merge_mode(cfg.merge, estimated_memory(template, s.n_valid), available_memory(), lists_of(template))
    ondisk = os.path.join(job.scratch, str(number)) if merge == "disk" else None
    index = add_all(cfg, template, job.shards, s.valid_counts, job.cache, job.add_parts, ondisk)
    add_s = time.monotonic() - t
    t = time.monotonic()
    recall = tune(index, s.queries, s.query_ids, gt, cfg.recall_k, cfg.target_recall, cfg.nprobe)
    return Trial(factory, template, index, recall, ondisk, merge, train_s, add_s, time.monotonic() - t)


def choice_reason(cfg: BuildSettings, factory: str, tried: list[dict], reused: bool, fitting: int) -> str:
    """Why the manifest's factory was chosen, in words."""
    if reused:
        return "the earlier index's template was reused"
    if cfg.factory:
        return "--factory"
    if not cfg.budgeted:
        return "the default for the vector count and dimension (no budget given)"
    done = tried[-1]
    if done["reached"] and done["factory"] == factory:
        return (
            f"the first of the {fitting} candidates of the largest code size within the budget to reach "
            f"recall@{cfg.recall_k} {cfg.target_recall} (tried {len(tried)})"
        )
    return (
        f"no candidate of the largest code size within the budget reached recall@{cfg.recall_k} "
        f"{cfg.target_recall} ({len(tried)} tried, {fitting - len(tried)} skipped); kept the best"
    )
