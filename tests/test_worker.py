"""The engine-agnostic unit worker, without any Beam runner: embed, commit, and reuse decided per
shard by the Runtime it was made with (real tiny CLIP, real Parquet)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from index_builder.embeddings import shard_name
from pipelines.embed.handler import EmbeddingModelHandler
from pipelines.embed.rows import RowPlan
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.shards import committed_runtime
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
    pil = EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, batch_size=4)
    plan = plan_inputs([sample_dir], pil.columns)
    unit = plan.units[1]
    shard = os.path.join(out, "embeddings", shard_name(unit.index, len(plan.units)))

    loads: list = []
    report = worker(pil, plan, resume=False, loads=loads).process(unit)
    assert report.counts["read"] == unit.num_rows and report.counts["embedded"] == unit.num_rows
    assert report.load_ms is not None and len(report.batch_ms) == 3 and loads == [1]  # 12 rows in batches of 4
    made = open(shard, "rb").read()
    assert committed_runtime(shard).preprocess == "pil"
    ids = pq.read_table(shard).column("id").to_pylist()

    loads.clear()
    again = worker(
        EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, batch_size=4, preprocess="auto"),
        plan,
        resume=True,
        loads=loads,
    ).process(unit)
    assert again.counts is None and loads == []  # "auto" resolves to "pil" on a CPU: reused, no model loaded
    assert open(shard, "rb").read() == made

    tensor = EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, batch_size=4, preprocess="tensor")
    redone = worker(tensor, plan, resume=True, loads=loads).process(
        unit, [RowPlan(unit.first_row + 2, "duplicate", (0, 7))]
    )
    assert redone.counts is not None and loads == [1]  # made another way: recomputed, not mixed in
    assert committed_runtime(shard).preprocess == "tensor"
    assert redone.counts["rejects_by_reason"] == {"duplicate_id": 1}
    assert pq.read_table(shard).column("id").to_pylist() == ids[:2] + ids[3:]
