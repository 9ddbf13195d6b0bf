"""The nlist as a dimension of a budget's screen: which candidates are screened again over more
coarse lists than the guideline's, and whether more lists pay at all.

After the screen over the guideline's nlist (index_builder.budget.choose), where a quick k-means
says more lists remove enough residual energy (`more_lists_pay`), two kinds of candidate are
screened over more lists, on the same rows, queries and truth:
- `wider_candidates`: of the two families ranked best, the largest member within the budget over
  twice the lists (factory.wider_nlist);
- `filled_candidate`: under --max-memory, the guideline winner's own code over as many lists as
  the memory leaves room for, where twice the lists fit only a smaller member of its family.
"""

from __future__ import annotations

import logging

import numpy as np

from index_builder.candidates import Candidate, coarse_name, fits, largest_per_family, space
from index_builder.choose import worth_wider
from index_builder.factory import wider_nlist
from index_builder.screen import coarse_centroids, residual_energy
from index_builder.settings import BuildSettings

log = logging.getLogger(__name__)

WIDER_FAMILIES = 2  # the families ranked first by the screen whose members are screened over twice the lists
# a family further behind the winner on the subsample is not screened again: twice the lists gained
# a family +0.02 to +0.07 recall@10 on the screen of the anisotropic frontier set
WIDER_REACH = 0.05
FILL_STEP = 64  # a filled nlist is a multiple of this
FILL_MIN = 1.25  # fewer lists than this multiple of the guideline's are not worth another k-means


def wider_candidate(cfg: BuildSettings, n: int, d: int, family: str, nlist: int) -> Candidate | None:
    """Of `family`, the largest code within the budget over wider_nlist(n, nlist) lists; None when
    there is no wider nlist or nothing of the family fits there."""
    wide = wider_nlist(n, nlist)
    if wide is None:
        return None
    members = [c for c in space(n, d, wide) if c.family == family]
    fit = largest_per_family(members, n, cfg.max_bytes_per_vector, cfg.max_memory_bytes, on_disk=cfg.merge == "disk")
    return fit[0] if fit else None


def wider_candidates(cfg: BuildSettings, n: int, d: int, records: list[dict], nlist: int) -> list[Candidate]:
    """Of the WIDER_FAMILIES families the screen ranked first (`records`, best first) and within
    WIDER_REACH of the winner, the members within the budget over twice the lists (wider_candidate).
    Not the winner's family alone: under --max-memory the winner may have no member there while the
    runner-up's gains most from it (anisotropic 150k x 512 in 14.5 MB: IVF1024,RaBitQ 0.848 kept,
    OPQ72_216,IVF2048 0.890 unseen)."""
    done = [r for r in records if "error" not in r]
    near = [r["family"] for r in done if r["recall_at_k"] >= done[0]["recall_at_k"] - WIDER_REACH] if done else []
    families = list(dict.fromkeys(near))[:WIDER_FAMILIES]
    return [c for f in families if (c := wider_candidate(cfg, n, d, f, nlist)) is not None]


def at_nlist(c: Candidate, n: int, d: int, nlist: int) -> Candidate:
    """`c`'s code over `nlist` coarse lists, its costs those of candidates.space."""
    factory = c.factory.replace(coarse_name(c.nlist), coarse_name(nlist))
    return next(o for o in space(n, d, nlist) if o.factory == factory)


def filled_candidate(cfg: BuildSettings, n: int, d: int, c: Candidate, wide: int) -> Candidate | None:
    """Under --max-memory, `c`'s code over the most lists below `wide` (multiples of FILL_STEP, at
    least FILL_MIN x c.nlist) that fit the budget; None without --max-memory, where `c`'s code fits
    over `wide` lists too (wider_candidate has it then), or where no such nlist fits. Anisotropic
    150k x 512 in 9.7 MB: OPQ48_144 over 1408 lists 0.837 recall@10 at nprobe 64, over 1024 0.829,
    while over 2048 only OPQ48_96 fits (0.824 on the screen against OPQ48_144's 0.854)."""
    if cfg.max_memory_bytes is None or not c.nlist:
        return None
    on_disk = cfg.merge == "disk"
    if fits(at_nlist(c, n, d, wide), n, cfg.max_bytes_per_vector, cfg.max_memory_bytes, on_disk):
        return None
    least = int(FILL_MIN * c.nlist)
    for nlist in range((wide - 1) // FILL_STEP * FILL_STEP, least - 1, -FILL_STEP):
        more = at_nlist(c, n, d, nlist)
        if fits(more, n, cfg.max_bytes_per_vector, cfg.max_memory_bytes, on_disk):
            return more
    return None


QUICK_ROWS, QUICK_NITER, HELD_ROWS = 20_000, 8, 10_000  # the wider nlist's quick k-means, and its measure


def more_lists_pay(xt: np.ndarray, used: int, centroids: np.ndarray, wide: int, seed: int) -> bool:
    """worth_wider on the rows the guideline's centroids did not train on (xt[used:], drawn for the
    wider nlist), against a quick k-means of `wide` centroids; False when too few rows are left."""
    held = xt[used : used + HELD_ROWS]
    if len(held) < HELD_ROWS // 10:
        return False
    quick = coarse_centroids(xt[: min(used, QUICK_ROWS)], wide, seed, niter=QUICK_NITER)
    energy, wide_energy = residual_energy(held, centroids), residual_energy(held, quick)
    log.info("residual energy over %d lists %.4g, over %d %.4g (%.1f%% less)", len(centroids), energy, wide,
             wide_energy, 100 * (1 - wide_energy / energy))  # fmt: skip
    return worth_wider(energy, wide_energy)
