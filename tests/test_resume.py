"""Crash and re-run: a real `kill -9` mid-run, resume, byte-identical results, index rebuilds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from encoders.errors import SettingsError
from encoders.openmp import wait_policy
from encoders.random_models import make_random_clip
from index_builder.build import build_index
from index_builder.embeddings import list_shards
from index_builder.search import LoadedIndex
from index_builder.settings import BuildSettings
from pipelines.datasets.sample import make_sample
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings


def shard_bytes(out):
    d = os.path.join(out, "embeddings")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.startswith("part-")}


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory):
    """40 row groups and a model slow enough (~0.1 s per row group) to be killed mid-run."""
    root = tmp_path_factory.mktemp("resume")
    make_sample(str(root / "in"), rows=600, shards=2, row_group_size=15, seed=5)
    model = make_random_clip(root / "model", image_size=96, patch_size=8, hidden_size=64, num_layers=4)
    return root, str(root / "in"), str(model)


@pytest.mark.kill9
@pytest.mark.beam
def test_kill_9_then_rerun_reuses_committed_shards_and_matches_uninterrupted_run(slow_job):
    root, inputs, model = slow_job
    out = str(root / "killed")
    exe = os.path.join(os.path.dirname(sys.executable), "fusionindex")
    cmd = [exe, "-q", "embed", "--input", inputs, "--output", out, "--model", model, "--batch-size", "8"]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    shard_dir = os.path.join(out, "embeddings")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(shard_dir) and sum(n.startswith("part-") for n in os.listdir(shard_dir)) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = shard_bytes(out)
    assert 3 <= len(committed) < 40, f"{len(committed)} shards committed at kill time"
    assert not os.path.exists(os.path.join(out, "manifest.json"))

    m = run_embed(EmbedSettings(inputs=[inputs], output=out, model=model, batch_size=8)).to_dict()
    assert m["reused_shards"] == len(committed)
    assert m["counts"]["read"] == 600 and m["counts"]["rejected"] == 0
    assert m["counts"]["embedded"] == sum(s.num_rows for s in list_shards(out)) == 600 - m["counts"]["skipped"]
    resumed = shard_bytes(out)
    assert all(resumed[n] == b for n, b in committed.items())  # reused, not rewritten

    fresh = str(root / "fresh")
    run_embed(EmbedSettings(inputs=[inputs], output=fresh, model=model, batch_size=8))
    assert shard_bytes(fresh) == resumed  # same final rows as an uninterrupted run, byte for byte


@pytest.mark.beam
def test_rerun_of_finished_job_reuses_everything_unless_restarted_or_changed(slow_job, tmp_path):
    root, inputs, model = slow_job
    out = str(tmp_path / "out")
    cfg = EmbedSettings(inputs=[inputs], output=out, model=model, batch_size=8)
    first = run_embed(cfg).to_dict()
    before = shard_bytes(out)
    again = run_embed(cfg).to_dict()
    assert again["reused_shards"] == 40 and again["counts"] == first["counts"]
    assert shard_bytes(out) == before
    assert run_embed(replace(cfg, restart=True)).to_dict()["reused_shards"] == 0
    assert shard_bytes(out) == before  # deterministic recompute
    changed = run_embed(replace(cfg, alpha=0.9, beta=0.1)).to_dict()  # a different fusion must not reuse old vectors
    assert changed["reused_shards"] == 0 and shard_bytes(out) != before


@pytest.mark.beam
def test_index_build_is_deterministic_and_a_failed_build_leaves_the_old_index(slow_job, tmp_path):
    root, inputs, model = slow_job
    emb = str(tmp_path / "emb")
    run_embed(EmbedSettings(inputs=[inputs], output=emb, model=model, batch_size=8))
    idx1, idx2 = str(tmp_path / "idx1"), str(tmp_path / "idx2")
    build_index(BuildSettings(emb, idx1, factory="IVF16,PQ8x8np", seed=7))
    build_index(BuildSettings(emb, idx2, factory="IVF16,PQ8x8np", seed=7))
    a, b = LoadedIndex.load(idx1), LoadedIndex.load(idx2)
    queries = np.random.default_rng(0).standard_normal((20, a.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert [[h.id for h in hits] for hits in a.search(queries, 10)] == [
        [h.id for h in hits] for hits in b.search(queries, 10)
    ]

    files = {n: open(os.path.join(idx1, n), "rb").read() for n in os.listdir(idx1)}
    with pytest.raises(SettingsError, match="cannot train"):
        build_index(BuildSettings(emb, idx1, factory="IVF100000,PQ8x8np"))  # more lists than vectors
    assert {n: open(os.path.join(idx1, n), "rb").read() for n in os.listdir(idx1)} == files
    assert json.load(open(os.path.join(idx1, "manifest.json")))["factory"] == "IVF16,PQ8x8np"
    build_index(BuildSettings(emb, idx1, seed=7))  # a re-run completes
    assert LoadedIndex.load(idx1).index.ntotal == 596


@pytest.mark.kill9
def test_killed_index_build_leaves_the_previous_index_untouched(tmp_path):
    from tests.test_index import clustered, write_embeddings

    rng = np.random.default_rng(0)
    small, big, idx = str(tmp_path / "small"), str(tmp_path / "big"), str(tmp_path / "idx")
    write_embeddings(small, [clustered(1500, 64, rng)])
    write_embeddings(big, [clustered(20_000, 64, rng) for _ in range(4)])
    build_index(BuildSettings(small, idx))
    before = {n: open(os.path.join(idx, n), "rb").read() for n in os.listdir(idx)}
    exe = os.path.join(os.path.dirname(sys.executable), "fusionindex")
    proc = subprocess.Popen(
        [exe, "build-index", "--embeddings", big, "--output", idx], stderr=subprocess.PIPE, text=True
    )
    for line in proc.stderr:
        if "building" in line:
            break
    time.sleep(0.5)  # inside sampling / training
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {n: open(os.path.join(idx, n), "rb").read() for n in os.listdir(idx)} == before
    assert LoadedIndex.load(idx).index.ntotal == 1500
    m = build_index(BuildSettings(big, idx)).to_dict()  # a re-run completes
    assert m["ntotal"] == 80_000 and LoadedIndex.load(idx).index.ntotal == 80_000


@pytest.mark.beam
def test_rerun_reuses_shards_only_where_the_settings_resolve_the_same_way(tmp_path, tiny_clip, sample_dir, monkeypatch):
    """On a CPU `--preprocess auto` resolves to the tensor path (the checkpoint has a tensor recipe)
    and `pil` to the PIL path: a re-run asking differently must not mix shards made two ways; one
    asking differently but resolving the same (`tensor`, `--precision bf16` on a CPU) reuses them,
    and so does one with other torch threads (recorded, not compared). `--large-model` is another
    model sharing (and the PIL path)."""
    from pipelines.threads import usable_cores

    monkeypatch.delenv("FUSIONINDEX_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = str(tmp_path / "out")

    def run(**kw):
        return run_embed(EmbedSettings(inputs=(sample_dir,), output=out, model=tiny_clip, **kw)).to_dict()

    first = run(preprocess="pil")
    assert first["runtime"] == {
        "device": "cpu",
        "preprocess": "pil",
        "precision": "fp32",
        "model_sharing": "per_process",
        "tensor_revision": None,
        "threads": {
            "threads": usable_cores(),  # one process: every core it may use
            "source": "share",
            "cores": usable_cores(),
            "processes": 1,
            "engine": "beam",
            "wait_policy": wait_policy(os.environ),
        },
    }
    pil_shards = shard_bytes(out)
    auto = run()
    assert auto["reused_shards"] == 0 and auto["runtime"]["preprocess"] == "tensor"
    tensor_shards = shard_bytes(out)
    assert pil_shards != tensor_shards and auto["counts"] == first["counts"]
    same = run(preprocess="tensor", precision="bf16")
    assert same["reused_shards"] == same["shards"] == 6 and shard_bytes(out) == tensor_shards
    monkeypatch.setenv("FUSIONINDEX_TORCH_THREADS", "1")
    one = run()
    assert one["reused_shards"] == 6 and shard_bytes(out) == tensor_shards
    monkeypatch.delenv("FUSIONINDEX_TORCH_THREADS")
    shared = run(large_model=True)
    assert shared["reused_shards"] == 0 and shared["runtime"]["model_sharing"] == "per_machine"
    assert shared["runtime"]["preprocess"] == "pil"
    assert shared["settings"]["large_model"] is True and auto["settings"]["preprocess"] == "auto"
