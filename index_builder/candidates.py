"""The candidate space of faiss 1.15 for a budget: every IVF codec the CPU can build, add in
parts and merge, with what each costs. Pure: no faiss, no data; tests check every formula
against faiss's own sizes (tests/unit/test_candidates.py).

Budget semantics, stated once:
- `bytes_per_vector` (what `--max-bytes-per-vector` bounds) is what each vector costs in the
  inverted lists apart from its int64 id: its code plus any per-vector factors. For fast-scan
  families, whose lists report no code_size, it is the packed code plus their auxiliary
  per-vector data (faiss's block_size / n_per_block).
- `memory(n)` (what `--max-memory` bounds) is the whole index in RAM holding n vectors:
  codes, ids, half a block of padding per list for fast-scan, the coarse centroids (+ an HNSW
  graph over them from 65536 lists on), codebooks, SQ ranges and OPQ rotations.

| family   | factory (codec part)  | bytes per vector                          | lists     |
|----------|-----------------------|-------------------------------------------|-----------|
| Flat     | Flat                  | 4 d                                       | lists     |
| SQ       | SQfp16, SQbf16        | 2 d                                       | lists     |
| SQ       | SQ8, SQ6, SQ4         | ceil(b d / 8)                             | lists     |
| PQ       | PQ{m}x{b}np, m \\| d  | ceil(m b / 8)                             | lists     |
| PQfs     | PQ{m}x4fs             | ceil(m / 2)                               | fast-scan |
| OPQ      | OPQ{m}[_{D}],...,PQ{m}x8np, m = 8, 16, .. d/2; D = m floor(d/m), .., 2m | m | lists |
| RaBitQ   | RaBitQ, RaBitQ{b}     | ceil(d/8) + 8 (b = 1); ceil(d/8) + ceil((b-1) d/8) + 20 | lists |
| RaBitQfs | RaBitQfs, RaBitQfs{b} | the same as RaBitQ{b}                     | fast-scan |
| PCARaBitQ | PCA{D},...,RaBitQ[{b}], D = 8k < d | RaBitQ{b}'s at D dims               | lists     |

RaBitQ's per-vector factors: 2 floats for 1 bit; 3 floats plus 2 for the extra bits' scale
when b > 1. PCARaBitQ projects on the D principal axes first: fewer dims, more bits a dim or a
smaller code (isotropic 200k x 256 at 32 B: `PCA192,IVF1024,RaBitQ` recall@10 0.300 against
`PQ32x8np`'s 0.175); faiss's PCAMatrix file holds the d x d eigenvectors beside the D x d map.
Every family can be added in parts and merged in RAM (index_builder.parts); only "lists" families
(ArrayInvertedLists) can be merged on disk: faiss has no on-disk fast-scan blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ID_BYTES = 8  # an int64 id per vector in an inverted list
HNSW_FROM = 1 << 16  # an HNSW32 coarse quantizer from this many lists on (factory.choose_factory)
FS_BLOCK = 32  # vectors per fast-scan block (faiss's bbs)
HEADER_BYTES = 256  # an index file's headers, at most (fast-scan families: their estimate)
# the headers of each family's file in faiss 1.15 (the same at d = 40..512 and 8..1024 lists), so
# that memory() matches the file (tests/unit/test_candidates.py): an index given --max-memory of
# exactly the size it took is chosen again, not refused for a hundred bytes
HEADERS = {"Flat": 139, "SQ": 184, "PQ": 180, "OPQ": 251, "RaBitQ": 177, "RaBitQ1": 169, "PCARaBitQ": 285,
           "PCARaBitQ1": 277}  # fmt: skip
LIST_BYTES = 8  # per inverted list: its size in the file
PQ_NBITS = (8, 7, 6, 5, 4)  # 8 first: at one code size more sub-quantizers of fewer bits lose
RABITQ_BITS = range(1, 9)
SQ_TYPES = (("SQfp16", 16), ("SQbf16", 16), ("SQ8", 8), ("SQ6", 6), ("SQ4", 4))
FAMILIES = ("Flat", "SQ", "PQ", "PQfs", "OPQ", "RaBitQ", "RaBitQfs", "PCARaBitQ")
PCA_STEP = 8  # the output dims of a PCARaBitQ candidate are multiples of this


@dataclass(frozen=True)
class Candidate:
    """One index to consider: its factory string and what it costs (see the module docstring)."""

    factory: str
    family: str  # one of FAMILIES
    bytes_per_vector: float  # per vector in the lists, its id apart (what --max-bytes-per-vector bounds)
    fixed_bytes: int  # once per index: headers, coarse centroids (+ HNSW graph), codebooks, rotation
    lists: str  # "lists" (can live on disk), "fast-scan" (RAM only) or "flat" (no inverted lists)
    nlist: int = 0
    code_bits: int = 0  # PCARaBitQ: dims x bits a dim (what largest_per_family maximises for it)

    @property
    def on_disk(self) -> bool:
        """Whether faiss can keep its inverted lists on disk (merge_ondisk / OnDiskInvertedLists)."""
        return self.lists == "lists"

    @property
    def fast_scan(self) -> bool:
        return self.lists == "fast-scan"

    @property
    def code_bytes(self) -> float:  # the name choose.Candidate used
        return self.bytes_per_vector

    def memory(self, n: int) -> int:
        """Bytes of the whole index in RAM holding n vectors (what --max-memory bounds)."""
        ids = ID_BYTES if self.lists != "flat" else 0
        padding = self.nlist * FS_BLOCK // 2 * self.bytes_per_vector if self.fast_scan else 0
        return int(math.ceil(n * (self.bytes_per_vector + ids) + padding)) + self.fixed_bytes

    def as_dict(self, n: int) -> dict:
        return {"factory": self.factory, "family": self.family, "bytes_per_vector": self.bytes_per_vector,
                "memory_bytes": self.memory(n), "on_disk": self.on_disk}  # fmt: skip


def sq_bytes(d: int, bits: int) -> int:
    return math.ceil(bits * d / 8)


def pq_bytes(m: int, nbits: int) -> int:
    return math.ceil(m * nbits / 8)


def pqfs_bytes(m: int) -> int:
    """Fast-scan PQ{m}x4: m rounded up to even 4-bit codes, packed."""
    return math.ceil(m / 2)


def rabitq_bytes(d: int, bits: int) -> int:
    """RaBitQ{bits} (and RaBitQfs{bits}): sign bits, extra bits and per-vector factors."""
    if bits == 1:
        return math.ceil(d / 8) + 8
    return math.ceil(d / 8) + math.ceil((bits - 1) * d / 8) + 12 + 8


def pca_bytes(d: int, dims: int) -> int:
    """faiss's PCAMatrix from d to `dims`: eigenvectors (d x d), the map (dims x d), its bias,
    the mean and the eigenvalues, float32."""
    return 4 * (d * d + dims * d + dims + 2 * d)


def coarse_bytes(nlist: int, d: int) -> int:
    """Coarse centroids (float32), their list sizes, and an HNSW32 graph over them from HNSW_FROM lists."""
    graph = nlist * 32 * 2 * 4 if nlist >= HNSW_FROM else 0  # ~2 x 32 int32 links per node
    return nlist * (d * 4 + LIST_BYTES) + graph


def coarse_name(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_FROM else f"IVF{nlist}"


def opq_dims(d: int, m: int) -> int:
    """D of OPQ{m}_{D}: the largest multiple of m up to d (d itself when m divides it)."""
    return m * (d // m)


def opq_dims_options(d: int, m: int) -> list[int]:
    """The output dimensions D of OPQ{m}_{D} in the space, largest first: opq_dims(d, m), then every
    smaller multiple of m with >= 2 dims per sub-quantizer. Within --max-bytes-per-vector alone the
    largest is kept; a smaller D makes the rotation, codebooks and coarse centroids smaller, so that
    within --max-memory more sub-quantizers fit (autofaiss's OPQ48_336 at 12.8 MB: docs/index-building.md)."""
    return [m * k for k in range(d // m, 1, -1)]


def _pq_members(d: int) -> list[tuple[str, float, int]]:
    """(codec, bytes, codebook bytes) of plain PQ: every m dividing d with >= 2 dims each, 8 bits,
    and 4..7 bits only where they reach a code size no 8-bit PQ reaches."""
    ms = [m for m in range(1, d // 2 + 1) if d % m == 0]
    out = {pq_bytes(m, 8): (f"PQ{m}x8np", 256 * d * 4) for m in ms}
    for nbits in PQ_NBITS[1:]:
        for m in ms:
            out.setdefault(pq_bytes(m, nbits), (f"PQ{m}x{nbits}np", (1 << nbits) * d * 4))
    return [(codec, size, books) for size, (codec, books) in out.items()]


def space(n: int, d: int, nlist: int) -> list[Candidate]:
    """Every candidate for n vectors of dim d over `nlist` coarse lists, largest codes first."""
    coarse, base = coarse_name(nlist), coarse_bytes(nlist, d)

    def ivf(codec: str, family: str, size: float, extra: int, lists: str = "lists") -> Candidate:
        header = HEADERS.get("RaBitQ1" if codec == "RaBitQ" else family, HEADER_BYTES)
        return Candidate(f"{coarse},{codec}", family, size, header + base + extra, lists, nlist)

    out = [ivf("Flat", "Flat", 4 * d, 0)]
    out += [ivf(name, "SQ", sq_bytes(d, bits), 0 if bits == 16 else 2 * d * 4) for name, bits in SQ_TYPES]
    out += [ivf(codec, "PQ", size, books) for codec, size, books in _pq_members(d)]
    out += [ivf(f"PQ{m}x4fs", "PQfs", pqfs_bytes(m), 16 * d * 4 + 512, "fast-scan")
            for m in range(2, d // 2 + 1, 2) if d % m == 0]  # fmt: skip
    for m in range(8, d // 2 + 1, 8):  # OPQ: multiples of 8 up to d/2 sub-quantizers
        for dims in opq_dims_options(d, m):
            fixed = HEADERS["OPQ"] + coarse_bytes(nlist, dims) + dims * d * 4 + 256 * dims * 4  # rotation, codebooks
            rotation = f"OPQ{m}" if dims == d else f"OPQ{m}_{dims}"
            out.append(Candidate(f"{rotation},{coarse},PQ{m}x8np", "OPQ", m, fixed, "lists", nlist))
    for b in RABITQ_BITS:
        suffix = "" if b == 1 else str(b)
        out.append(ivf(f"RaBitQ{suffix}", "RaBitQ", rabitq_bytes(d, b), 0))
        out.append(ivf(f"RaBitQfs{suffix}", "RaBitQfs", rabitq_bytes(d, b), 512, "fast-scan"))
    for b in RABITQ_BITS:  # at one code size, more dims of fewer bits first
        header = HEADERS["PCARaBitQ1" if b == 1 else "PCARaBitQ"]
        for dims in range((d - 1) // PCA_STEP * PCA_STEP, 2 * PCA_STEP - 1, -PCA_STEP):
            codec = f"RaBitQ{'' if b == 1 else b}"
            fixed = header + coarse_bytes(nlist, dims) + pca_bytes(d, dims)
            size = rabitq_bytes(dims, b)
            out.append(Candidate(f"PCA{dims},{coarse},{codec}", "PCARaBitQ", size, fixed, "lists", nlist, dims * b))
    return sorted(out, key=lambda c: -c.bytes_per_vector)


def fits(c: Candidate, n: int, max_bytes_per_vector: float | None, max_memory: int | None, on_disk: bool) -> bool:
    """Whether `c` fits both limits (either may be None) and, with `on_disk`, can live on disk."""
    return (
        (max_bytes_per_vector is None or c.bytes_per_vector <= max_bytes_per_vector)
        and (max_memory is None or c.memory(n) <= max_memory)
        and (not on_disk or c.on_disk)
    )


def merit(c: Candidate) -> float:
    """What largest_per_family maximises: the bytes per vector; for PCARaBitQ the code's bits
    (dims x bits a dim), where 20 B of per-vector factors make a multi-bit code over few dims the
    largest but not the best (at d=128 and 24 B `PCA16,RaBitQ2` screened 0.19, `RaBitQ` over 128
    dims 0.59)."""
    return c.code_bits if c.family == "PCARaBitQ" else c.bytes_per_vector


def largest_per_family(
    cands: list[Candidate],
    n: int,
    max_bytes_per_vector: float | None = None,
    max_memory: int | None = None,
    on_disk: bool = False,
) -> list[Candidate]:
    """Of each family, the member with the largest code that fits (`merit`; the first in `space`
    order at that size: SQfp16 before SQbf16, 8-bit PQ before fewer bits), largest codes first."""
    best: dict[str, Candidate] = {}
    for c in cands:
        if fits(c, n, max_bytes_per_vector, max_memory, on_disk):
            have = best.get(c.family)
            if have is None or merit(c) > merit(have):
                best[c.family] = c
    return sorted(best.values(), key=lambda c: -c.bytes_per_vector)


def smallest(cands: list[Candidate], n: int) -> Candidate:
    """The candidate taking the least memory for n vectors (what a refused budget is told)."""
    return min(cands, key=lambda c: (c.memory(n), c.bytes_per_vector))
