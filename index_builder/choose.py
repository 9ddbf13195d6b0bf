"""Pure heuristics for a memory budget: which index codes fit, what they cost, in what order to
try them, and which nprobe reaches a recall target. No faiss, no data: each function tests alone.

Sizes follow faiss's storage: an IVF index keeps, per vector, its code (`code_bytes`) plus an
int64 id in its inverted list; once, the coarse centroids (nlist x d float32; an HNSW32 graph
over them from 65536 lists on), the codebooks (PQ: 2^nbits x d float32; SQ: 2 x d), and an OPQ
rotation (d x d float32). `--max-bytes-per-vector` bounds the code alone (the figure faiss's
own docs quote: SQ8 is d bytes, PQ64x8 64); `--max-memory` bounds the whole index in RAM.

Candidates are ordered most accurate first (bigger codes before smaller); at one code size the
fast-scan 4-bit PQ (fastest to search and to train) comes before 8-bit PQ, and OPQ last (slowest
to train, usually the most accurate of the three). The builder tries the candidates of the
largest code size that fits (`to_try`), in that order, and stops at the first that reaches the
recall target: a smaller code would not reach what a larger one missed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from encoders.errors import SettingsError
from index_builder.factory import FLAT_BELOW, GPU_PQ_M, choose_nlist

ID_BYTES = 8  # an int64 id per vector in an inverted list
HNSW_FROM = 1 << 16  # an HNSW32 coarse quantizer from this many lists on (factory.choose_factory)
MAX_TRIALS = 4  # candidates built at most before the best one found is kept

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """'4GB' -> 4e9 bytes, '512MiB' -> 512 * 2^20, '1.5G' -> 1.5e9, '1000' -> 1000."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise SettingsError(f"--max-memory {text!r}: write a size such as 4GB, 512MiB or 16000000")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Candidate:
    """One index to try: its factory string and what it costs."""

    factory: str
    code_bytes: float  # per vector, the code alone (what --max-bytes-per-vector bounds)
    fixed_bytes: int  # once per index: coarse centroids (+ HNSW graph), codebooks, OPQ rotation
    fast_scan: bool  # 4-bit fast-scan PQ: fast, but faiss cannot merge it on disk

    def memory(self, n: int) -> int:
        """Bytes of the whole index in RAM holding n vectors."""
        per_vector = self.code_bytes + (ID_BYTES if self.factory != "Flat" else 0)
        return int(math.ceil(n * per_vector)) + self.fixed_bytes

    def as_dict(self, n: int) -> dict:
        return {"factory": self.factory, "bytes_per_vector": self.code_bytes, "memory_bytes": self.memory(n)}


def _coarse_bytes(nlist: int, d: int) -> int:
    graph = nlist * 32 * 2 * 4 if nlist >= HNSW_FROM else 0  # HNSW32: ~2 x 32 int32 links per node
    return nlist * d * 4 + graph


def candidates(n: int, d: int) -> list[Candidate]:
    """Every index this builder would consider for n vectors of dim d, most accurate first."""
    if n < FLAT_BELOW:
        return [Candidate("Flat", 4 * d, 0, False)]
    nlist = choose_nlist(n)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_FROM else f"IVF{nlist}"
    base = _coarse_bytes(nlist, d)
    out = [
        Candidate(f"{coarse},Flat", 4 * d, base, False),
        Candidate(f"{coarse},SQfp16", 2 * d, base + 2 * d * 4, False),
        Candidate(f"{coarse},SQ8", d, base + 2 * d * 4, False),
    ]
    for m in GPU_PQ_M:
        if d % m or d // m < 2 or m >= d:  # PQ with one dim per sub-vector is a worse SQ8
            continue
        if d % (2 * m) == 0 and d // (2 * m) >= 2:  # same bytes as PQm x8: 2m sub-quantizers of 4 bits
            out.append(Candidate(f"{coarse},PQ{2 * m}x4fs", m, base + 16 * d * 4, True))
        out.append(Candidate(f"{coarse},PQ{m}x8np", m, base + 256 * d * 4, False))
        if m >= 4:
            out.append(Candidate(f"OPQ{m},{coarse},PQ{m}x8np", m, base + 256 * d * 4 + d * d * 4, False))
    return out


def within_budget(
    cands: list[Candidate],
    n: int,
    max_bytes_per_vector: float | None = None,
    max_memory: int | None = None,
    on_disk: bool = False,
) -> list[Candidate]:
    """The candidates that fit both limits (either may be None), in the same order; with
    `on_disk`, no fast-scan index (faiss cannot merge those into on-disk inverted lists)."""
    return [
        c
        for c in cands
        if (max_bytes_per_vector is None or c.code_bytes <= max_bytes_per_vector)
        and (max_memory is None or c.memory(n) <= max_memory)
        and not (on_disk and c.fast_scan)
    ]


def to_try(fit: list[Candidate], limit: int = MAX_TRIALS) -> list[Candidate]:
    """Of the candidates that fit (most accurate first), those of the largest code size, at most `limit`."""
    return [c for c in fit if c.code_bytes == fit[0].code_bytes][:limit] if fit else []


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
