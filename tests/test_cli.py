"""The CLI end to end: make-sample -> embed -> build-index -> search, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipelines.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("cli")
    cat, emb = str(root / "catalogue"), str(root / "emb")
    assert main(["make-sample", "--output", cat, "--rows", "1100", "--shards", "3"]) == 0
    assert main(["embed", "--input", f"{cat}/*.parquet", "--output", emb, "--model", tiny_clip, "--batch-size", "32", "--alpha", "0.6", "--beta", "0.4"]) == 0
    idx = {}
    idx["fused"] = str(root / "idx-fused")
    assert main(["build-index", "--embeddings", emb, "--output", idx["fused"]]) == 0
    # Exact index over image vectors: the image-query test checks the query path, not PQ error
    # (a random tiny model's vectors are nearly identical, so PQ would blur them).
    idx["image"] = str(root / "idx-image")
    assert main(["build-index", "--embeddings", emb, "--output", idx["image"], "--vector", "image", "--factory", "Flat"]) == 0
    return root, cat, emb, idx


def test_end_to_end_text_search_json(built, capsys):
    root, cat, emb, idx = built
    manifest = json.load(open(os.path.join(emb, "manifest.json")))
    assert manifest["counts"]["embedded"] == 1100 - 6 and manifest["fusion"]["alpha"] == 0.6
    index_manifest = json.load(open(os.path.join(idx["fused"], "manifest.json")))
    assert index_manifest["factory"].startswith("IVF") and index_manifest["ntotal"] == 1094
    capsys.readouterr()
    assert main(["search", "--index", idx["fused"], "--text", "a red circle", "--k", "7", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in lines] == list(range(1, 8))
    assert all(set(h) == {"rank", "id", "score", "caption"} for h in lines)
    assert all(a["score"] >= b["score"] for a, b in zip(lines, lines[1:]))
    known = {}
    for f in os.listdir(cat):
        t = pq.read_table(os.path.join(cat, f), columns=["key", "caption"])
        known.update(zip(t.column("key").to_pylist(), t.column("caption").to_pylist()))
    assert all(known[h["id"]] == h["caption"] for h in lines)


def test_image_query_finds_the_same_image_first(built, capsys, tmp_path):
    root, cat, emb, idx = built
    t = pq.read_table(os.path.join(cat, "00001.parquet"))
    row = t.slice(5, 1).to_pylist()[0]
    image_path = tmp_path / "query.png"
    image_path.write_bytes(row["png"])
    capsys.readouterr()
    assert main(["search", "--index", idx["image"], "--image", str(image_path), "--k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["score"] > 0.99
    assert row["key"] in [h["id"] for h in hits if h["score"] >= hits[0]["score"] - 1e-4]
    # text + image together: fused query, still ranked
    assert main(["search", "--index", idx["fused"], "--image", str(image_path), "--text", row["caption"], "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_clear_errors(built, tmp_path, tiny_clip, capsys):
    root, cat, emb, idx = built
    assert main(["embed", "--input", str(tmp_path / "none-*.parquet"), "--output", str(tmp_path / "o"), "--model", tiny_clip]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["embed", "--input", f"{cat}/*.parquet", "--output", str(tmp_path / "o"), "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["embed", "--input", f"{cat}/*.parquet", "--output", str(tmp_path / "o"), "--model", tiny_clip, "--id-column", "sku"]) == 2
    err = capsys.readouterr().err
    assert "missing column 'sku'" in err and "key, caption" in err
    assert main(["search", "--index", idx["fused"]]) == 2
    assert "--text" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


def test_console_script_runs(built):
    root, cat, emb, idx = built
    exe = os.path.join(os.path.dirname(sys.executable), "fusionindex")
    out = subprocess.run([exe, "-q", "search", "--index", idx["fused"], "--text", "a blue square", "--k", "2"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1"
