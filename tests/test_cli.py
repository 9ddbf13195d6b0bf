"""The CLI end to end: make-sample -> embed -> build-index -> search, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("cli")
    cat, emb = str(root / "catalogue"), str(root / "emb")
    assert main(["make-sample", "--output", cat, "--rows", "1100", "--shards", "3"]) == 0
    flags = "--batch-size 32 --alpha 0.6 --beta 0.4".split()
    beam_options = "--runner FnApiRunner --direct_num_workers 1".split()  # options Beam knows pass through
    assert (
        main(["embed", "--input", f"{cat}/*.parquet", "--output", emb, "--model", tiny_clip, *flags, *beam_options])
        == 0
    )
    idx = {}
    idx["fused"] = str(root / "idx-fused")
    assert main(["build-index", "--embeddings", emb, "--output", idx["fused"]]) == 0
    # Exact index over image vectors: the image-query test checks the query path, not PQ error
    # (a random tiny model's vectors are nearly identical, so PQ would blur them).
    idx["image"] = str(root / "idx-image")
    assert (
        main(["build-index", "--embeddings", emb, "--output", idx["image"], "--vector", "image", "--factory", "Flat"])
        == 0
    )
    return root, cat, emb, idx


@pytest.mark.beam
def test_end_to_end_text_search_json(built, capsys):
    root, cat, emb, idx = built
    manifest = json.load(open(os.path.join(emb, "manifest.json")))
    assert manifest["counts"]["embedded"] == 1100 - 6 and manifest["fusion"]["alpha"] == 0.6
    assert manifest["runner"] == "FnApiRunner" and manifest["settings"]["batch_size"] == 32
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


@pytest.mark.beam
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
    assert (
        main(["search", "--index", idx["fused"], "--image", str(image_path), "--text", row["caption"], "--k", "2"]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.beam
def test_clear_errors(built, tmp_path, tiny_clip, capsys):
    root, cat, emb, idx = built
    assert (
        main(
            [
                "embed",
                "--input",
                str(tmp_path / "none-*.parquet"),
                "--output",
                str(tmp_path / "o"),
                "--model",
                tiny_clip,
            ]
        )
        == 2
    )
    assert "no file matches" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                "--input",
                f"{cat}/*.parquet",
                "--output",
                str(tmp_path / "o"),
                "--model",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                "--input",
                f"{cat}/*.parquet",
                "--output",
                str(tmp_path / "o"),
                "--model",
                tiny_clip,
                "--id-column",
                "sku",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing column 'sku'" in err and "key, caption" in err
    assert main(["search", "--index", idx["fused"]]) == 2
    assert "--text" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


@pytest.mark.beam
def test_console_script_runs(built):
    """The installed script, as users run it; `search` loads torch and faiss, whose OpenMP runtimes
    (each prints its settings with OMP_DISPLAY_ENV) must spin only briefly while waiting (encoders/openmp.py)."""
    root, cat, emb, idx = built
    exe = os.path.join(os.path.dirname(sys.executable), "fusionindex")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [exe, "-q", "search", "--index", idx["fused"], "--text", "a blue square", "--k", "2"],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1", "OMP_DISPLAY_ENV": "VERBOSE"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1"
    spins = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
    assert len(spins) == 2 and set(spins) == {"10000"}, spins  # torch's libgomp and faiss's: a short spin


# Bad command lines -> the one line printed (exit 2, no traceback). The "Bad command
# lines" table in docs/bad-data.md is checked against this one. Placeholders are filled from the `built` fixture.
EMBED = ["embed", "--input", "{cat}", "--output", "{tmp}/out", "--model", "{model}"]
BAD_CLI = {
    "`embed ... --batchsize 8` (typo)": (
        [*EMBED, "--batchsize", "8"],
        "unknown option --batchsize: neither an embed option nor a Beam pipeline option; did you mean --batch-size?",
    ),
    "`embed ... stray` (an argument without option)": ([*EMBED, "stray"], "unexpected argument 'stray'"),
    "`embed ... --batch-size 0`": ([*EMBED, "--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    "`embed ... --batch-size many`": (
        [*EMBED, "--batch-size", "many"],
        "argument --batch-size: invalid int value: 'many'",
    ),
    "`embed ... --alpha -1`": ([*EMBED, "--alpha", "-1"], "fusion weights must be >= 0 and not both 0"),
    "`embed ... --device cuda` on a machine without CUDA": (
        [*EMBED, "--device", "cuda"],
        "--device cuda: torch sees no CUDA device on this machine",
    ),
    "`embed ... --fusion attention` with a model that has no learned fusion": (
        [*EMBED, "--fusion", "attention"],
        "--fusion attention: {model} has no learned attention fusion",
    ),
    "`embed ... --direct_num_workers two` (a Beam option, bad value)": (
        [*EMBED, "--direct_num_workers", "two"],
        "Beam option: argument --direct_num_workers: invalid int value: 'two'",
    ),
    "`embed ... --runner NoSuchRunner`": (
        [*EMBED, "--runner", "NoSuchRunner"],
        "--runner NoSuchRunner: Unexpected pipeline runner",
    ),
    "`embed ... --runner DaskRunner` (loses data silently)": (
        [*EMBED, "--runner", "DaskRunner"],
        "--runner DaskRunner is refused: Beam's DaskRunner loses data silently: only the last-applied branch of a "
        "pipeline runs, elements emitted in finish_bundle are dropped, and it reports no metrics",
    ),
    "`embed ... --dry_run=True` on a runner other than DataflowRunner": (
        [*EMBED, "--dry_run=True"],
        "--dry_run: only DataflowRunner builds a job without running it; FnApiRunner would run the pipeline",
    ),
    "`embed ... --spark-master local[2]` without --engine spark": (
        [*EMBED, "--spark-master", "local[2]"],
        "--spark-master applies to --engine spark only; add --engine spark or drop --spark-master",
    ),
    "`embed ... --engine spark --spark-conf spark.executor.memory` (no `=`)": (
        [*EMBED, "--engine", "spark", "--spark-conf", "spark.executor.memory"],
        "--spark-conf 'spark.executor.memory': expected KEY=VALUE",
    ),
    "`embed ... --engine spark --runner DirectRunner` (a Beam option)": (
        [*EMBED, "--engine", "spark", "--runner", "DirectRunner"],
        "Beam options (--runner DirectRunner) apply to --engine beam only",
    ),
    "`embed ... --engine spark --large-model`": (
        [*EMBED, "--engine", "spark", "--large-model"],
        "--large-model shares one model per machine through Beam's MultiProcessShared",
    ),
    "`embed --input 'none-*.parquet' ...`": (
        ["embed", "--input", "{tmp}/none-*.parquet", "--output", "{tmp}/o", "--model", "{model}"],
        "no file matches",
    ),
    "`embed ... --model DIR` that does not exist": (
        ["embed", "--input", "{cat}", "--output", "{tmp}/o", "--model", "{tmp}/missing"],
        "model directory '{tmp}/missing' does not exist",
    ),
    "`embed ... --id-column sku` (no such column)": (
        [*EMBED, "--id-column", "sku"],
        "missing column 'sku' (set --id-column)",
    ),
    "`build-index ... --workers 0`": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--workers", "0"],
        "--workers must be >= 1 (got 0)",
    ),
    "`build-index ... --factory 'IVF256,PQ16'` (polysemous)": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--factory", "IVF256,PQ16"],
        "write PQ16np",
    ),
    "`build-index ... --factory 'NotAnIndex'`": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--factory", "NotAnIndex"],
        "--factory 'NotAnIndex' is not a faiss index_factory string",
    ),
    "`build-index ... --factory 'IVF64,PQ8np,RFlat'` (refinement)": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--factory", "IVF64,PQ8np,RFlat"],
        "builds a IndexRefineFlat, which the shard-merging build cannot fill",
    ),
    "`build-index ... --max-memory 4parsecs`": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--max-memory", "4parsecs"],
        "--max-memory '4parsecs': write a size such as 4GB, 512MiB or 16000000",
    ),
    "`build-index ... --max-memory 1kB` (nothing fits)": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--max-memory", "1kB"],
        "--max-memory 1kB: the smallest here",
    ),
    "`build-index ... --factory F --max-memory 4GB`": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--factory", "Flat", "--max-memory", "4GB"],
        "--factory names the index, --max-bytes-per-vector/--max-memory let the builder choose one: give either",
    ),
    "`build-index ... --target-recall 1.5`": (
        ["build-index", "--embeddings", "{emb}", "--output", "{tmp}/i", "--target-recall", "1.5"],
        "--target-recall must be in (0, 1] (got 1.5)",
    ),
    "`evaluate-index --index DIR` that holds no index": (
        ["evaluate-index", "--index", "{tmp}"],
        "has no manifest.json: not a finished index",
    ),
    "`build-index --embeddings DIR` of an unfinished embed run": (
        ["build-index", "--embeddings", "{tmp}", "--output", "{tmp}/i"],
        "has no manifest.json: the embed run did not finish",
    ),
    "`reindex` without --root": (["reindex", "--input", "{cat}", "--model", "{model}"], "reindex needs --root"),
    "`reindex ... --max-reject-rate 2`": (
        ["reindex", "--input", "{cat}", "--root", "{tmp}/root", "--model", "{model}", "--max-reject-rate", "2"],
        "--max-reject-rate must be between 0 and 1 (got 2.0)",
    ),
    "`reindex ... --retrain sometimes`": (
        ["reindex", "--input", "{cat}", "--root", "{tmp}/root", "--model", "{model}", "--retrain", "sometimes"],
        "argument --retrain: invalid choice: 'sometimes'",
    ),
    "`reindex ... --canary-queries FILE` that does not exist": (
        [
            "reindex",
            "--input",
            "{cat}",
            "--root",
            "{tmp}/root",
            "--model",
            "{model}",
            "--canary-queries",
            "{tmp}/q.txt",
        ],
        "--canary-queries {tmp}/q.txt does not exist",
    ),
    "`reindex --config FILE` with a misspelt option": (
        ["reindex", "--config", "{badconfig}"],
        "unknown option 'bach-size'; did you mean batch-size?",
    ),
    "`search ... --k 0`": (["search", "--index", "{idx}", "--text", "red", "--k", "0"], "--k must be >= 1 (got 0)"),
    "`search ... --k -3`": (["search", "--index", "{idx}", "--text", "red", "--k", "-3"], "--k must be >= 1 (got -3)"),
    "`search ... --nprobe 0`": (
        ["search", "--index", "{idx}", "--text", "red", "--nprobe", "0"],
        "--nprobe must be >= 1 (got 0)",
    ),
    "`search ... --nprobe 4` on a Flat index": (
        ["search", "--index", "{flat}", "--text", "red", "--nprobe", "4"],
        "--nprobe applies to IVF indexes, not to this IndexFlat",
    ),
    '`search ... --text ""`': (["search", "--index", "{idx}", "--text", ""], "--text is empty"),
    "`search` without --text or --image": (["search", "--index", "{idx}"], "give --text, --image or both"),
    "`search ... --image FILE` that is not an image": (
        ["search", "--index", "{idx}", "--image", "{notimage}"],
        "--image {notimage}: not a usable image (not_an_image",
    ),
    "`search ... --image FILE` that does not exist": (
        ["search", "--index", "{idx}", "--image", "{tmp}/nope.jpg"],
        "--image {tmp}/nope.jpg: cannot read it",
    ),
    "`search --index DIR` that holds no index": (
        ["search", "--index", "{tmp}", "--text", "red"],
        "has no manifest.json: not a finished index",
    ),
    "`search ... --colour red` (unknown option)": (
        ["search", "--index", "{idx}", "--text", "red", "--colour", "red"],
        "unrecognized arguments: --colour red",
    ),
    "`finetune ... --batch-size 1`": (
        ["finetune", "--train", "{cat}", "--val", "{cat}", "--output", "{tmp}/m", "--batch-size", "1"],
        "--batch-size must be >= 2 (got 1)",
    ),
    "`finetune ... --output gs://bucket/m`": (
        ["finetune", "--train", "{cat}", "--val", "{cat}", "--output", "gs://bucket/m"],
        "--output of finetune must be a local directory",
    ),
    "`evaluate ... --split nosuch`": (
        ["evaluate", "--model", "{model}", "--data", "{split_cat}", "--split", "nosuch"],
        "no usable rows of split 'nosuch'",
    ),
    "`report ... --k 0`": (
        ["report", "--index", "{idx}", "--output", "{tmp}/r.html", "--queries", "red", "--k", "0"],
        "--k must be >= 1 (got 0)",
    ),
}
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture(scope="module")
def places(built, tiny_clip, tmp_path_factory):
    root, cat, emb, idx = built
    tmp = tmp_path_factory.mktemp("bad-cli")
    (tmp / "notimage.jpg").write_bytes(b"<html>403 Forbidden</html>")
    (tmp / "nightly.toml").write_text("bach-size = 4\n")
    split_cat = tmp / "split"
    split_cat.mkdir()
    pq.write_table(
        pa.table({"key": ["a"], "caption": ["c"], "split": ["train"], "jpg": [b"x"]}), split_cat / "s.parquet"
    )
    return {
        "cat": cat,
        "emb": emb,
        "idx": idx["fused"],
        "flat": idx["image"],
        "model": tiny_clip,
        "tmp": str(tmp),
        "notimage": str(tmp / "notimage.jpg"),
        "badconfig": str(tmp / "nightly.toml"),
        "split_cat": str(split_cat),
    }


@pytest.mark.beam
@pytest.mark.parametrize("case", list(BAD_CLI))
def test_bad_command_lines_get_one_line_and_exit_2(case, places, capsys):
    argv, message = BAD_CLI[case]
    capsys.readouterr()
    assert main([a.format(**places) for a in argv]) == 2, case
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message.format(**places) in lines[0], lines[0]
    assert lines[0].startswith("fusionindex")


def test_docs_bad_command_table_matches_the_tests():
    page = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "bad-data.md")
    section = open(page, encoding="utf-8").read().split("## Bad command lines", 1)[1].split("\n#", 1)[0]
    table = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)[2:])
    expected = {case: f"`{message}`" for case, (_, message) in BAD_CLI.items()}
    assert table == expected, "docs/bad-data.md 'Bad command lines' is out of date: " + str(
        {k: v for k, v in expected.items() if table.get(k) != v}
        or {k: v for k, v in table.items() if k not in expected}
    )


@pytest.mark.beam
def test_internal_errors_are_not_usage_errors(built, monkeypatch):
    """A bug (here: an ArrowInvalid from deep inside) is raised with its traceback, not turned into exit 2."""
    import pyarrow

    root, cat, emb, idx = built

    def broken(*args, **kwargs):
        raise pyarrow.ArrowInvalid("an internal bug")

    monkeypatch.setattr("index_builder.search.LoadedIndex.load", broken)
    with pytest.raises(pyarrow.ArrowInvalid):
        main(["search", "--index", idx["fused"], "--text", "red"])
