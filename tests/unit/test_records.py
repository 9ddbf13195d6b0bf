"""Records (index_builder.records): the JSON on disk read back field for field, one message for a
missing record, and the format-version check (older read, newer refused)."""

from __future__ import annotations

import json

import pytest

from encoders import storage
from encoders.errors import InputError
from index_builder.records import EmbedManifest, IndexManifest, Latest, RunCounts

# what `embed` writes today (format 2), shortened but with every nested part readers use
EMBED_V2 = {
    "kind": "fusionindex.embeddings",
    "format_version": 2,
    "inputs": ["/data/part-0.parquet"],
    "columns": {"id": "key", "caption": "caption"},
    "counts": {"read": 10, "embedded": 7, "rejected": 2, "skipped": 1, "empty_caption": 0, "new": 7, "changed": 0,
               "unchanged": 0, "rejects_by_reason": {"corrupt_image": 2}},
    "bad_files": [],
    "shards": 1,
    "reused_shards": None,
    "previous": None,
    "dim": 16,
    "model": {"spec": "tiny", "family": "clip", "model_type": "clip", "fingerprint": "sha256:ab"},
    "fusion": {"kind": "weighted", "alpha": 0.5, "beta": 0.5},
    "settings": {"batch_size": 8},
    "runtime": {"device": "cpu"},
    "engine": "beam",
    "runner": "FnApiRunner",
    "started_at": "2026-12-02T00:00:00+00:00",
    "finished_at": "2026-12-02T00:01:00+00:00",
    "timings": {"total_s": 1.5, "pipeline_s": 1.0, "units_s": 0.5, "model_load_s": 0.1, "inference_s": 0.2,
                "stages_s": {"read": 0.1}, "other_s": 0.0, "host_us_per_row": 3.0, "unit_thread_host_us_per_row": 2.0},
}  # fmt: skip
# what the first `embed` wrote (format 1): no family, no previous, no engine, flat settings
EMBED_V1 = {
    "kind": "fusionindex.embeddings",
    "format_version": 1,
    "inputs": ["/data/part-0.parquet"],
    "columns": {"id": "key"},
    "counts": {"read": 3, "embedded": 3, "rejected": 0, "skipped": 0},
    "shards": 1,
    "dim": 16,
    "model": {"spec": "tiny", "model_type": "clip", "fingerprint": "sha256:ab"},
    "fusion": {"kind": "weighted", "alpha": 0.5, "beta": 0.5},
    "batch_size": 32,
    "device": "auto",
    "runner": "DirectRunner",
    "started_at": "2026-11-20T00:00:00+00:00",
    "finished_at": "2026-11-20T00:00:09+00:00",
    "timings": {"total_s": 9.0, "pipeline_s": 8.0},
}


def test_a_record_written_and_read_back_is_the_json_it_was(tmp_path):
    with_extra = {**EMBED_V2, "written_by_a_newer_minor": {"x": 1}}
    m = EmbedManifest.parse(with_extra)
    assert m.counts.embedded == 7 and m.model.fingerprint == "sha256:ab" and m.timings.stages_s == {"read": 0.1}
    assert m.counts.deleted is None and "deleted" not in m.to_dict()["counts"]  # absent stays absent
    m.save(str(tmp_path))
    assert json.load(open(tmp_path / "manifest.json")) == with_extra  # unknown keys ride along
    assert list(json.load(open(tmp_path / "manifest.json"))) == list(with_extra)  # in the file's order
    assert EmbedManifest.load(str(tmp_path)) == m
    assert storage.listdir(str(tmp_path)) == ["manifest.json"]  # no temporary left behind


def test_an_older_version_is_read_and_a_newer_one_refused_with_what_to_do(tmp_path):
    old = EmbedManifest.parse(EMBED_V1)
    assert old.format_version == 1 and old.model.spec == "tiny" and old.model.family is None
    assert old.counts.read == 3 and old.counts.new == 0 and old.previous is None
    assert old.to_dict() == EMBED_V1  # embedded in an index manifest as it was
    storage.write_json(str(tmp_path / "manifest.json"), {**EMBED_V2, "format_version": 3})
    with pytest.raises(InputError, match=r"format_version 3, newer than this fusionindex reads \(2\): upgrade"):
        EmbedManifest.load(str(tmp_path))
    with pytest.raises(InputError, match="format_version 0, older"):
        IndexManifest.parse({"kind": "fusionindex.index", "format_version": 0})


def test_a_missing_record_or_one_of_another_kind_says_which_command_writes_it(tmp_path):
    with pytest.raises(InputError, match="has no manifest.json: the embed run did not finish.*fusionindex embed"):
        EmbedManifest.load(str(tmp_path))
    with pytest.raises(InputError, match="has no manifest.json: not a finished index; run `fusionindex build-index`"):
        IndexManifest.load(str(tmp_path))
    IndexManifest(factory="Flat", dim=16).save(str(tmp_path))
    with pytest.raises(InputError, match="is a fusionindex.index record, not a fusionindex.embeddings one"):
        EmbedManifest.load(str(tmp_path))  # `--embeddings IDX`
    storage.write_json(str(tmp_path / "manifest.json"), [1, 2])
    with pytest.raises(InputError, match="not a fusionindex.index record"):
        IndexManifest.load(str(tmp_path))


def test_vectors_made_elsewhere_record_no_model_and_say_to_pass_one():
    m = EmbedManifest.parse({"dim": 8})
    assert m.model is None and m.fusion is None and m.to_dict() == {"dim": 8}
    with pytest.raises(InputError, match="records no model.*pass --model"):
        m.model_spec()
    assert EmbedManifest.parse(EMBED_V2).model_spec() == "tiny"


def test_index_manifest_parts_are_typed_and_round_trip():
    raw = {"kind": "fusionindex.index", "format_version": 2, "factory": "IVF8,Flat", "dim": 16, "ntotal": 5,
           "nprobe": 2, "merge": "disk", "training": {"mode": "reused", "from": "/idx0", "reason": "no drift"},
           "recall": {"k": 10, "recall_at_k": 0.9, "by_nprobe": [{"nprobe": 1, "recall_at_k": 0.5}]},
           "source": {"path": "/emb", "manifest": {"dim": 16}}, "timings": {"total_s": 2.0},
           "shards": [{"path": "shard-00000-of-00002", "ntotal": 3, "bytes": 10}]}  # fmt: skip
    m = IndexManifest.parse(raw)
    assert m.training.from_ == "/idx0" and m.recall.by_nprobe[0].recall_at_k == 0.5
    assert m.shards[0].path == "shard-00000-of-00002" and m.source.manifest.dim == 16 and m.timings.total_s == 2.0
    assert m.to_dict() == raw


def test_latest_is_unversioned_at_version_1_and_names_the_index_of_a_root(tmp_path):
    root = str(tmp_path)
    assert Latest.load_if_any(root) is None and Latest.index_of(root) == root  # not a ROOT: an index itself
    latest = Latest(run="runs/20261201T000000Z", published_at="2026-12-01T00:00:00+00:00", counts=RunCounts(read=1),
                    model="tiny", index="runs/20261201T000000Z/index")  # fmt: skip
    latest.save(root)
    on_disk = json.load(open(tmp_path / "LATEST"))
    assert "format_version" not in on_disk and on_disk["run"] == "runs/20261201T000000Z"
    assert Latest.load(root) == latest and Latest.load(root).run_id == "20261201T000000Z"
    assert Latest.index_of(root) == storage.join(root, "runs", "20261201T000000Z", "index")
    storage.write_json(str(tmp_path / "LATEST"), {**on_disk, "format_version": 2})
    with pytest.raises(InputError, match="newer than this fusionindex reads"):
        Latest.index_of(root)


def test_a_run_record_carries_its_outcome_only_once_finished(tmp_path):
    from dataclasses import replace

    from pipelines.reindex.root import RunRecord

    run = str(tmp_path)
    started = RunRecord("20261202T000000Z", "running", "sha256:k", None, "2026-12-02T00:00:00+00:00", {"keep": 3})
    started.save(run)
    assert json.load(open(tmp_path / "run.json")) == {
        "run": "20261202T000000Z", "status": "running", "inputs_key": "sha256:k", "previous": None,
        "started_at": "2026-12-02T00:00:00+00:00", "settings": {"keep": 3},
    }  # fmt: skip
    done = replace(RunRecord.load(run), status="published", canary=None, stages={"embed": {"seconds": 1.0}})
    on_disk = done.to_dict()
    assert on_disk["canary"] is None and on_disk["counts"] is None and "seconds" not in on_disk  # not summed yet
    replace(done, seconds=1.0).save(run)
    assert RunRecord.load(run).seconds == 1.0 and RunRecord.load(run).to_dict() == {**on_disk, "seconds": 1.0}
    storage.write_json(str(tmp_path / "run.json"), {**on_disk, "format_version": 2})
    with pytest.raises(InputError, match="newer than this fusionindex reads"):
        RunRecord.load(run)
