"""Index builder: heuristics, template/add/merge equivalence, self-query, id mapping."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from encoders import storage
from encoders.errors import InputError, SettingsError
from index_builder.adding import add_and_merge, ids_table
from index_builder.build import build_index
from index_builder.embeddings import Shard, embeddings_table, list_shards, read_vectors_lean, shard_name
from index_builder.factory import (
    check_factory,
    choose_factory,
    choose_nlist,
    choose_pq_m,
    choose_train_size,
)
from index_builder.sampling import ShardCache, read_vectors, sample_training_set
from index_builder.search import LoadedIndex
from index_builder.settings import BuildSettings
from index_builder.training import train_template


def clustered(n, d, rng, centres=50):
    """Normalised vectors around random centres: a stand-in for real embeddings."""
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(root, shards: list[np.ndarray], text_mask=None):
    d = shards[0].shape[1]
    for i, x in enumerate(shards):
        n = len(x)
        ids = [f"s{i}-r{j}" for j in range(n)]
        text = x if text_mask is None else x * text_mask[i][:, None]
        table = embeddings_table(ids, [f"caption {k}" for k in ids], x, text, x)
        os.makedirs(os.path.join(root, "embeddings"), exist_ok=True)
        pq.write_table(table, os.path.join(root, "embeddings", shard_name(i, len(shards))))
    storage.write_json(
        os.path.join(root, "manifest.json"), {"dim": d, "model": {"spec": "x", "fingerprint": "y"}, "fusion": {}}
    )


@pytest.mark.parametrize(
    "n,d", [(10, 512), (999, 16), (1000, 512), (5000, 384), (50_000, 768), (3_000_000, 512), (200_000_000, 64)]
)
def test_default_factory_is_trainable_and_never_polysemous(n, d):
    factory = choose_factory(n, d)
    check_factory(factory)
    if n < 1000:
        assert factory == "Flat"
        return
    nlist = choose_nlist(n)
    assert n / nlist >= 39 and nlist & (nlist - 1) == 0
    m = choose_pq_m(d)
    assert d % m == 0 and f"PQ{m}x" in factory and factory.endswith("np")
    assert ("HNSW32" in factory) == (nlist >= 65536)
    assert nlist <= choose_train_size(n, factory) <= n
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    assert faiss.extract_index_ivf(index).nlist == nlist


def test_polysemous_factory_is_refused():
    with pytest.raises(SettingsError, match="PQ16np"):
        check_factory("IVF256,PQ16")
    with pytest.raises(SettingsError, match="PQ64x8np"):
        check_factory("OPQ64_320,IVF2048_HNSW32,PQ64x8")
    for fine in ("OPQ8,IVF32,PQ8np", "OPQ16_64,IVF256,PQ16x4fs", "IVF1024,SQ8", "Flat", "IVF64,PQ8np,RFlat"):
        check_factory(fine)
    check_factory("IVF256,PQ16x4fs")


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = str(tmp_path_factory.mktemp("emb"))
    write_embeddings(root, [clustered(n, 32, rng) for n in (1500, 1200, 1800)])
    return root


def test_merged_index_equals_single_index_from_same_template(emb_dir, tmp_path):
    """Parts (inverted lists only) merged in RAM or on disk hold what one copy of the template
    holds after adding every vector: the same bytes in RAM, the same results from disk."""
    shards = list_shards(emb_dir)
    cache = ShardCache("fused", 1 << 30)
    xt, _, counts = sample_training_set(shards, "fused", 3000, seed=0, cache=cache)
    template = train_template("IVF32,PQ8x8np", xt)
    merged = add_and_merge(template, shards, counts, cache)
    single = faiss.clone_index(template)
    everything = np.concatenate([read_vectors(s, "fused")[0] for s in shards])
    single.add_with_ids(everything, np.arange(len(everything)))
    assert merged.ntotal == single.ntotal == len(ids_table(shards, cache)) == 4500
    assert faiss.serialize_index(merged).tobytes() == faiss.serialize_index(single).tobytes()
    on_disk = add_and_merge(template, shards, counts, cache, ivfdata=str(tmp_path / "index.ivfdata"))
    assert on_disk.ntotal == 4500 and os.path.getsize(tmp_path / "index.ivfdata") >= 4500 * (8 + 8)
    queries, params = everything[::37], faiss.SearchParametersIVF(nprobe=8)
    d1, i1 = single.search(queries, 10, params=params)
    d2, i2 = on_disk.search(queries, 10, params=params)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)


def test_build_index_self_query_and_id_mapping(emb_dir, tmp_path):
    out = str(tmp_path / "idx")
    m = build_index(BuildSettings(emb_dir, out, seed=3)).to_dict()
    assert m["factory"] == choose_factory(4500, 32) and m["ntotal"] == 4500 and m["metric"] == "inner_product"
    assert json.load(open(os.path.join(out, "manifest.json"))) == m
    assert m["source"]["manifest"]["dim"] == 32 and m["train_size"] == 4050  # a tenth held out for the baseline
    assert m["training"]["baseline_on"] == "450 held-out vectors"
    idx = LoadedIndex.load(out)
    assert idx.ids[:2] == ["s0-r0", "s0-r1"] and idx.ids[1500] == "s1-r0" and idx.ids[-1] == "s2-r1799"
    x = np.concatenate([read_vectors(s, "fused")[0] for s in list_shards(emb_dir)])
    rng = np.random.default_rng(1)
    rows = rng.choice(len(x), 300, replace=False)
    hits = idx.search(x[rows], k=5, nprobe=faiss.extract_index_ivf(idx.index).nlist)
    found_self = np.mean([h[0].id == idx.ids[r] for h, r in zip(hits, rows)])
    assert found_self >= 0.95
    assert hits[0][0].caption == f"caption {hits[0][0].id}" and hits[0][0].rank == 1
    assert all(a.score >= b.score for h in hits for a, b in zip(h, h[1:]))
    r = m["recall"]
    assert set(r["recall_at"]) == {"1", "10", "100"} and r["k"] == 10 and r["recall_at_k"] == r["recall_at"]["10"]
    assert r["queries"] == 450 and r["target"] == 0.9  # the held-out vectors, each without itself in its truth
    assert r["nprobe"] == m["nprobe"] == faiss.extract_index_ivf(idx.index).nprobe  # the tuned default, stored
    assert m["latency"]["batch_1_ms"] > 0 and m["latency"]["batch_1024_us_per_query"] > 0


def test_search_parameters_apply_per_call_and_leave_the_loaded_index_alone(emb_dir, tmp_path):
    """nprobe given to one search must not change the next: the served index keeps its own."""
    for factory in ("IVF32,PQ8np", "OPQ8,IVF32,PQ8np"):
        out = str(tmp_path / factory.replace(",", "_"))
        build_index(BuildSettings(emb_dir, out, factory=factory, nprobe=1, seed=0))
        idx = LoadedIndex.load(out)
        ivf = faiss.extract_index_ivf(idx.index)
        x = np.random.default_rng(5).standard_normal((200, 32)).astype(np.float32)  # neighbours across lists
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        default = [[h.id for h in hits] for hits in idx.search(x, k=10)]
        wide = [[h.id for h in hits] for hits in idx.search(x, k=10, nprobe=32)]
        assert ivf.nprobe == 1 and default != wide  # probing every list finds other neighbours
        assert [[h.id for h in hits] for hits in idx.search(x, k=10)] == default
        ivf.nprobe = 32  # what the per-call parameters must equal
        assert [[h.id for h in hits] for hits in idx.search(x, k=10)] == wide


def test_text_vector_skips_rows_without_caption_and_keeps_ids_aligned(tmp_path):
    rng = np.random.default_rng(2)
    shards = [clustered(n, 16, rng) for n in (700, 900)]
    masks = [rng.random(len(s)) > 0.3 for s in shards]
    root = str(tmp_path / "emb")
    write_embeddings(root, shards, masks)
    m = build_index(BuildSettings(root, str(tmp_path / "idx"), vector="text", factory="IVF8,Flat")).to_dict()
    kept = int(sum(mk.sum() for mk in masks))
    assert m["ntotal"] == kept and m["skipped_null_vectors"] == 1600 - kept
    idx = LoadedIndex.load(str(tmp_path / "idx"))
    expected = [f"s{i}-r{j}" for i, mk in enumerate(masks) for j in np.flatnonzero(mk)]
    assert idx.ids == expected
    x1 = shards[1][masks[1]]
    hits = idx.search(x1[:50], k=1, nprobe=8)
    assert [h[0].id for h in hits] == expected[masks[0].sum() : masks[0].sum() + 50]


def test_small_collection_gets_exact_flat_index(tmp_path):
    rng = np.random.default_rng(3)
    write_embeddings(str(tmp_path / "emb"), [clustered(100, 8, rng), clustered(50, 8, rng)])
    m = build_index(BuildSettings(str(tmp_path / "emb"), str(tmp_path / "idx"))).to_dict()
    assert m["factory"] == "Flat" and m["nprobe"] is None
    assert m["recall"]["recall_at"] == {"1": 1.0, "10": 1.0, "100": 1.0}  # exact search is its own truth
    idx = LoadedIndex.load(str(tmp_path / "idx"))
    assert idx.ids[100] == "s1-r0"


def test_embeddings_without_manifest_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    write_embeddings(str(tmp_path), [clustered(10, 8, rng)])
    os.remove(tmp_path / "manifest.json")
    with pytest.raises(InputError, match="did not finish"):
        build_index(BuildSettings(str(tmp_path), str(tmp_path / "idx")))
    with pytest.raises(InputError, match="not a finished index"):
        LoadedIndex.load(str(tmp_path / "idx"))


def test_vectors_read_in_batches_equal_the_whole_column(tmp_path):
    rng = np.random.default_rng(2)
    x = clustered(10_000, 16, rng)
    x[[3, 4097, 9999]] = 0  # rows without a vector, in three batches
    pq.write_table(embeddings_table([f"r{i}" for i in range(len(x))], [""] * len(x), x, x, x),
                   tmp_path / "s.parquet", row_group_size=3000)  # fmt: skip
    lean, whole = (
        read_vectors_lean(str(tmp_path / "s.parquet"), "fused_embedding"),
        read_vectors(Shard(str(tmp_path / "s.parquet"), len(x), {}), "fused"),
    )
    assert np.array_equal(lean[0], whole[0]) and np.array_equal(lean[1], whole[1]) and lean[1].sum() == 9997


def test_streaming_build_equals_the_cached_build(emb_dir, tmp_path):
    """Above the memory budget shards are streamed (read per pass); the index is the same."""
    a = build_index(BuildSettings(emb_dir, str(tmp_path / "cached"), seed=5)).to_dict()
    b = build_index(BuildSettings(emb_dir, str(tmp_path / "streamed"), seed=5, cache_bytes=0)).to_dict()
    assert a["recall"] == b["recall"] and a["ntotal"] == b["ntotal"]
    x = np.concatenate([read_vectors(s, "fused")[0] for s in list_shards(emb_dir)])[::50]
    ia, ib = LoadedIndex.load(str(tmp_path / "cached")), LoadedIndex.load(str(tmp_path / "streamed"))
    assert [[h.id for h in r] for r in ia.search(x, 5)] == [[h.id for h in r] for r in ib.search(x, 5)]


def test_an_earlier_template_is_reused_unless_the_vectors_drifted(emb_dir, tmp_path):
    first = build_index(BuildSettings(emb_dir, str(tmp_path / "a"), factory="IVF32,PQ8x4np", seed=0)).to_dict()
    assert first["training"]["mode"] == "trained" and os.path.exists(tmp_path / "a" / "template.faiss")
    assert set(first["training"]["baseline_errors"]) == {"reconstruction", "coarse"}
    ladder = [r["nprobe"] for r in first["recall"]["by_nprobe"]]
    assert ladder[:3] == [1, 2, 4] and set(ladder) <= {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32}

    again = build_index(BuildSettings(emb_dir, str(tmp_path / "b"), seed=0, template=str(tmp_path / "a"))).to_dict()
    assert again["training"]["mode"] == "reused" and again["training"]["reason"].startswith("no drift")
    assert again["factory"] == "IVF32,PQ8x4np"  # the template's, not the default for this size
    same = [open(tmp_path / d / "index.faiss", "rb").read() for d in ("a", "b")]
    assert same[0] == same[1]  # the same template and vectors give the same index, byte for byte

    rng = np.random.default_rng(11)
    moved = str(tmp_path / "moved")
    write_embeddings(moved, [clustered(4500, 32, rng, centres=30)])
    drifted = build_index(BuildSettings(moved, str(tmp_path / "c"), template=str(tmp_path / "a"))).to_dict()
    assert drifted["training"]["mode"] == "trained" and drifted["training"]["reason"].startswith("drifted:")
    kept = build_index(
        BuildSettings(moved, str(tmp_path / "d"), template=str(tmp_path / "a"), retrain="never")
    ).to_dict()
    assert kept["training"]["mode"] == "reused" and kept["training"]["reason"] == "--retrain never"
    forced = build_index(
        BuildSettings(emb_dir, str(tmp_path / "e"), template=str(tmp_path / "a"), retrain="always")
    ).to_dict()
    assert forced["training"]["mode"] == "trained" and forced["training"]["reason"] == "--retrain always"
    other = build_index(
        BuildSettings(emb_dir, str(tmp_path / "f"), factory="IVF16,PQ8x4np", template=str(tmp_path / "a"))
    ).to_dict()
    assert other["training"]["reason"] == "factory changed (IVF32,PQ8x4np -> IVF16,PQ8x4np)"


def test_recall_is_measured_at_each_nprobe_against_exact_search(emb_dir, tmp_path):
    m = build_index(BuildSettings(emb_dir, str(tmp_path / "idx"), factory="IVF32,Flat", nprobe=2)).to_dict()
    curve = {r["nprobe"]: r["recall_at_k"] for r in m["recall"]["by_nprobe"]}
    assert list(curve) == [1, 2, 4, 8, 16, 32] and curve[2] == m["recall"]["recall_at_k"]
    assert curve[32] == 1.0 > curve[1]  # exact codes: probing every list is exact search
    assert all(a <= b for a, b in zip(list(curve.values()), list(curve.values())[1:]))


def test_build_index_leaves_the_allocators_to_the_cli(emb_dir, tmp_path):
    """build_index changes no process-wide setting (Arrow's pool stays the default); the CLI's
    build-index sets the lean allocators before building. Each in a fresh process."""
    import subprocess
    import sys

    probe = (
        "import sys, pyarrow as pa; from index_builder.build import build_index; "
        "from index_builder.settings import BuildSettings; from pipelines.cli import main; "
        "before = pa.default_memory_pool().backend_name; "
        "cfg = BuildSettings(embeddings=sys.argv[1], output=sys.argv[2], factory='Flat'); "
        "main(['build-index', '--embeddings', sys.argv[1], '--output', sys.argv[3], '--factory', 'Flat', '-q']) "
        "if sys.argv[4] == 'cli' else build_index(cfg); "
        "print(before, pa.default_memory_pool().backend_name)"
    )
    seen = {}
    for how in ("library", "cli"):
        out = subprocess.run(
            [sys.executable, "-c", probe, emb_dir, str(tmp_path / "lib"), str(tmp_path / "cli"), how],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        seen[how] = out.stdout.split()[-2:]
    assert seen["library"][0] != "system"  # the pyarrow wheels' default (mimalloc or jemalloc)
    assert seen["library"][1] == seen["library"][0]
    assert seen["cli"][1] == "system"
