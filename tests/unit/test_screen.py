"""The screen: candidates ranked on a subsample, the known best first (real faiss, tiny data)."""

from __future__ import annotations

import faiss
import numpy as np

from index_builder.candidates import space
from index_builder.screen import ScreenData, coarse_centroids, rank, screen


def clustered(n: int, d: int, rng: np.random.Generator, centres: int = 30) -> np.ndarray:
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_screen_ranks_the_known_best_first_and_records_the_frontier():
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(3)
    xt, queries = clustered(12_000, 32, rng), clustered(200, 32, rng)
    by_factory = {c.factory: c for c in space(len(xt), 32, 64)}
    # exact-ish codes, 4 bits a dim, 1 bit a dim, 2 B a vector: the order is not in doubt
    picked = [by_factory[f] for f in ("IVF64,RaBitQ", "IVF64,PQ2x8np", "IVF64,SQfp16", "IVF64,SQ4")]
    data = ScreenData(xt, queries, coarse_centroids(xt, 64), k=10)
    assert len(data.train) == 6000 and len(data.base) == 6000 and data.gt.shape == (200, 10)
    records = screen(picked, data)
    assert [r["factory"] for r in records] == ["IVF64,SQfp16", "IVF64,SQ4", "IVF64,RaBitQ", "IVF64,PQ2x8np"]
    assert records[0]["recall_at_k"] > 0.95 > records[-1]["recall_at_k"]
    for r in records:
        curve = [p["recall_at_k"] for p in r["by_nprobe"]]
        assert [p["nprobe"] for p in r["by_nprobe"]] == [1, 2, 4, 8, 16, 32, 64] and max(curve) == r["recall_at_k"]


def test_equal_recalls_go_to_the_smaller_code_then_more_lists_then_the_faster_search():
    def rec(f, b, r, ms):
        return {"factory": f, "bytes_per_vector": b, "recall_at_k": r, "search_ms_per_query": ms}

    ranked = rank([rec("big", 64, 0.900, 1.0), rec("small", 40, 0.897, 1.0), rec("fast", 40, 0.896, 0.1),
                   rec("worse", 8, 0.7, 0.1)])  # fmt: skip
    assert [r["factory"] for r in ranked] == ["fast", "small", "big", "worse"] and rank([]) == []
    # the anisotropic frontier set in 9.7 MB: the same code over 1408 lists, its search timed slower
    ranked = rank([rec("OPQ48_144,IVF1024,PQ48x8np", 48, 0.8536, 0.20),
                   rec("OPQ48_144,IVF1408,PQ48x8np", 48, 0.855, 0.25),
                   rec("OPQ48_96,IVF2048,PQ48x8np", 48, 0.8238, 0.1)])  # fmt: skip
    assert [r["factory"] for r in ranked][:2] == ["OPQ48_144,IVF1408,PQ48x8np", "OPQ48_144,IVF1024,PQ48x8np"]
    ranked = rank([rec("IVF1024,PQ8x8np", 8, 0.80, 0.2), rec("IVF2048,PQ4x8np", 4, 0.80, 0.3)])
    assert ranked[0]["factory"] == "IVF2048,PQ4x8np"  # the smaller code first, as before


def test_a_fast_scan_rabitq_is_not_screened_beside_its_plain_twin_but_alone_it_is():
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(4)
    xt, queries = clustered(8_000, 32, rng), clustered(100, 32, rng)
    by_factory = {c.factory: c for c in space(len(xt), 32, 64)}
    data = ScreenData(xt, queries, coarse_centroids(xt, 64), k=10)
    both = screen([by_factory["IVF64,RaBitQ2"], by_factory["IVF64,RaBitQfs2"]], data)
    assert [r["factory"] for r in both] == ["IVF64,RaBitQ2", "IVF64,RaBitQfs2"]
    assert "recall_at_k" in both[0] and both[1]["error"].startswith("not screened: the same codes as IVF64,RaBitQ2")
    (alone,) = screen([by_factory["IVF64,RaBitQfs2"]], data)
    assert alone["recall_at_k"] > 0 and "error" not in alone
