"""Choosing an index for a budget: sizes, candidates, their order, and the nprobe choice (pure)."""

from __future__ import annotations

import faiss
import pytest

from encoders.errors import SettingsError
from index_builder.choose import (
    OPQ_MIN_GAIN,
    between,
    candidates,
    merge_mode,
    opq_m,
    parse_size,
    smallest_nprobe,
    to_try,
    within_budget,
    worth_opq,
)


def test_sizes_parse_in_si_and_binary_units_and_refuse_the_rest():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5G") == 1_500_000_000 and parse_size("16000000") == 16_000_000 and parse_size("2kb") == 2000
    for bad in ("", "lots", "4 parsecs", "-1GB"):
        with pytest.raises(SettingsError, match="--max-memory"):
            parse_size(bad)


def test_every_candidate_is_a_faiss_index_whose_code_size_is_the_estimate():
    n, d = 200_000, 256
    cands = candidates(n, d)
    assert [c.factory for c in cands[:3]] == ["IVF1024,Flat", "IVF1024,SQfp16", "IVF1024,SQ8"]
    assert all(a.code_bytes >= b.code_bytes for a, b in zip(cands, cands[1:]))  # most accurate first
    for c in cands:
        index = faiss.index_factory(d, c.factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        size = ivf.pq.M * ivf.pq.nbits / 8 if c.fast_scan else ivf.code_size
        assert size == c.code_bytes, c
        assert c.fast_scan == ("fs" in c.factory) and c.memory(n) > n * c.code_bytes
    assert candidates(999, 64)[0].factory == "Flat" and candidates(999, 64)[0].memory(999) == 999 * 64 * 4


def test_the_budget_picks_what_fits_in_order():
    n, d = 200_000, 256
    cands = candidates(n, d)
    # 16 MB for 200k vectors: 64-byte codes (with ids and 1 MiB of centroids), fast-scan first
    fit = within_budget(cands, n, max_memory=parse_size("16MB"))
    assert [c.factory for c in fit[:3]] == ["IVF1024,PQ128x4fs", "IVF1024,PQ64x8np", "OPQ64,IVF1024,PQ64x8np"]
    assert all(c.memory(n) <= 16 * 10**6 for c in fit)
    assert [c.factory for c in to_try(fit)] == [c.factory for c in fit[:3]] and to_try([]) == []
    assert within_budget(cands, n, max_bytes_per_vector=256)[0].factory == "IVF1024,SQ8"
    assert within_budget(cands, n, max_bytes_per_vector=64, on_disk=True)[0].factory == "IVF1024,PQ64x8np"
    assert within_budget(cands, n, max_memory=1000) == []
    big = within_budget(candidates(2_000_000, d), 2_000_000, max_bytes_per_vector=600)
    assert big[0].factory == "IVF32768,SQfp16"  # nlist <= n/39: 2M vectors give 32768 lists


def test_nprobe_is_the_smallest_reaching_the_target_or_where_recall_stops_growing():
    curve = [(1, 0.5), (2, 0.7), (4, 0.91), (8, 0.95), (16, 0.95)]
    assert smallest_nprobe(curve, 0.9) == (4, True)
    assert smallest_nprobe(curve, 0.99) == (8, False)
    assert smallest_nprobe(list(reversed(curve)), 0.6) == (2, True)
    assert between(2, 4) == 3 and between(3, 4) is None and between(16, 32) == 24


def test_the_merge_goes_to_disk_when_ram_would_not_hold_the_index_and_faiss_can():
    assert merge_mode("auto", 10, 100, "lists") == "ram" and merge_mode("auto", 60, 100, "lists") == "disk"
    assert merge_mode("auto", 60, 100, "fast-scan") == "ram" and merge_mode("ram", 60, 100, "lists") == "ram"
    assert merge_mode("disk", 1, 100, "lists") == "disk"
    for lists, why in (("fast-scan", "fast-scan blocks"), ("flat", "no inverted lists")):
        with pytest.raises(SettingsError, match=why):
            merge_mode("disk", 1, 100, lists)


def test_opq_is_trained_only_for_a_gain_worth_it_and_its_m_is_read_from_the_factory():
    assert not worth_opq(0.0) and not worth_opq(OPQ_MIN_GAIN / 2) and worth_opq(OPQ_MIN_GAIN) and worth_opq(0.3)
    assert opq_m("OPQ64,IVF1024,PQ64x8np") == 64 and opq_m("OPQ16_64,IVF8,PQ16np") == 16
    assert opq_m("IVF1024,PQ64x8np") is None and opq_m("PCA64,IVF8,Flat") is None
