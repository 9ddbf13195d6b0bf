"""Choosing the index for a budget and tuning it for recall, end to end on clustered vectors:
the choice, the nprobe, the not-reached path, and an independent re-measurement (evaluate-index)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from encoders.errors import SettingsError
from index_builder.build import build_index
from index_builder.choose import OPQ_MIN_GAIN
from index_builder.opq import opq_gain
from index_builder.remeasure import evaluate_index
from index_builder.settings import BuildSettings
from pipelines.cli import main
from tests.test_index import clustered, write_embeddings


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = str(tmp_path_factory.mktemp("choice"))
    write_embeddings(root, [clustered(n, 32, rng, centres=40) for n in (3000, 3000)])
    return root


def test_a_budget_that_allows_sq8_gets_it_with_the_smallest_nprobe_reaching_the_target(emb, tmp_path):
    out = str(tmp_path / "idx")
    m = build_index(BuildSettings(emb, out, max_bytes_per_vector=32, target_recall=0.9)).to_dict()
    assert m["factory"] == "IVF128,SQ8" and m["bytes_per_vector"] == 32  # d bytes: the largest code within 32
    r = m["recall"]
    assert r["reached"] and r["recall_at_k"] >= 0.9 and m["choice"]["tried"][0]["factory"] == "IVF128,SQ8"
    below = [p["recall_at_k"] for p in r["by_nprobe"] if p["nprobe"] < m["nprobe"]]
    assert below and max(below) < 0.9  # one probe fewer misses the target
    assert m["memory_bytes"] <= 6000 * (32 + 8) + 128 * 32 * 4 + 4096  # about the estimate: codes, ids, centroids
    again = evaluate_index(out, queries=1000, seed=99)  # other queries, drawn anew from all the data
    assert again["nprobe"] == m["nprobe"] and again["queries"] == 1000
    for k, diff in again["difference"].items():
        assert abs(diff) <= 0.02, (k, again["recall_at"], m["recall"]["recall_at"])


def test_a_budget_too_small_for_the_target_keeps_the_screens_winner_and_says_so(emb, tmp_path, caplog):
    m = build_index(BuildSettings(emb, str(tmp_path / "idx"), max_bytes_per_vector=2, target_recall=0.99)).to_dict()
    screened = m["choice"]["screened"]
    assert {r["factory"] for r in screened} == {"IVF128,PQ4x4fs", "IVF128,PQ2x8np"}  # each family's 2-byte code
    assert all(r["bytes_per_vector"] == 2 and 0 < r["recall_at_k"] < 0.99 for r in screened)
    assert all(6000 * (2 + 8) < r["memory_bytes"] < 6000 * (2 + 8) + 300_000 for r in screened)  # + centroids, books
    (tried,) = m["choice"]["tried"]  # only the winner is built on everything
    assert tried["factory"] == m["factory"] == screened[0]["factory"] and not tried["reached"]
    assert "screened on a subsample" in m["choice"]["reason"] and "misses 0.99" in m["choice"]["reason"]
    assert "not reached" in caplog.text
    best = max(p["recall_at_k"] for p in m["recall"]["by_nprobe"])
    assert m["recall"]["recall_at_k"] >= best - 0.005  # probes beyond the plateau buy nothing


def test_merge_on_disk_refuses_what_faiss_cannot_keep_there_before_any_training(emb, tmp_path, caplog):
    out = tmp_path / "idx"
    caplog.set_level(logging.INFO)
    with pytest.raises(SettingsError, match="fast-scan blocks"):
        build_index(BuildSettings(emb, str(out), factory="IVF16,PQ8x4fs", merge="disk"))
    assert not out.exists() and "building" not in caplog.text and "sampl" not in caplog.text
    m = build_index(BuildSettings(emb, str(out), max_bytes_per_vector=16, merge="disk", target_recall=0.5)).to_dict()
    assert m["merge"] == "disk" and all(r["on_disk"] for r in m["choice"]["screened"] if "error" not in r)
    assert {r["family"] for r in m["choice"]["screened"]} == {"SQ", "PQ", "OPQ", "RaBitQ", "PCARaBitQ"}  # no fast-scan


def test_budgets_that_cannot_work_are_refused_with_the_figure_that_would(emb, tmp_path):
    with pytest.raises(SettingsError, match="needs 1 B per vector and [0-9,]+ bytes in all"):
        build_index(BuildSettings(emb, str(tmp_path / "i"), max_memory="10kB"))
    with pytest.raises(SettingsError, match="give either"):
        BuildSettings(emb, str(tmp_path / "i"), factory="IVF8,Flat", max_memory="1GB")
    with pytest.raises(SettingsError, match="--max-memory '4 parsecs'"):
        BuildSettings(emb, str(tmp_path / "i"), max_memory="4 parsecs")


def test_evaluate_index_on_the_command_line(emb, tmp_path, capsys):
    out = str(tmp_path / "idx")
    assert main(["-q", "build-index", "--embeddings", emb, "--output", out, "--max-memory", "1MB"]) == 0
    built = capsys.readouterr().out
    assert "B/vector" in built and "held-out queries" in built
    report = str(tmp_path / "eval.json")
    assert main(["-q", "evaluate-index", "--index", out, "--queries", "300", "--json", report]) == 0
    printed = capsys.readouterr().out
    assert "recall@10" in printed and "manifest:" in printed and "latency" in printed
    r = json.load(open(report))
    assert r["queries"] == 300 and set(r["recall_at"]) == {"1", "10", "100"} and os.path.isdir(out)


def test_the_opq_screen_sees_a_rotation_worth_training_only_where_there_is_one():
    import faiss

    rng = np.random.default_rng(5)
    even = rng.standard_normal((8000, 32)).astype(np.float32)  # variance spread evenly: nothing to rotate
    steep = even * np.where(np.arange(32) < 8, 10.0, 0.1).astype(np.float32)  # all of it in 2 of 8 sub-spaces
    assert opq_gain(even, 8) < OPQ_MIN_GAIN <= 0.2 < opq_gain(steep, 8)
    # clustered: the raw covariance is dominated by the few centres, the IVF residuals are not
    x = clustered(8000, 32, rng, centres=6)
    km = faiss.Kmeans(32, 64, niter=10, seed=1, spherical=True)
    km.train(x)
    assert opq_gain(x, 8, km.centroids) < OPQ_MIN_GAIN < opq_gain(x, 8)


def test_opq_candidates_are_trained_only_when_the_screen_says_they_pay(tmp_path):
    rng = np.random.default_rng(8)
    flat, steep = str(tmp_path / "flat"), str(tmp_path / "steep")
    x = clustered(6000, 32, rng, centres=40)
    write_embeddings(flat, [x[:3000], x[3000:]])
    y = x * np.where(np.arange(32) < 8, 1.0, 0.02).astype(np.float32)
    write_embeddings(steep, [y[:3000], y[3000:]])
    opq = {}
    for name, root in (("flat", flat), ("steep", steep)):
        m = build_index(
            BuildSettings(root, str(tmp_path / f"idx-{name}"), max_bytes_per_vector=8, target_recall=1.0)
        ).to_dict()
        (opq[name],) = [r for r in m["choice"]["screened"] if r["family"] == "OPQ"]
        assert {r["factory"] for r in m["choice"]["screened"]} >= {"IVF128,PQ8x8np", "IVF128,PQ16x4fs"}
    assert opq["flat"]["factory"] == "OPQ8,IVF128,PQ8x8np" and opq["flat"]["opq_gain"] < OPQ_MIN_GAIN
    assert opq["flat"]["error"].startswith("not trained") and "recall_at_k" not in opq["flat"]
    assert opq["steep"]["recall_at_k"] > 0 and "error" not in opq["steep"]


def test_candidates_sharing_a_coarse_quantizer_train_it_once_to_the_same_index():
    import faiss

    from index_builder.training import coarse_of, train_template

    xt = clustered(4000, 32, np.random.default_rng(9), centres=30)
    assert coarse_of("IVF64,PQ8x8np") == coarse_of("IVF64,SQ8") == "IVF64" and coarse_of("OPQ8,IVF64,PQ8x8np") is None
    sq8 = train_template("IVF64,SQ8", xt)
    centroids = faiss.extract_index_ivf(sq8).quantizer.reconstruct_n(0, 64)
    alone, shared = train_template("IVF64,PQ8x8np", xt), train_template("IVF64,PQ8x8np", xt, centroids)
    assert np.array_equal(faiss.extract_index_ivf(alone).quantizer.reconstruct_n(0, 64), centroids)
    assert np.array_equal(alone.sa_encode(xt[:500]), shared.sa_encode(xt[:500]))  # same lists, same codes


def test_a_build_reusing_the_template_shows_the_frontier_of_the_build_that_chose_it(emb, tmp_path):
    first = build_index(BuildSettings(emb, str(tmp_path / "one"), max_bytes_per_vector=4, target_recall=0.5)).to_dict()
    again = build_index(
        BuildSettings(emb, str(tmp_path / "two"), template=str(tmp_path / "one"), retrain="never")
    ).to_dict()
    assert again["training"]["mode"] == "reused" and again["factory"] == first["factory"]
    assert again["choice"]["screened"] == first["choice"]["screened"] and len(first["choice"]["screened"]) >= 2


def test_the_screen_tries_the_two_best_families_over_twice_the_lists_and_builds_on_what_it_keeps(tmp_path):
    import faiss

    from index_builder.factory import nlist_of
    from index_builder.more_lists import WIDER_REACH

    root = str(tmp_path / "emb")  # 40,000 vectors: the guideline's 512 lists, 39 points each for 1024
    write_embeddings(root, [clustered(20_000, 16, np.random.default_rng(s), centres=2000) for s in (1, 2)])
    m = build_index(BuildSettings(root, str(tmp_path / "idx"), max_bytes_per_vector=4, target_recall=0.99)).to_dict()
    screened = [r for r in m["choice"]["screened"] if "error" not in r]
    wide = [r for r in screened if nlist_of(r["factory"]) == 1024]
    guideline = sorted((r for r in screened if nlist_of(r["factory"]) == 512), key=lambda r: -r["recall_at_k"])
    near = [r for r in guideline[:2] if r["recall_at_k"] >= guideline[0]["recall_at_k"] - WIDER_REACH]
    assert wide and {r["family"] for r in wide} == {r["family"] for r in near}  # the best families, over 1024
    assert all(r["bytes_per_vector"] <= 4 for r in screened)
    assert m["factory"] == screened[0]["factory"] == m["choice"]["tried"][0]["factory"]  # the best screened is built
    index = faiss.read_index(os.path.join(str(tmp_path / "idx"), "index.faiss"))
    assert faiss.extract_index_ivf(index).nlist == nlist_of(m["factory"])
    # drawn for 1024 lists; what 512 lists train on when they are kept (choose_train_size)
    assert m["train_size"] == (20_000 if nlist_of(m["factory"]) == 512 else 36_000)


def test_under_a_memory_budget_the_screen_tries_the_winners_code_over_the_lists_that_fit(tmp_path):
    import faiss

    from index_builder.candidates import space
    from index_builder.factory import nlist_of
    from index_builder.more_lists import filled_candidate

    n, d = 40_000, 16  # the guideline's 512 lists; twice as many where the memory allows
    root = str(tmp_path / "emb")
    write_embeddings(root, [clustered(20_000, d, np.random.default_rng(s), centres=2000) for s in (1, 2)])
    pq8 = next(c for c in space(n, d, 512) if c.factory == "IVF512,PQ8x8np")
    memory = pq8.memory(n) + 256 * (4 * d + 8)  # 256 more lists of its code, not 512
    cfg = BuildSettings(root, str(tmp_path / "idx"), max_memory=str(memory), target_recall=0.99)
    m = build_index(cfg).to_dict()
    screened = [r for r in m["choice"]["screened"] if "error" not in r]
    top = max((r for r in screened if nlist_of(r["factory"]) == 512), key=lambda r: r["recall_at_k"])
    winner = next(c for c in space(n, d, 512) if c.factory == top["factory"])
    filled = filled_candidate(cfg, n, d, winner, 1024)
    assert filled is not None and 640 <= filled.nlist < 1024  # the guideline winner's code, more lists
    assert filled.factory in {r["factory"] for r in screened}
    assert all(r["memory_bytes"] <= memory for r in m["choice"]["screened"])
    index = faiss.read_index(os.path.join(str(tmp_path / "idx"), "index.faiss"))
    assert faiss.extract_index_ivf(index).nlist == nlist_of(m["factory"])
    assert os.path.getsize(os.path.join(str(tmp_path / "idx"), "index.faiss")) <= memory


def test_isotropic_vectors_at_a_small_budget_get_rabitq_over_their_principal_axes(tmp_path):
    import faiss

    from index_builder.candidates import space

    n, d = 12_000, 256  # clusters of isotropic noise: 1-bit RaBitQ over 192 dims beats PQ32 at 32 B
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((256, d))
    x = centres[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    root = str(tmp_path / "emb")
    write_embeddings(root, [x[:6000], x[6000:]])
    out = str(tmp_path / "idx")
    m = build_index(BuildSettings(root, out, max_bytes_per_vector=32, target_recall=0.99)).to_dict()
    screened = {r["family"]: r for r in m["choice"]["screened"] if "error" not in r}
    assert screened["PCARaBitQ"]["factory"] == "PCA192,IVF256,RaBitQ"  # 192 / 8 + 8 = 32 B
    assert screened["PCARaBitQ"]["recall_at_k"] > screened["PQ"]["recall_at_k"] + 0.03
    assert m["factory"] == "PCA192,IVF256,RaBitQ" and m["bytes_per_vector"] == 32
    index = faiss.read_index(os.path.join(out, "index.faiss"))
    assert index.ntotal == n and faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0)).d_out == 192
    (cand,) = [c for c in space(n, d, 256) if c.factory == m["factory"]]
    assert os.path.getsize(os.path.join(out, "index.faiss")) == cand.memory(n) == m["memory_bytes"]
    again = evaluate_index(out, queries=1000, seed=99)
    assert abs(again["difference"]["10"]) <= 0.02
