"""The candidates of a build, screened and built, the best kept: the budget mode.

With a budget (--max-bytes-per-vector / --max-memory), `plan` lists of each family of the
candidate space (index_builder.candidates) the largest code within it; `choose` ranks them on a
subsample (index_builder.screen) and keeps the winner, whose frontier record goes to the
manifest; `try_candidates` trains it on the whole training sample (on the coarse centroids the
screen trained), adds every shard and tunes its nprobe. Without a budget the plan is one factory
(--factory, a reused template's, or the default) and this is one trial. The manifest's `choice`
records the screen, the trial and any candidate the OPQ screen skipped."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from encoders.errors import SettingsError
from index_builder.adding import AddParts, add_all, code_bytes, estimated_memory, lists_of
from index_builder.candidates import Candidate, coarse_name, largest_per_family, smallest, space
from index_builder.choose import available_memory, merge_mode
from index_builder.embeddings import Shard
from index_builder.factory import FLAT_BELOW, choose_factory, choose_nlist, choose_train_size, nlist_of, wider_nlist
from index_builder.measure import exact_neighbours, truth_width
from index_builder.more_lists import filled_candidate, more_lists_pay, wider_candidates
from index_builder.nprobe import tune
from index_builder.sampling import Samples, ShardCache
from index_builder.screen import (
    SCREEN_BASE,
    SCREEN_TRAIN,
    ScreenData,
    coarse_centroids,
    ranked,
    screen,
)
from index_builder.settings import BuildSettings
from index_builder.training import opq_screen, train_candidate

log = logging.getLogger(__name__)


def budget_candidates(cfg: BuildSettings, n: int, d: int) -> list[Candidate]:
    """Of each family of the candidate space (index_builder.candidates), the largest code within the
    budget; with --merge disk, only those faiss can keep on disk. SettingsError when none fits,
    naming the smallest index there is and what it needs."""
    every = space(n, d, choose_nlist(n)) if n >= FLAT_BELOW else [Candidate("Flat", "Flat", 4 * d, 0, "flat")]
    on_disk = cfg.merge == "disk"
    fit = largest_per_family(every, n, cfg.max_bytes_per_vector, cfg.max_memory_bytes, on_disk=on_disk)
    if not fit:
        least = smallest([c for c in every if c.on_disk or not on_disk] or every, n)
        raise SettingsError(
            f"no index of {n} vectors of dim {d} fits --max-bytes-per-vector {cfg.max_bytes_per_vector} / "
            f"--max-memory {cfg.max_memory}{' / --merge disk' if on_disk else ''}: the smallest here, "
            f"{least.factory}, needs {least.bytes_per_vector:g} B per vector and {least.memory(n):,} bytes in all"
        )
    return fit


def plan(cfg: BuildSettings, n: int, d: int) -> list[str]:
    """The factories to consider: --factory, or of each family the largest code within the budget
    (budget_candidates; the screen picks among them), or the default factory for n and d."""
    if cfg.factory:
        return [cfg.factory]
    if not cfg.budgeted:
        return [choose_factory(n, d)]
    return [c.factory for c in budget_candidates(cfg, n, d)]


@dataclass
class Choice:
    """What the screen leaves: the factories to build, the frontier, the coarse centroids it trained."""

    factories: list[str]
    screened: list[dict] = field(default_factory=list)  # screen.screen's records, best first
    coarse: dict[str, np.ndarray] = field(default_factory=dict)  # centroids by training.coarse_of, OPQ
    # rotations by screen.rotation_key: for the final build
    screen_s: float = 0.0


def train_size(cfg: BuildSettings, n: int, factories: list[str]) -> int:
    """Training vectors to draw: --train-size; else for a screened budget enough for the wider
    nlist its screen may keep (wider_nlist; `choose` lets the surplus go when it keeps the
    guideline's); else choose_train_size of the first factory."""
    if cfg.train_size:
        return cfg.train_size
    nlist = nlist_of(factories[0])
    wide = wider_nlist(n, nlist) if len(factories) > 1 and nlist else None
    return choose_train_size(n, f"IVF{wide}" if wide else factories[0])


def _screened(cands: list[Candidate], data: ScreenData) -> tuple[list[dict], dict]:
    """(screen's records of `cands`, all over the nlist of data.centroids; those centroids by
    coarse_name and the OPQ rotations screened, for the final build)."""
    records = screen(cands, data)
    return records, {coarse_name(cands[0].nlist): data.centroids, **data.rotations}


def _more_lists(
    cfg: BuildSettings, n: int, d: int, records: list[dict], cands: list[Candidate], xt, used: int, centroids
) -> list[list[Candidate]]:
    """The candidates to screen over more lists than the guideline's (index_builder.more_lists),
    grouped by nlist: none unless more lists pay; the two best families' over twice the lists, and
    the winner's code over the lists --max-memory leaves room for."""
    nlist = cands[0].nlist
    wide = wider_candidates(cfg, n, d, records, nlist)
    top = records[0]
    first = None if "error" in top else next(c for c in cands if c.factory == top["factory"])
    wide_nlist = wider_nlist(n, nlist)
    filled = filled_candidate(cfg, n, d, first, wide_nlist) if first is not None and wide_nlist else None
    groups = [g for g in (wide, [filled] if filled else []) if g]
    if not groups or not more_lists_pay(xt, used, centroids, wide_nlist, cfg.seed):
        return []
    return groups


def choose(cfg: BuildSettings, samples: Samples, factories: list[str], n: int, d: int) -> Choice:
    """With more than one candidate, screen them on the training sample (index_builder.screen) over
    the guideline's nlist; where more lists pay, candidates over more lists too (_more_lists).
    Keep the best; the coarse centroids and rotation trained for it are handed to the final build.
    `factories`: plan(cfg, n, d)'s."""
    if len(factories) < 2:
        return Choice(factories)
    t = time.monotonic()
    cands = [c for c in budget_candidates(cfg, n, d) if c.factory in factories]
    xt, nlist = samples.train.x, cands[0].nlist
    used = min(len(xt), train_size(cfg, n, [f"IVF{nlist}"]))  # as without a wider nlist
    log.info("screening %d candidates on %d of the %d training vectors", len(cands),
             min(used, SCREEN_TRAIN + SCREEN_BASE), len(xt))  # fmt: skip
    data = ScreenData(xt[:used], samples.queries, coarse_centroids(xt[:used], nlist, cfg.seed), cfg.recall_k)
    records, warm = _screened(cands, data)
    for group in _more_lists(cfg, n, d, records, cands, xt, used, data.centroids):
        nl = group[0].nlist
        log.info("screening %s over %d lists", ", ".join(c.factory for c in group), nl)
        centroids = coarse_centroids(xt[: train_size(cfg, n, [f"IVF{nl}"])], nl, cfg.seed)
        more, more_warm = _screened(group, data.with_centroids(centroids))
        records = ranked(records + more)
        warm = more_warm if nlist_of(records[0]["factory"]) == nl else warm
        cands += group
    memory = {c.factory: c.memory(n) for c in cands}
    records = [{**r, "memory_bytes": memory[r["factory"]]} for r in records]  # what --max-memory bounds, for n
    winner = records[0]
    log.info("kept %s (%g B): recall@%d %.3f on the subsample", winner["factory"], winner["bytes_per_vector"],
             cfg.recall_k, winner["recall_at_k"])  # fmt: skip
    _keep_what_it_trains_on(cfg, samples, n, winner["factory"])
    return Choice([winner["factory"]], records, warm, time.monotonic() - t)


def _keep_what_it_trains_on(cfg: BuildSettings, samples: Samples, n: int, factory: str) -> None:
    """Let go of the training rows beyond what `factory` trains on (drawn for the wider nlist)."""
    keep = train_size(cfg, n, [factory])
    if samples.train.x is not None and len(samples.train.x) > keep:
        samples.train.x = samples.train.x[:keep]  # shuffled when drawn: the first rows are a sample too
        samples.n_train = keep


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


def try_candidates(
    job: Inputs, factories: list[str], reused: faiss.Index | None, training: dict, coarse: dict | None = None
) -> Trials:
    """Build each of `factories` in order (on the `reused` template when given) until one reaches the
    target recall; keep the one of the highest recall. Candidates with an OPQ rotation not worth
    training are skipped (never the first). The ground truth is computed once, after the first
    training (not beside the training sample when there is one candidate). `coarse`: centroids
    already trained on the sample (Choice.coarse), by training.coarse_of."""
    cfg, xt = job.cfg, job.samples.train
    best, tried, skipped, coarse, gt, truth_s = None, [], [], dict(coarse or {}), None, 0.0
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
    kept = next(t for t in tried if t["factory"] == factory)
    target = "reaches" if kept["reached"] else "misses"
    if fitting == 1:
        return f"the only candidate within the budget ({target} recall@{cfg.recall_k} {cfg.target_recall})"
    return (
        f"the highest recall@{cfg.recall_k} of the {fitting} candidates screened on a subsample (of each family "
        f"the largest code within the budget; the frontier in choice.screened); {target} {cfg.target_recall}"
    )
