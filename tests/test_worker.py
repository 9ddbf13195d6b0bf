"""The engine-agnostic unit worker, without any Beam runner: embed, commit, and reuse decided per
shard by the Runtime it was made with (real tiny CLIP, real Parquet)."""

from __future__ import annotations

import dataclasses
import os
import threading

import pyarrow.parquet as pq
import pytest

from encoders.errors import InputError
from index_builder.embeddings import shard_name
from pipelines.embed.handler import EmbeddingModelHandler
from pipelines.embed.rows import RowPlan
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.shards import committed_runtime
from pipelines.embed.stream import UnitFeeder
from pipelines.embed.worker import UnitJob, UnitWorker
from pipelines.inputs import plan_inputs


def worker(settings: EmbedSettings, plan, resume: bool, loads: list):
    handler = EmbeddingModelHandler(settings)

    def load():
        loads.append(1)
        return handler.load_model()

    return UnitWorker(UnitJob(settings, tuple(u.path for u in plan.units), 16, resume), handler, load)


def test_units_commit_and_reuse_only_shards_made_the_same_way(tmp_path, tiny_clip, sample_dir):
    out = str(tmp_path / "out")
    auto = EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, batch_size=4)
    plan = plan_inputs([sample_dir], auto.columns)
    unit = plan.units[1]
    shard = os.path.join(out, "embeddings", shard_name(unit.index, len(plan.units)))

    loads: list = []
    report = worker(auto, plan, resume=False, loads=loads).process(unit)
    assert report.counts["read"] == unit.num_rows and report.counts["embedded"] == unit.num_rows
    assert report.load_ms is not None and len(report.batch_ms) == 3 and loads == [1]  # 12 rows in batches of 4
    made = open(shard, "rb").read()
    assert committed_runtime(shard).preprocess == "tensor"
    ids = pq.read_table(shard).column("id").to_pylist()

    loads.clear()
    again = worker(
        EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, batch_size=4, preprocess="tensor"),
        plan,
        resume=True,
        loads=loads,
    ).process(unit)
    assert again.counts is None and loads == []  # "auto" resolves to "tensor" on a CPU: reused, no model loaded
    assert open(shard, "rb").read() == made

    pil = EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, batch_size=4, preprocess="pil")
    redone = worker(pil, plan, resume=True, loads=loads).process(
        unit, [RowPlan(unit.first_row + 2, "duplicate", (0, 7))]
    )
    assert redone.counts is not None and loads == [1]  # made another way: recomputed, not mixed in
    assert committed_runtime(shard).preprocess == "pil"
    assert redone.counts["rejects_by_reason"] == {"duplicate_id": 1}
    assert pq.read_table(shard).column("id").to_pylist() == ids[:2] + ids[3:]


def shard_tables(out: str, plan) -> list:
    return [pq.read_table(os.path.join(out, "embeddings", shard_name(u.index, len(plan.units)))) for u in plan.units]


class Overlapping(EmbeddingModelHandler):
    """The real handler, whose `complete` of batch n waits until batch n + 1 is prepared (the last
    batch excepted): it fails, after a minute, unless the decode thread runs ahead of the forward
    passes, unit boundaries included."""

    def __init__(self, settings: EmbedSettings, total: int):
        super().__init__(settings)
        self.total, self.prepared, self.completed = total, 0, 0
        self.changed = threading.Condition()

    def prepare_ahead(self, *args, **kw):
        out = super().prepare_ahead(*args, **kw)
        with self.changed:
            self.prepared += 1
            self.changed.notify_all()
        return out

    def complete(self, *args, **kw):
        n = self.completed + 1
        with self.changed:
            ahead = self.changed.wait_for(lambda: self.prepared >= min(n + 1, self.total), timeout=60)
        assert ahead, f"batch {n + 1} was not prepared while batch {n} ran forward"
        self.completed = n
        return super().complete(*args, **kw)


def test_units_stream_through_one_pipeline_with_decode_ahead(tmp_path, tiny_clip, sample_dir):
    """With read/decode-ahead, the next batch (the next unit's first, at a unit's end) is read and
    decoded while a batch runs forward, and the shards equal those of units embedded one at a
    time without threads."""
    one = EmbedSettings(inputs=(sample_dir,), output=str(tmp_path / "one"), model=tiny_clip, batch_size=5)
    plan = plan_inputs([sample_dir], one.columns)
    assert len(plan.units) >= 4
    batches = sum(len(worker(one, plan, resume=False, loads=[]).process(unit).batch_ms) for unit in plan.units)

    many = dataclasses.replace(one, output=str(tmp_path / "many"), decode_ahead="on")
    handler = Overlapping(many, batches)
    loads: list = []

    def load():
        loads.append(1)
        return handler.load_model()

    w = UnitWorker(UnitJob(many, tuple(u.path for u in plan.units), 16, False), handler, load)
    reports = list(w.process_many((u, ()) for u in plan.units))
    assert [r.unit for r in reports] == [u.index for u in plan.units] and loads == [1]
    assert handler.completed == batches
    # the units' thread waits and runs forward; reading, decoding and the shard's writing run beside it
    assert all("wait" in r.stages and {"read", "decode", "write"} <= set(r.ahead) for r in reports)
    assert not any("write" in r.stages for r in reports)
    for a, b in zip(shard_tables(one.output, plan), shard_tables(many.output, plan)):
        assert a.column("id").equals(b.column("id")) and a.column("fused_embedding").equals(b.column("fused_embedding"))


def test_an_unreadable_unit_in_a_stream_is_rejected_or_raised(tmp_path, tiny_clip, sample_dir):
    """Units fed one at a time (as a Beam DoFn does) stream through UnitFeeder's thread: a row group
    that cannot be read becomes rejects with --skip-bad-files, its neighbours commit as usual;
    without it the error reaches the caller's thread."""
    s = EmbedSettings(
        inputs=(sample_dir,), output=str(tmp_path / "o"), model=tiny_clip, batch_size=5, decode_ahead="on",
        skip_bad_files=True,
    )  # fmt: skip
    plan = plan_inputs([sample_dir], s.columns)
    units = list(plan.units)
    units[2] = dataclasses.replace(units[2], path=str(tmp_path / "gone.parquet"))
    feeder = UnitFeeder(worker(s, plan, resume=False, loads=[]))
    reports = [r for u in units for r in feeder.put(u)] + feeder.close()
    by_unit = {r.unit: r.counts for r in reports}
    assert sorted(by_unit) == [u.index for u in units]
    assert by_unit[units[2].index]["rejects_by_reason"] == {"unreadable_row_group": units[2].num_rows}
    assert all(c["embedded"] > 0 for i, c in by_unit.items() if i != units[2].index)

    strict = dataclasses.replace(s, output=str(tmp_path / "strict"), skip_bad_files=False)
    feeder = UnitFeeder(worker(strict, plan, resume=False, loads=[]))
    with pytest.raises(InputError, match="gone.parquet: cannot read row group"):
        for u in units:
            feeder.put(u)
        feeder.close()


def test_an_abandoned_feeder_ends_its_thread(tmp_path, tiny_clip, sample_dir):
    s = EmbedSettings(
        inputs=(sample_dir,), output=str(tmp_path / "o"), model=tiny_clip, batch_size=5, decode_ahead="on"
    )
    plan = plan_inputs([sample_dir], s.columns)
    feeder = UnitFeeder(worker(s, plan, resume=False, loads=[]))
    feeder.put(plan.units[0])
    feeder.abandon()
    feeder._thread.join(timeout=60)
    assert not feeder._thread.is_alive()


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("read", "decode")]


def test_an_error_or_an_early_close_ends_the_stream_and_its_threads(tmp_path, tiny_clip, sample_dir):
    """A model that fails to load (in the decode thread) is raised to the caller; a stream closed
    after its first report lets its read and decode threads end instead of leaving them blocked."""
    from encoders.loading import ModelLoadError

    s = EmbedSettings(
        inputs=(sample_dir,), output=str(tmp_path / "o"), model=tiny_clip, batch_size=5, decode_ahead="on"
    )
    plan = plan_inputs([sample_dir], s.columns)

    def no_model():
        raise ModelLoadError("no model here")

    failing = UnitWorker(UnitJob(s, tuple(u.path for u in plan.units), 16, False), EmbeddingModelHandler(s), no_model)
    with pytest.raises(ModelLoadError, match="no model here"):
        list(failing.process_many((u, ()) for u in plan.units))
    reports = worker(s, plan, resume=False, loads=[]).process_many((u, ()) for u in plan.units)
    assert next(reports).unit == plan.units[0].index
    reports.close()
    for thread in stream_threads():
        thread.join(timeout=60)
    assert not stream_threads()
