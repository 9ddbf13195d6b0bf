"""The benchmark harness runs and reports what it measured: the figures it derives (fastest runs, ratios,
extrapolations) follow from its runs, and its comparisons compare like with like. No speed is asserted."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.bench import main, make_jpeg_shards


def test_index_and_pq_sections_compare_like_with_like(tmp_path, capsys):
    import faiss

    out, work = tmp_path / "r.json", tmp_path / "w"
    argv = "--sections index,pq --index-n 4000 --index-dim 32 --pq-n 3000".split()
    assert main([*argv, "--output", str(out), "--workdir", str(work)]) == 0
    r = json.loads(out.read_text())
    ix = r["index"]
    # the two builds it times hold the same vectors in the same kind of index
    ours, plain = (faiss.read_index(str(p)) for p in (work / "idx" / "index.faiss", work / "plain.faiss"))
    assert ours.ntotal == plain.ntotal == 4000 and ix["factory"].endswith("np")
    ours, plain = faiss.downcast_index(ours), faiss.downcast_index(plain)
    assert type(ours) is type(plain) and (ours.nlist, ours.pq.M) == (plain.nlist, plain.pq.M)
    # the fastest run of each is what it compares
    assert ix["build_index_wall_s"] == min(ix["all_build_index_s"]) and len(ix["all_build_index_s"]) == 3
    assert ix["plain_faiss_wall_s"] == min(ix["all_plain_faiss_s"])
    ratio = ix["build_index_without_recall_s"] / ix["plain_faiss_wall_s"]
    assert ix["ratio_without_recall"] == pytest.approx(ratio, rel=0.05)
    # what the pq section is there to show: polysemous training costs more than the np codes we build
    assert r["pq"]["train_s"]["polysemous"] > r["pq"]["train_s"]["np"], r["pq"]
    assert "build-index" in capsys.readouterr().out


def test_budget_and_ondisk_sections_report_what_the_builds_did(tmp_path):
    out, work = tmp_path / "r.json", tmp_path / "w"
    argv = "--sections budget,ondisk --budget-n 3000 --ondisk-n 6400 --ondisk-factory IVF16,SQ8 --index-dim 32".split()
    assert main([*argv, "--output", str(out), "--workdir", str(work)]) == 0
    r = json.loads(out.read_text())
    b, target = r["budget"], r["budget"]["target_recall"]
    assert b["16MB"]["index_mb"] <= 16 and b["256B"]["bytes_per_vector"] <= 256  # the budgets held
    for name in ("16MB", "256B"):
        kept = b[name]
        assert kept["reached"] == (kept["recall_at"]["10"] >= target), kept
        tried = [t["factory"] for t in kept["tried"]]
        reaching = [t["factory"] for t in kept["tried"] if t["reached"]]
        assert kept["factory"] in tried and (not reaching or kept["factory"] == reaching[0]), kept
        assert abs(kept["claim_minus_independent"]["10"]) <= 0.05, kept  # evaluate-index agrees with the claim
    d = r["ondisk"]
    assert d["merge"] == "disk" and (work / "ondisk-idx" / "index.ivfdata").stat().st_size > 0
    assert d["reached"] == (d["recall_at"]["10"] >= 0.9), d
    assert 0 < d["peak_anon_mib"] <= d["peak_rss_mib"] and b["16MB"]["cpu_s"] > 0
    assert d["ru_maxrss_mib"] >= d["peak_rss_mib"]  # wait4's figure also counts the bench's pages
    assert "autofaiss_16MB" in b  # its figures, or why it was skipped (no venv with autofaiss)


@pytest.mark.s3
def test_plan_section_reports_local_and_s3_figures(tmp_path):
    out = tmp_path / "r.json"
    argv = "--sections plan --plan-files 12 --repeat 1".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    p = json.loads(out.read_text())["plan"]
    assert p["files"] == 12 and set(p["local"]) == {"1", "8", "32"}
    for where in ("local", "s3_moto"):
        assert all(x["files"] == 12 and x["units"] == 24 for x in p[where].values()), p[where]
        for x in p[where].values():  # the extrapolations are the measured seconds scaled, nothing else
            assert x["s_per_1000_files"] == pytest.approx(x["seconds"] / 12 * 1000, rel=0.01, abs=0.001)
            assert x["extrapolated_100k_files_s"] == pytest.approx(x["s_per_1000_files"] * 100, abs=0.1)


def test_generated_benchmark_shards_are_real_jpegs(tmp_path):
    paths = make_jpeg_shards(tmp_path, 10, size=64, rows_per_group=4)
    t = pq.read_table(paths[0])
    assert t.num_rows == 10 and pq.ParquetFile(paths[0]).metadata.num_row_groups == 3
    assert Image.open(io.BytesIO(t.column("jpg")[0].as_py())).format == "JPEG"


@pytest.mark.beam
@pytest.mark.slow
def test_embed_and_rss_sections_keep_the_fastest_runs_and_their_ratios(tmp_path):
    out = tmp_path / "r.json"
    argv = "--sections embed,rss --repeat 2 --rows 16 --rss-rows 8 --batch-size 8".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    r = json.loads(out.read_text())
    e, bare, emb = r["embed"], r["embed"]["bare_loop"], r["embed"]["embed"]
    assert bare["rows"] == 16 and bare["rows_per_s"] == max(e["all_bare_rows_per_s"])
    assert emb["rows_per_s_beyond_startup"] == max(e["all_embed_rows_per_s_beyond_startup"])
    assert e["ratio_beyond_startup"] == pytest.approx(emb["rows_per_s_beyond_startup"] / bare["rows_per_s"], rel=0.01)
    pairs = zip(e["all_embed_rows_per_s_beyond_startup"], e["all_bare_rows_per_s"])
    assert e["paired_ratios"] == pytest.approx([a / b for a, b in pairs], rel=0.01)
    peaks = r["rss"]["peak_rss_mib"]
    assert set(peaks) == {"8", "80"}
    assert r["rss"]["ratio_10n_over_n"] == pytest.approx(peaks["80"] / peaks["8"], rel=0.01)


@pytest.mark.beam
@pytest.mark.slow
def test_stages_section_keeps_the_run_with_least_host_work(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = "--sections stages --repeat 2 --stages-rows 48 --stages-batch 16 --image-size 64".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    st = json.loads(out.read_text())["stages"]
    for path in ("tensor", "pil", "tensor-ahead"):
        r = st[path]
        assert len(r["host_us_per_row_runs"]) == 2 and r["host_us_per_row"] == min(r["host_us_per_row_runs"])
        assert r["rows_read"] == 48 and r["units_s"] in r["units_s_runs"]
    assert st["tensor-ahead"]["decode_ahead_s"]["decode"] > 0 and "runs [" in capsys.readouterr().out


@pytest.mark.beam
@pytest.mark.slow
def test_reindex_section(tmp_path):
    out = tmp_path / "r.json"
    argv = "--sections reindex --reindex-rows 200 --batch-size 8".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    r = json.loads(out.read_text())["reindex"]
    assert r["expected"] == {"changed": 2, "deleted": 1, "new": 2, "unchanged": 197}
    for shapes in ("exact_shapes", "default_shapes"):
        assert r[shapes]["counts_as_expected"] and r[shapes]["index_ids_exact"], r[shapes]
    assert r["exact_shapes"]["unchanged_rows_differing_from_full_rebuild"] == 0


@pytest.mark.parametrize("name", ["isotropic-256", "anisotropic-512"])
def test_fresh_points_of_a_frontier_set_come_from_its_distribution(name):
    import faiss
    import numpy as np

    from benchmarks.frontier import SETS

    make = SETS[name]
    x = make(4000)
    assert np.array_equal(make(4000, fresh=None), x) and not np.array_equal(make(500, fresh=7), x[:500])

    def nearest(q):  # inner product of each query's nearest stored vector other than itself
        found = faiss.knn(q, x, 2, faiss.METRIC_INNER_PRODUCT)[0]
        return np.where(found[:, 0] > 0.9999, found[:, 1], found[:, 0]).mean()

    own, fresh, other = nearest(x[:500]), nearest(make(500, fresh=7)), nearest(make(500, seed=5))
    assert abs(fresh - own) < 0.02 < own - other  # the same centres; another seed's are far
