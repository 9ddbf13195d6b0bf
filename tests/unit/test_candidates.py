"""The candidate space: every family's bytes per vector is faiss's own, the index file grows by
it (plus the id) per vector added, the memory estimate matches the file, and the per-family
pick keeps what fits (real faiss, tiny indexes)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_builder.candidates import (
    ID_BYTES,
    Candidate,
    largest_per_family,
    opq_dims,
    opq_dims_options,
    rabitq_bytes,
    smallest,
    space,
)

NLIST = 8


def lists_bytes_per_vector(index: faiss.Index) -> float:
    """faiss's own figure: the lists' code_size, or for fast-scan block bytes per vector."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.BlockInvertedLists):
        return lists.block_size / lists.n_per_block
    return float(lists.code_size)


def trained(d: int, c: Candidate, x: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(d, c.factory, faiss.METRIC_INNER_PRODUCT)
    for i in range(index.chain.size()) if isinstance(index, faiss.IndexPreTransform) else ():
        opq = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(opq, faiss.OPQMatrix):
            opq.niter = 4  # a rough rotation: only its size is checked here
    index.train(x)
    return index


@pytest.fixture(scope="module")
def data():
    faiss.omp_set_num_threads(1)  # tiny indexes: threads only wait for each other on a shared machine
    rng = np.random.default_rng(0)
    return {d: rng.standard_normal((1200, d)).astype(np.float32) for d in (36, 40)}


@pytest.mark.parametrize("d", [36, 40])
def test_every_candidate_costs_what_faiss_stores(d, data):
    x = data[d]
    cands = space(len(x), d, NLIST)
    assert {c.family for c in cands} == {"Flat", "SQ", "PQ", "PQfs", "OPQ", "RaBitQ", "RaBitQfs", "PCARaBitQ"}
    assert [c.bytes_per_vector for c in cands] == sorted((c.bytes_per_vector for c in cands), reverse=True)
    for c in cands:
        if d == 36 and c.family not in ("SQ", "PQfs", "RaBitQ", "RaBitQfs", "PCARaBitQ"):
            continue  # d = 36: the families whose sizes round (d not a multiple of 8)
        index = trained(d, c, x[:1000])
        assert lists_bytes_per_vector(index) == c.bytes_per_vector, c.factory
        empty = len(faiss.serialize_index(index))
        index.add(x[:256])  # whole fast-scan blocks in each list at both sizes: growth without padding
        at_256 = len(faiss.serialize_index(index))
        index.add(x[256:1024])
        grown = (len(faiss.serialize_index(index)) - at_256) / 768
        pad = NLIST * 32 * c.bytes_per_vector / 768 if c.fast_scan else 0  # lists fill blocks unevenly
        assert c.bytes_per_vector + ID_BYTES <= grown <= c.bytes_per_vector + ID_BYTES + pad + 1e-9, c.factory
        assert abs(c.fixed_bytes - empty) <= 0.05 * empty + 600, (c.factory, c.fixed_bytes, empty)
        size = len(faiss.serialize_index(index))
        assert abs(c.memory(1024) - size) <= 0.05 * size + 600, (c.factory, c.memory(1024), size)
        if c.lists == "lists":  # to the byte: the file of its --max-memory still fits
            assert c.memory(1024) == size, (c.factory, c.memory(1024), size)
        assert c.on_disk == isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists),
                                       faiss.ArrayInvertedLists)  # fmt: skip


def test_the_families_reach_sizes_between_the_powers_of_two_as_the_issue_lists():
    by_factory = {c.factory: c for c in space(200_000, 256, 1024)}
    assert by_factory["IVF1024,RaBitQ"].bytes_per_vector == 40 and by_factory["IVF1024,RaBitQ4"].bytes_per_vector == 148
    assert rabitq_bytes(512, 1) == 72 and by_factory["IVF1024,PQ128x8np"].bytes_per_vector == 128
    assert by_factory["IVF1024,PQ128x6np"].bytes_per_vector == 96 and by_factory["IVF1024,SQ6"].bytes_per_vector == 192
    assert by_factory["OPQ96_192,IVF1024,PQ96x8np"].bytes_per_vector == 96
    assert "IVF1024,PQ64x4np" not in by_factory  # 32 B is PQ32x8's: fewer bits only where 8 bits cannot reach


def test_each_family_keeps_its_largest_code_within_the_budget():
    n, d = 200_000, 256
    cands = space(n, d, 1024)
    picked = {c.family: c.factory for c in largest_per_family(cands, n, max_bytes_per_vector=150)}
    assert picked == {"SQ": "IVF1024,SQ4", "PQ": "IVF1024,PQ128x8np", "PQfs": "IVF1024,PQ128x4fs",
                      "OPQ": "OPQ128,IVF1024,PQ128x8np", "RaBitQ": "IVF1024,RaBitQ4",
                      "RaBitQfs": "IVF1024,RaBitQfs4", "PCARaBitQ": "PCA208,IVF1024,RaBitQ5"}  # fmt: skip
    assert largest_per_family(cands, n, max_bytes_per_vector=2048)[0].factory == "IVF1024,Flat"
    on_disk = largest_per_family(cands, n, max_bytes_per_vector=150, on_disk=True)
    assert {c.family for c in on_disk} == {"SQ", "PQ", "OPQ", "RaBitQ", "PCARaBitQ"}
    memory = 16 * 10**6
    assert all(c.memory(n) <= memory for c in largest_per_family(cands, n, max_memory=memory))
    assert largest_per_family(cands, n, max_memory=1000) == []
    least = smallest(cands, n)
    assert least.bytes_per_vector == 1 and least.memory(n) == min(c.memory(n) for c in cands)


def test_within_a_memory_budget_opq_trades_dimensions_for_sub_quantizers():
    n, d = 150_000, 512
    assert opq_dims_options(d, 48) == [480, 432, 384, 336, 288, 240, 192, 144, 96]
    cands = space(n, d, 2048)
    by_bytes = {c.family: c for c in largest_per_family(cands, n, max_bytes_per_vector=48)}
    assert by_bytes["OPQ"].factory == "OPQ48_480,IVF2048,PQ48x8np"  # no memory bound: every dimension kept
    memory = 12_759_088  # what autofaiss's OPQ48_336,IVF2048_HNSW32,PQ48x8 took on such vectors
    (opq,) = [c for c in largest_per_family(cands, n, max_memory=memory) if c.family == "OPQ"]
    assert opq.memory(n) <= memory and opq.bytes_per_vector >= 48  # 48 sub-quantizers at least, in fewer dims

    def at_largest_dims(c):
        m = int(c.bytes_per_vector)
        return c.factory.startswith((f"OPQ{m},", f"OPQ{m}_{opq_dims(d, m)},"))

    largest_dims = {c.bytes_per_vector: c for c in cands if c.family == "OPQ" and at_largest_dims(c)}
    assert largest_dims[opq.bytes_per_vector].memory(n) > memory  # at its largest D it would not fit
    assert max(m for m, c in largest_dims.items() if c.memory(n) <= memory) < opq.bytes_per_vector


def test_the_two_best_families_are_screened_over_twice_the_lists_even_where_the_winners_does_not_fit():
    from index_builder.more_lists import WIDER_REACH, wider_candidates
    from index_builder.settings import BuildSettings

    n, d = 150_000, 512
    cfg = BuildSettings("e", "i", max_memory="14478459")  # autofaiss's budget for 64 B on such vectors
    ranked = [{"family": "RaBitQ", "recall_at_k": 0.885}, {"family": "OPQ", "recall_at_k": 0.883},
              {"family": "OPQ", "error": "not trained"}, {"family": "PQ", "recall_at_k": 0.795}]  # fmt: skip
    (wide,) = wider_candidates(cfg, n, d, ranked, 1024)  # RaBitQ's 72 B codes and 2048 lists do not fit
    assert wide.factory == "OPQ72_216,IVF2048,PQ72x8np" and wide.memory(n) <= 14_478_459
    three = wider_candidates(cfg, n, d, [{"family": "PQ", "recall_at_k": 0.886}, *ranked], 1024)
    assert [c.family for c in three] == ["PQ"]  # PQ and RaBitQ ranked first: OPQ is third
    far = [ranked[0], {"family": "OPQ", "recall_at_k": 0.885 - WIDER_REACH - 0.001}]
    assert [c.family for c in wider_candidates(cfg, n, d, far, 1024)] == []  # too far behind RaBitQ
    cfg = BuildSettings("e", "i", max_bytes_per_vector=72)  # no memory bound: both have a member
    assert [c.factory for c in wider_candidates(cfg, n, d, ranked, 1024)] == [
        "IVF2048,RaBitQ",
        "OPQ72_504,IVF2048,PQ72x8np",
    ]
    assert wider_candidates(cfg, n, d, ranked, 65536) == []  # no wider nlist past the HNSW quantizer's


def test_under_a_memory_budget_the_winners_code_is_tried_over_as_many_lists_as_fit():
    from index_builder.more_lists import FILL_STEP, at_nlist, filled_candidate
    from index_builder.settings import BuildSettings

    n, d = 150_000, 512
    (opq,) = [c for c in space(n, d, 1024) if c.factory == "OPQ48_144,IVF1024,PQ48x8np"]
    cfg = BuildSettings("e", "i", max_memory="9678459")  # autofaiss's budget for 32 B on such vectors
    filled = filled_candidate(cfg, n, d, opq, 2048)
    assert filled.factory == "OPQ48_144,IVF1408,PQ48x8np" and filled.memory(n) <= 9_678_459
    assert at_nlist(opq, n, d, 1408 + FILL_STEP).memory(n) > 9_678_459  # the most lists that fit
    assert filled.memory(n) - opq.memory(n) == 384 * (144 * 4 + 8)  # 384 more centroids and list sizes
    (rabitq,) = [c for c in space(n, d, 1024) if c.factory == "IVF1024,RaBitQ"]
    cfg = BuildSettings("e", "i", max_memory="14478459")
    assert filled_candidate(cfg, n, d, rabitq, 2048) is None  # 181 more lists fit: under FILL_MIN x 1024
    assert filled_candidate(BuildSettings("e", "i", max_memory="30MB"), n, d, opq, 2048) is None  # 2048 fit
    assert filled_candidate(BuildSettings("e", "i", max_bytes_per_vector=48), n, d, opq, 2048) is None


def test_rabitq_over_principal_axes_keeps_the_most_code_bits_not_the_most_bytes():
    n = 200_000
    pick = {c.family: c for c in largest_per_family(space(n, 128, 1024), n, max_bytes_per_vector=24)}
    assert pick["PCARaBitQ"].factory == "PCA120,IVF1024,RaBitQ"  # 120 bits in 23 B, not PCA16,RaBitQ2's 32 in 24
    pick = {c.family: c for c in largest_per_family(space(n, 256, 1024), n, max_bytes_per_vector=32)}
    assert pick["PCARaBitQ"].factory == "PCA192,IVF1024,RaBitQ" and pick["PCARaBitQ"].bytes_per_vector == 32
    assert "RaBitQ" not in pick  # 40 B at d=256: not within 32
