"""Progress of a running embed, from committed shard names and the plan (no runner, no model)."""

from __future__ import annotations

import logging

from index_builder.embeddings import shard_name
from pipelines.embed.progress import Watcher, committed_units, measure
from pipelines.inputs import Columns, WorkUnit


def test_rows_speed_and_eta_count_only_units_committed_since_the_start():
    rows_of = {0: 100, 1: 100, 2: 200, 3: 100}
    p = measure({0, 1}, rows_of, at_start={0}, elapsed_s=10.0)
    assert (p.rows_done, p.rows_total, p.units_done, p.units_total) == (200, 500, 2, 4)
    assert p.rows_per_s == 10.0 and p.eta_s == 30.0  # 100 new rows in 10 s; 300 rows left
    assert "200 / 500 rows (40.0%), 2 / 4 units, 10.0 rows/s, ETA 0m30s" in p.line()
    waiting = measure({0}, rows_of, at_start={0}, elapsed_s=10.0)
    assert waiting.rows_per_s is None and waiting.eta_s is None and "ETA -" in waiting.line()
    assert measure({0, 1, 2, 3, 9}, rows_of, at_start=set(), elapsed_s=5.0).eta_s == 0.0  # 9: not of this plan


def test_the_watcher_sees_shards_commit_in_a_real_directory(tmp_path, caplog):
    out = tmp_path / "out"
    units = [WorkUnit(i, "in.parquet", i, 10 * i, 10, Columns()) for i in range(3)]
    assert committed_units(str(out)) == set()  # no directory yet
    (out / "embeddings").mkdir(parents=True)
    (out / "embeddings" / shard_name(0, 3)).write_bytes(b"x")  # committed by an interrupted run
    seen = []
    with caplog.at_level(logging.INFO, logger="pipelines.embed.progress"):
        with Watcher(str(out), units, report=seen.append) as watcher:
            (out / "embeddings" / (".tmp-" + shard_name(1, 3))).write_bytes(b"x")  # not committed yet
            assert watcher.poll().units_done == 1
            (out / "embeddings" / shard_name(2, 3)).write_bytes(b"x")
            now = watcher.poll()
            assert (now.rows_done, now.units_done) == (20, 2) and now.rows_per_s > 0
    assert seen[-1].units_done == 2 and "progress: 20 / 30 rows (66.7%), 2 / 3 units" in caplog.text
