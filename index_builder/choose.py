"""Pure heuristics for a budget: sizes, the nprobe that reaches a recall target, whether an OPQ
rotation is worth training, and where the merge runs. No faiss, no data: each function tests alone.
The candidates and what each costs are index_builder.candidates; their ranking, index_builder.screen."""

from __future__ import annotations

import os
import re

from encoders.errors import SettingsError

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """'4GB' -> 4e9 bytes, '512MiB' -> 512 * 2^20, '1.5G' -> 1.5e9, '1000' -> 1000."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise SettingsError(f"--max-memory {text!r}: write a size such as 4GB, 512MiB or 16000000")
    return int(float(match.group(1)) * _UNITS[unit])


TOLERANCE = 0.005  # recall@k differences below this are noise here (1000 queries) and buy nothing


def smallest_nprobe(curve: list[tuple[int, float]], target: float, tolerance: float = TOLERANCE) -> tuple[int, bool]:
    """(nprobe, reached): the smallest nprobe of `curve` ((nprobe, recall) pairs, any order) whose
    recall reaches `target`; when none does, the smallest whose recall is within `tolerance` of the
    best (more probes buy nothing) and False."""
    ordered = sorted(curve)
    for nprobe, recall in ordered:
        if recall >= target:
            return nprobe, True
    best = max(r for _, r in ordered)
    return next(p for p, r in ordered if r >= best - tolerance), False


OPQ_MIN_GAIN = 0.05  # an OPQ candidate is trained only when a rotation can remove this share of PQ distortion


def worth_opq(gain: float) -> bool:
    """Whether an OPQ candidate is worth its training (several times a plain PQ's), given the
    share of PQ's distortion bound the best rotation removes (index_builder.opq.opq_gain)."""
    return gain >= OPQ_MIN_GAIN


WIDER_MIN_GAIN = 0.05  # the share of held-out residual energy twice the lists must remove to be screened


def worth_wider(energy: float, wide_energy: float) -> bool:
    """Whether twice the coarse lists are worth screening, given the held-out residual energy
    (index_builder.screen.residual_energy) to the guideline's centroids and to a quick k-means of
    twice as many. On the frontier sets the quick estimate gave 13.4% less on the anisotropic
    150k x 512 set (where twice the lists gain recall@10 +0.04 at 32 B) and 2.6% more on the
    isotropic 200k x 256 one (where they gain nothing): the threshold lies between."""
    return energy > 0 and 1 - wide_energy / energy >= WIDER_MIN_GAIN


def opq_m(factory: str) -> int | None:
    """m of a factory's OPQ rotation ('OPQ64,IVF1024,PQ64x8np' -> 64), None without one."""
    match = re.match(r"OPQ(\d+)", factory)
    return int(match.group(1)) if match else None


def between(low: int, high: int) -> int | None:
    """The nprobe to try next when `low` misses the target and `high` reaches it (bisection on
    integers); None when they are adjacent."""
    return (low + high) // 2 if high - low > 1 else None


MERGE = ("auto", "ram", "disk")
RAM_SHARE = 0.5  # auto merges on disk when the index would take more than this share of free memory


def available_memory() -> int:
    """Bytes of memory free on this machine now (physical pages available)."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def merge_mode(setting: str, index_bytes: int, free_bytes: int, lists: str) -> str:
    """ "ram" or "disk": `setting` (auto | ram | disk) resolved for an index of `index_bytes` on a
    machine with `free_bytes` free. `lists`: "lists" (IVF), "fast-scan" or "flat"; only IVF lists
    can live on disk (SettingsError when disk is asked for the others; auto keeps them in RAM)."""
    if setting == "ram" or (setting == "auto" and (lists != "lists" or index_bytes <= RAM_SHARE * free_bytes)):
        return "ram"
    if lists != "lists":
        why = "fast-scan blocks" if lists == "fast-scan" else "a flat index has no inverted lists"
        raise SettingsError(
            f"--merge disk: faiss cannot keep {why} on disk; choose an IVF index with PQ...x8np, SQ or Flat codes"
        )
    return "disk"
