"""The benchmark harness runs and reports (figures only: no speed is asserted here)."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.bench import main, make_jpeg_shards


def test_index_and_pq_sections_report_their_figures(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = "--sections index,pq --index-n 4000 --index-dim 32 --pq-n 3000".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    r = json.loads(out.read_text())
    assert r["index"]["factory"].endswith("np") and r["index"]["plain_faiss_wall_s"] > 0
    assert 0 <= r["index"]["recall_at_10"] <= 1
    assert set(r["pq"]["train_s"]) == {"polysemous", "np"} and r["machine"]["cpus"] >= 1
    assert "build-index" in capsys.readouterr().out


def test_budget_and_ondisk_sections_report_their_figures(tmp_path):
    out = tmp_path / "r.json"
    argv = "--sections budget,ondisk --budget-n 3000 --ondisk-n 6400 --ondisk-factory IVF16,SQ8 --index-dim 32".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    r = json.loads(out.read_text())
    assert {"16MB", "256B"} <= set(r["budget"]) and r["budget"]["256B"]["tried"]
    assert r["ondisk"]["merge"] == "disk" and r["ondisk"]["peak_rss_mib"] > 0 and r["ondisk"]["index_mib"] > 0
    assert 0 < r["ondisk"]["peak_anon_mib"] <= r["ondisk"]["peak_rss_mib"] and r["budget"]["16MB"]["cpu_s"] > 0
    assert r["ondisk"]["ru_maxrss_mib"] >= r["ondisk"]["peak_rss_mib"]  # wait4's figure also counts the bench's pages
    assert "autofaiss_16MB" in r["budget"]  # its figures, or why it was skipped (no venv with autofaiss)


def test_plan_section_reports_local_and_s3_figures(tmp_path):
    out = tmp_path / "r.json"
    argv = "--sections plan --plan-files 12 --repeat 1".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    p = json.loads(out.read_text())["plan"]
    assert p["files"] == 12 and set(p["local"]) == {"1", "8", "32"}
    for where in ("local", "s3_moto"):
        assert all(x["files"] == 12 and x["units"] == 24 and x["seconds"] > 0 for x in p[where].values()), p[where]


def test_generated_benchmark_shards_are_real_jpegs(tmp_path):
    paths = make_jpeg_shards(tmp_path, 10, size=64, rows_per_group=4)
    t = pq.read_table(paths[0])
    assert t.num_rows == 10 and pq.ParquetFile(paths[0]).metadata.num_row_groups == 3
    assert Image.open(io.BytesIO(t.column("jpg")[0].as_py())).format == "JPEG"


@pytest.mark.slow
def test_embed_and_rss_sections(tmp_path):
    out = tmp_path / "r.json"
    argv = "--sections embed,rss --repeat 2 --rows 16 --rss-rows 8 --batch-size 8".split()
    assert main([*argv, "--output", str(out), "--workdir", str(tmp_path / "w")]) == 0
    r = json.loads(out.read_text())
    assert r["embed"]["bare_loop"]["rows"] == 16 and r["embed"]["embed"]["peak_rss_mib"] > 0
    assert len(r["embed"]["paired_ratios"]) == 2
    assert set(r["rss"]["peak_rss_mib"]) == {"8", "80"}


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
