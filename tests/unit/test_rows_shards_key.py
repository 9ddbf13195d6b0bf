"""Row classification, shard commits and the run key: real Parquet files, no runner, no model."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoders.errors import InputError
from index_builder.embeddings import list_shards, shard_name
from pipelines.embed.outcomes import Embedded, Rejected
from pipelines.embed.output import RUN_FILE, prepare_output, run_key
from pipelines.embed.rows import (
    PreviousRow,
    RowPlan,
    RowResult,
    TodayRow,
    caption_hash,
    classify,
    content_hash,
    decide,
)
from pipelines.embed.settings import TENSOR_REVISION, EmbedSettings, Runtime
from pipelines.embed.shards import commit_unit, committed_runtime, previous_rows, sum_counts
from pipelines.inputs import Columns, Row, WorkUnit, plan_inputs

CPU = Runtime("cpu", "pil", "fp32", "per_process")
DIM = 4


def row(i, id="x", status="success", image=b"jpg", path=None):
    return Row(i, id, f"caption {i}", image, status, path)


def test_classify_skips_rejects_reuses_and_keeps_the_rest_in_order():
    rows = [
        row(0),
        row(1, status="failed_to_download", image=None),
        row(2, id=None),
        row(3, id="dup"),
        row(4, image=None, path="photos/4.jpg"),
        row(5, image=None),
        row(6),
        row(7),
        row(8),
    ]
    plans = {3: RowPlan(3, "duplicate", (1, 17)), 7: RowPlan(7, "unchanged", (0, 40)), 8: RowPlan(8, "changed")}
    c = classify(rows, plans, unit_paths=["a.parquet", "b.parquet"])
    assert [(r.row_index, kind) for r, kind in c.todo] == [(0, "new"), (5, "new"), (6, "new"), (8, "changed")]
    assert [(r.row_index, ref) for r, ref in c.reuse] == [(7, (0, 40))]
    assert c.skipped == 1  # a null image goes on to the model, which rejects it as missing_image
    got = {r.row_index: (r.outcome.reason, r.outcome.message) for r in c.decided}
    assert got[2] == ("null_id", "id is null")
    assert got[3][0] == "duplicate_id" and "b.parquet row 17" in got[3][1]
    assert got[4][0] == "image_path_only" and "photos/4.jpg" in got[4][1]
    assert len(c.todo) + len(c.reuse) + len(c.decided) + c.skipped == len(rows)


def today(unit, r, content=b"img", caption=b"cap"):
    return TodayRow(unit, r, content, caption)


def prev(shard, r, content=b"img", caption=b"cap"):
    return PreviousRow(shard, r, content, caption)


def plans_of(today_rows, earlier_rows, reject=True, comparable=True):
    return list(decide(today_rows, earlier_rows, reject_duplicates=reject, comparable=comparable))


def test_decide_the_fate_of_one_id():
    assert plans_of([today(0, 5)], []) == []  # new: no plan needed
    assert plans_of([today(0, 5)], [prev(2, 9)]) == [(0, RowPlan(5, "unchanged", (2, 9)))]
    assert plans_of([today(0, 5, content=b"other")], [prev(2, 9)]) == [(0, RowPlan(5, "changed"))]
    assert plans_of([today(0, 5, caption=b"new words")], [prev(2, 9)]) == [(0, RowPlan(5, "changed"))]
    assert plans_of([today(0, 5)], [prev(2, 9)], comparable=False) == [(0, RowPlan(5, "changed"))]  # other model
    assert plans_of([today(0, 5, content=None)], [prev(2, 9, content=None)]) == [(0, RowPlan(5, "changed"))]
    assert plans_of([], [prev(2, 9)]) == [("deleted", 1)]
    assert plans_of([], []) == []


def test_decide_keeps_the_first_copy_by_input_order_and_compares_it():
    got = plans_of([today(3, 40), today(0, 9, content=b"other"), today(3, 2)], [prev(1, 1)])
    assert got == [
        (3, RowPlan(2, "duplicate", (0, 9))),
        (3, RowPlan(40, "duplicate", (0, 9))),
        (0, RowPlan(9, "changed")),
    ]
    allowed = plans_of([today(3, 40), today(0, 9, content=b"other")], [prev(1, 1)], reject=False)
    assert allowed == [(0, RowPlan(9, "changed")), (3, RowPlan(40, "unchanged", (1, 1)))]


def test_hashes_tell_bytes_and_captions_apart():
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")
    assert len(content_hash(b"abc")) == 16 and content_hash(None) is None
    assert caption_hash(None) != caption_hash("") and caption_hash("a") == caption_hash("a") != caption_hash("a ")


def embedded(i, has_text=True, kind="new"):
    v = np.zeros(DIM, np.float32)
    v[i % DIM] = 1
    outcome = Embedded(v, v if has_text else np.zeros(DIM, np.float32), v, has_text)
    return RowResult(i, f"id{i}", f"c{i}", outcome, content_hash(f"image {i}".encode()), kind)


def rejected(i, reason="corrupt_image"):
    return RowResult(i, f"id{i}", None, Rejected(reason, "because"))


UNIT = WorkUnit(0, "in/a.parquet", 0, 0, 6, Columns())


def test_commit_writes_rejects_then_the_shard_with_counts_and_runtime(tmp_path):
    out = str(tmp_path)
    name = shard_name(0, 2)
    results = [embedded(2, kind="unchanged"), rejected(1), embedded(0, has_text=False), rejected(4, "not_an_image")]
    counts = commit_unit(out, name, UNIT, results, dim=DIM, read=6, skipped=2, runtime=CPU)
    assert counts == {
        "read": 6,
        "embedded": 2,
        "rejected": 2,
        "skipped": 2,
        "empty_caption": 1,
        "new": 1,
        "changed": 0,
        "unchanged": 1,
        "metadata_changed": 0,
        "rejects_by_reason": {"corrupt_image": 1, "not_an_image": 1},
        "bad_file": None,
    }
    shard = pq.read_table(tmp_path / "embeddings" / name)
    assert shard.column("id").to_pylist() == ["id0", "id2"]  # input order, whatever order results came in
    assert shard.column("content_hash").to_pylist() == [content_hash(b"image 0"), content_hash(b"image 2")]
    copied = previous_rows(str(tmp_path / "embeddings" / name), [1, 0])
    assert [c for _, c in copied] == [content_hash(b"image 2"), content_hash(b"image 0")]
    assert copied[1][0].fused.tobytes() == results[2].outcome.fused.tobytes() and not copied[1][0].has_text
    rejects = pq.read_table(tmp_path / "rejects" / name).to_pylist()
    assert [(r["id"], r["row_index"], r["reason"], r["source_file"]) for r in rejects] == [
        ("id1", 1, "corrupt_image", "in/a.parquet"),
        ("id4", 4, "not_an_image", "in/a.parquet"),
    ]
    assert committed_runtime(str(tmp_path / "embeddings" / name)) == CPU

    # the same unit recomputed another way with no rejects: the stale rejects file goes
    commit_unit(out, name, UNIT, [embedded(0)], dim=DIM, read=1, skipped=0, runtime=replace(CPU, preprocess="tensor"))
    assert not os.path.exists(tmp_path / "rejects" / name)
    assert committed_runtime(str(tmp_path / "embeddings" / name)).preprocess == "tensor"

    # a tensor shard recorded without a pixel revision (written before revisions) is not today's
    # tensor path's; one differing only in its thread share is
    made = committed_runtime(str(tmp_path / "embeddings" / name))
    today = replace(CPU, preprocess="tensor", tensor_revision=TENSOR_REVISION, threads={"threads": 2})
    assert made.tensor_revision is None and made != today and made.pixels() == "tensor r1"
    commit_unit(
        out, name, UNIT, [embedded(0)], dim=DIM, read=1, skipped=0, runtime=replace(today, threads={"threads": 1})
    )
    assert (
        committed_runtime(str(tmp_path / "embeddings" / name)) == today
        and today.pixels() == f"tensor r{TENSOR_REVISION}"
    )


def test_a_unit_with_nothing_embedded_commits_an_empty_shard_of_the_right_dim(tmp_path):
    commit_unit(str(tmp_path), shard_name(0, 1), UNIT, [rejected(0)], dim=DIM, read=3, skipped=2, runtime=CPU)
    shard = pq.read_table(tmp_path / "embeddings" / shard_name(0, 1))
    assert shard.num_rows == 0 and shard.schema.field("fused_embedding").type == pa.list_(pa.float32(), DIM)


def test_counts_that_do_not_add_up_are_a_bug_not_a_commit(tmp_path):
    with pytest.raises(RuntimeError, match="rows do not add up"):
        commit_unit(str(tmp_path), shard_name(0, 1), UNIT, [embedded(0)], dim=DIM, read=3, skipped=0, runtime=CPU)
    assert not os.path.exists(tmp_path / "embeddings")


def test_sum_counts_adds_up_the_shards(tmp_path):
    out = str(tmp_path)
    commit_unit(out, shard_name(0, 2), UNIT, [embedded(0), rejected(1)], dim=DIM, read=3, skipped=1, runtime=CPU)
    commit_unit(
        out,
        shard_name(1, 2),
        replace(UNIT, index=1),
        [embedded(5, has_text=False)],
        dim=DIM,
        read=1,
        skipped=0,
        runtime=CPU,
    )
    counts, bad_files, runtimes = sum_counts(out)
    assert counts == {
        "read": 4,
        "embedded": 2,
        "rejected": 1,
        "skipped": 1,
        "empty_caption": 1,
        "new": 2,
        "changed": 0,
        "unchanged": 0,
        "metadata_changed": 0,
        "rejects_by_reason": {"corrupt_image": 1},
    }
    assert bad_files == [] and runtimes == [CPU.as_dict()]
    assert [s.num_rows for s in list_shards(out)] == [1, 1]


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "caption": ["x", "y"], "jpg": [b"1", b"2"]}), path)
    return path, plan_inputs([str(path)], Columns())


def key(plan, **change):
    return run_key(
        EmbedSettings(inputs=("in",), output="out", model="m", **change), plan, "sha256:w", {"kind": "weighted"}
    )


def test_run_key_follows_the_input_files_and_survives_json(plan):
    path, p = plan
    k = key(p)
    assert json.loads(json.dumps(k)) == k and k == key(p)
    assert key(p, batch_size=8) != k and key(p, decode_ahead="on") == k
    assert run_key(EmbedSettings(inputs=("in",), output="out", model="m"), p, "sha256:other", {"kind": "weighted"}) != k
    pq.write_table(pa.table({"key": ["a", "b", "c"], "caption": ["x", "y", "z"], "jpg": [b"1", b"2", b"3"]}), path)
    assert key(plan_inputs([str(path)], Columns())) != k  # the file changed: nothing may be reused


def test_prepare_output_reuses_only_for_the_same_key(tmp_path, plan):
    out = str(tmp_path / "out")
    _, p = plan
    k = key(p)
    assert prepare_output(out, k, restart=False) is False  # a new directory
    (tmp_path / "out" / "embeddings" / "part-00000-of-00001.parquet").write_bytes(b"committed")
    (tmp_path / "out" / "manifest.json").write_text("{}")
    (tmp_path / "out" / "embeddings" / ".tmp-dead-writer").write_bytes(b"half")
    assert prepare_output(out, k, restart=False) is True
    assert sorted(os.listdir(tmp_path / "out" / "embeddings")) == ["part-00000-of-00001.parquet"]
    assert not os.path.exists(tmp_path / "out" / "manifest.json")  # nobody takes the directory as complete
    assert prepare_output(out, key(p, batch_size=8), restart=False) is False
    assert os.listdir(tmp_path / "out" / "embeddings") == []
    assert json.loads((tmp_path / "out" / RUN_FILE).read_text())["settings"]["batch_size"] == 8
    assert prepare_output(out, key(p, batch_size=8), restart=True) is False
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a fusionindex run"):
        prepare_output(out, k, restart=False)
