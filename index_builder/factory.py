"""Pure heuristics: which FAISS index to build for n vectors of dim d, and how to train it.

Follows the FAISS guidelines (wiki "Guidelines to choose an index"):
- nlist: about 4*sqrt(n) (power of two) below 1M vectors, 65536 up to 10M, 262144 up to
  100M, 1048576 beyond, never more than n/39 so each centroid gets >= 39 training points;
  an HNSW coarse quantizer from 65536 lists on;
- PQ: m sub-quantizers, the largest GPU-supported m that divides d with >= 2 dims each,
  8-bit codes (4-bit codes lost self-query recall on small sets, see docs/performance.md);
  always the `np` suffix: polysemous training costs several times the training time for
  nothing here;
- below 1,000 vectors an exact `Flat` index: IVF-PQ on so few vectors only loses recall.
"""

from __future__ import annotations

import math
import re

from encoders.errors import SettingsError

MIN_POINTS_PER_CENTROID = 39
FLAT_BELOW = 1_000
GPU_PQ_M = (64, 56, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4, 3, 2, 1)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def choose_nlist(n: int) -> int:
    """Number of inverted lists for n vectors (see module docstring)."""
    if n >= 100_000_000:
        nlist = 1 << 20
    elif n >= 10_000_000:
        nlist = 1 << 18
    elif n >= 1_000_000:
        nlist = 1 << 16
    else:
        nlist = _pow2_floor(4 * math.sqrt(n))
    return max(1, min(nlist, _pow2_floor(n / MIN_POINTS_PER_CENTROID)))


def wider_nlist(n: int, nlist: int) -> int | None:
    """The second nlist a budgeted build screens: twice the guideline's, while each of its lists
    still gets MIN_POINTS_PER_CENTROID of the n vectors and the coarse quantizer stays flat (below
    65536 lists); None otherwise. Twice the lists leave smaller residuals for the codes (on the
    anisotropic 150k x 512 set, OPQ32 at 32 B: recall@10 0.745 with 1024 lists, 0.782 with 2048)."""
    wide = 2 * nlist
    return wide if wide < 1 << 16 and wide * MIN_POINTS_PER_CENTROID <= n else None


def choose_pq_m(d: int) -> int:
    """Largest GPU-supported sub-quantizer count dividing d with >= 2 dims per sub-vector."""
    for m in GPU_PQ_M:
        if d % m == 0 and d // m >= 2:
            return m
    return 1


def choose_factory(n: int, d: int) -> str:
    """The default index_factory string for n vectors of dim d."""
    if n < FLAT_BELOW:
        return "Flat"
    nlist = choose_nlist(n)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 1 << 16 else f"IVF{nlist}"
    return f"{coarse},PQ{choose_pq_m(d)}x8np"


def nlist_of(factory: str) -> int | None:
    """nlist named in a factory string ('IVF4096,PQ64np' -> 4096), None for non-IVF."""
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def choose_train_size(n: int, factory: str) -> int:
    """Training sample size: MIN_POINTS_PER_CENTROID (39, the fewest faiss's k-means accepts without
    a warning) points per list, at least 20k (PQ codebooks), at most 2M. The sample is the largest
    thing a large build holds before it adds: 39 rather than 50 points per list (IVF4096 at d=256:
    156 rather than 200 MiB) reached the same recall target at 2M x 256 (docs/performance.md, Building on disk)."""
    nlist = nlist_of(factory) or 1
    return min(n, max(20_000, min(MIN_POINTS_PER_CENTROID * nlist, 2_000_000)))


def check_factory(factory: str) -> None:
    """Refuse polysemous PQ training (`PQm` without `np` on a non-fast-scan PQ)."""
    for match in re.finditer(r"(?<![A-Za-z])PQ(\d+)(x\d+)?(fs|np)?", factory):  # not the PQ of OPQ
        if match.group(3) is None:
            raise SettingsError(
                f"factory {factory!r}: {match.group(0)} turns on polysemous training (3-5x slower, "
                f"no benefit here); write {match.group(0)}np"
            )
