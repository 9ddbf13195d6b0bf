"""Choosing an index for a budget: sizes, candidates, their order, and the nprobe choice (pure)."""

from __future__ import annotations

import pytest

from encoders.errors import SettingsError
from index_builder.choose import (
    OPQ_MIN_GAIN,
    WIDER_MIN_GAIN,
    between,
    merge_mode,
    opq_m,
    parse_size,
    smallest_nprobe,
    worth_opq,
    worth_wider,
)
from index_builder.factory import choose_nlist, wider_nlist


def test_sizes_parse_in_si_and_binary_units_and_refuse_the_rest():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5G") == 1_500_000_000 and parse_size("16000000") == 16_000_000 and parse_size("2kb") == 2000
    for bad in ("", "lots", "4 parsecs", "-1GB"):
        with pytest.raises(SettingsError, match="--max-memory"):
            parse_size(bad)


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


def test_a_budget_screens_twice_the_guidelines_lists_where_each_still_gets_39_points():
    assert choose_nlist(150_000) == 1024 and wider_nlist(150_000, 1024) == 2048
    assert choose_nlist(40_000) == 512 and wider_nlist(40_000, 512) == 1024  # 39,936 points for 1024 lists
    assert wider_nlist(39_000, 512) is None  # too few points for 1024 lists
    assert wider_nlist(10**9, 32768) is None  # 65536 lists take an HNSW quantizer: not screened


def test_twice_the_lists_are_screened_only_where_they_remove_enough_residual_energy():
    assert worth_wider(0.4535, 0.3929)  # the anisotropic frontier set: 13.4% less
    assert not worth_wider(0.2143, 0.2199)  # the isotropic one: more, on held-out rows
    assert not worth_wider(1.0, 1.0 - WIDER_MIN_GAIN / 2) and worth_wider(1.0, 1.0 - WIDER_MIN_GAIN)
    assert not worth_wider(0.0, 0.0)  # no residual: nothing to gain
