"""The nightly job's pure parts: gates, lock staleness, run naming and pruning, canary files, the plot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoders.errors import InputError
from index_builder.records import Counts, IndexManifest
from pipelines.reindex.canary import load_queries
from pipelines.reindex.gates import check_gates, failed
from pipelines.reindex.lock import LOCK, Busy, LockLost, RunLock, is_stale
from pipelines.reindex.report import frontier_html, recall_plot
from pipelines.reindex.root import Latest, new_run_id, prune, publish, run_ids, run_path

COUNTS = {"read": 100, "embedded": 90, "rejected": 4, "skipped": 6, "new": 10, "changed": 5, "unchanged": 75,
          "rejects_by_reason": {"corrupt_image": 4}}  # fmt: skip
INDEX = {"ntotal": 90, "vector": "fused", "nprobe": 8, "recall": {"recall_at_k": 0.9, "k": 10}}


def gates(counts=COUNTS, index=INDEX, canary=None, **limits):
    limits = {"max_reject_rate": 0.05, "min_recall": 0.8, "min_canary_overlap": 0.5, **limits}
    return {
        g.name: g
        for g in check_gates(Counts.from_dict(counts), IndexManifest.from_dict(index), canary=canary, **limits)
    }


def test_every_gate_passes_on_a_healthy_night():
    g = gates()
    assert [n for n, x in g.items() if x.passed is False] == []
    assert g["reject_rate"].value == round(4 / 94, 6) and g["canary_overlap"].passed is None


@pytest.mark.parametrize("change,gate", [
    (dict(counts={**COUNTS, "rejected": 40, "read": 136}), "reject_rate"),
    (dict(index={**INDEX, "ntotal": 89}), "index_holds_every_embedded_row"),
    (dict(index={**INDEX, "recall": {"recall_at_k": 0.5, "k": 10}}), "recall"),
    (dict(counts={**COUNTS, "unchanged": 74}), "count_invariant"),
    (dict(canary={"mean_overlap": 0.2, "k": 10, "queries": 5}), "canary_overlap"),
])  # fmt: skip
def test_each_gate_fails_on_its_own(change, gate):
    assert [g.name for g in failed(list(gates(**change).values()))] == [gate]


def test_text_index_expects_rows_with_a_caption_only():
    g = gates(index={**INDEX, "ntotal": 80, "skipped_null_vectors": 10, "vector": "text"})
    assert g["index_holds_every_embedded_row"].passed and g["index_holds_every_embedded_row"].limit == "== 80"
    assert gates(canary={"skipped": "first night"})["canary_overlap"].passed is None


def test_a_lock_is_stale_when_its_heartbeat_is_old_or_its_process_is_gone():
    here = socket.gethostname()
    assert not is_stale({"host": here, "pid": os.getpid(), "heartbeat": 1000.0}, 1000.0 + 10, stale_after=60)
    assert is_stale({"host": here, "pid": os.getpid(), "heartbeat": 1000.0}, 1000.0 + 61, stale_after=60)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert is_stale({"host": here, "pid": gone.pid, "heartbeat": 1000.0}, 1000.0, stale_after=60)
    assert not is_stale({"host": "another-machine", "pid": gone.pid, "heartbeat": 1000.0}, 1000.0, stale_after=60)


def test_the_lock_excludes_a_second_run_judges_unreadable_locks_by_age_and_knows_when_it_is_lost(tmp_path):
    root, path = str(tmp_path), str(tmp_path / LOCK)
    with RunLock(root, "a") as a:
        with pytest.raises(Busy, match="another reindex \\(run a"):
            RunLock(root, "b").__enter__()
        a.ensure_held()
    assert not os.path.exists(path)  # released
    with open(path, "w") as fh:
        fh.write('{"run": "half-writ')  # not a record: judged by the file's age
    with pytest.raises(Busy, match="unreadable lock"):
        RunLock(root, "b", stale_after=60).__enter__()
    os.utime(path, (time.time() - 120, time.time() - 120))
    with RunLock(root, "b", stale_after=60, heartbeat_every=0.05) as b:
        b.ensure_held()
        with open(path, "w") as fh:  # another run took it over (b's heartbeat had stalled, say)
            fh.write('{"run": "c", "token": "theirs", "host": "elsewhere", "pid": 1, "heartbeat": 0}')
        deadline = time.time() + 5
        while b.lost is None and time.time() < deadline:
            time.sleep(0.05)
        assert b.lost and b.lost["run"] == "c"
        with pytest.raises(LockLost, match="took over .* nothing was published"):
            b.ensure_held()
    assert os.path.exists(path)  # the other run's lock is left alone


def test_runs_are_named_sortably_pruned_and_latest_is_followed(tmp_path):
    root = str(tmp_path)
    now = datetime(2026, 11, 27, 17, 5, 1, tzinfo=UTC)
    assert new_run_id(now, set()) == "20261127T170501Z"
    assert new_run_id(now, {"20261127T170501Z", "20261127T170501Z-2"}) == "20261127T170501Z-3"
    # the first id of the second was pruned: the next still sorts after the one kept
    assert new_run_id(now, {"20261127T170501Z-2"}) == "20261127T170501Z-3"
    ids = ["20261127T170501Z-10", "20261127T170501Z-2", "20261127T170501Z", "20261126T000000Z"]
    for run_id in ids:
        os.makedirs(run_path(str(tmp_path / "many"), run_id))
    assert run_ids(str(tmp_path / "many")) == [ids[3], ids[2], ids[1], ids[0]]
    for run_id in ("20261125T000000Z", "20261126T000000Z", "20261127T000000Z"):
        os.makedirs(os.path.join(run_path(root, run_id), "index"))
    assert Latest.index_of(root) == root and Latest.load_if_any(root) is None
    publish(root, Latest("runs/20261125T000000Z", model="old"))
    assert Latest.load(root).run_id == "20261125T000000Z" and Latest.load(root).model == "old"
    assert Latest.index_of(root) == os.path.join(root, "runs", "20261125T000000Z", "index")
    assert prune(root, keep=1, protect={"20261125T000000Z"}) == ["20261126T000000Z"]
    assert run_ids(root) == ["20261125T000000Z", "20261127T000000Z"]


def test_canary_files_text_or_parquet(tmp_path):
    (tmp_path / "q.txt").write_text("# canaries\nred shoes\n\n  blue bag  \n")
    assert load_queries(str(tmp_path / "q.txt")) == ["red shoes", "blue bag"]
    pq.write_table(pa.table({"query": ["a", None, "b"]}), tmp_path / "q.parquet")
    assert load_queries(str(tmp_path / "q.parquet")) == ["a", "b"]
    pq.write_table(pa.table({"words": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="no query, text, caption column"):
        load_queries(str(tmp_path / "bad.parquet"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="holds no queries"):
        load_queries(str(tmp_path / "empty.txt"))


def test_recall_plot_marks_the_chosen_nprobe():
    svg = recall_plot([{"nprobe": n, "recall_at_k": r} for n, r in ((1, 0.5), (2, 0.7), (4, 0.9))], chosen=2)
    assert svg.startswith('<svg id="recall-plot"') and svg.count("<circle") == 3 and 'fill="#c22"' in svg
    assert "polyline" in svg and recall_plot([], None).startswith("<p>")


def test_a_night_is_keyed_by_what_it_computes_from_not_by_how_it_is_kept(tmp_path):
    from index_builder.settings import BuildSettings
    from pipelines.embed.settings import EmbedSettings
    from pipelines.reindex.run import inputs_key
    from pipelines.reindex.settings import ReindexSettings

    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "in.parquet")
    embed = EmbedSettings(inputs=(str(tmp_path / "in.parquet"),), output="", model="m")
    night = ReindexSettings(root="r", embed=embed, build=BuildSettings(embeddings="", output=""))
    key = inputs_key(night)
    assert inputs_key(replace(night, keep=2, report_queries=0, lock_stale_after=60)) == key
    assert inputs_key(replace(night, min_recall=0.9)) != key
    assert inputs_key(replace(night, embed=replace(embed, batch_size=3))) != key
    pq.write_table(pa.table({"id": ["a", "b"]}), tmp_path / "in.parquet")  # the input changed
    assert inputs_key(night) != key


def test_the_frontier_shows_each_screened_candidate_and_marks_the_kept_one():
    screened = (("IVF8,RaBitQ4", 148, 0.86), ("IVF8,PQ128x8np", 128, 0.8), ("IVF8,SQ4", 128, 0.7))
    rows = [{"factory": f, "bytes_per_vector": b, "recall_at_k": r, "nprobe": 64} for f, b, r in screened]
    page = frontier_html(rows, "IVF8,RaBitQ4")
    assert page.count("<circle") == 3 and page.count('fill="#c22"') == 1 and "IVF8,PQ128x8np" in page
    assert ">128<" in page and ">148<" in page and frontier_html([], "Flat").startswith("<p>no candidates")
