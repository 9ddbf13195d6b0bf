"""IDX/duplicates.parquet from built indexes (real faiss, real shards; synthetic vectors with known answers)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from encoders import storage
from encoders.errors import InputError, SettingsError
from index_builder.build import build_index
from index_builder.embeddings import embeddings_table, shard_name
from index_builder.index_duplicates import DUPLICATES_FILE, collapse, read_groups, write_duplicates
from index_builder.search import Hit
from index_builder.settings import BuildSettings
from tests.unit.test_duplicates import as_groups, at_cosine, unit

D = 32


def catalogue(n=600, seed=0):
    """Rows with known duplicates: r0001 ~ c1 (0.99), r0002 == e2 (same bytes), r0003 ~ t3 (text only:
    the same caption, an unrelated image), r0004 ~ b4 (0.95: below)."""
    rng = np.random.default_rng(seed)
    ids = [f"r{i:04d}" for i in range(n)]
    image, text = unit(rng.standard_normal((n, D))), unit(rng.standard_normal((n, D)))
    captions = [f"caption {i}" for i in range(n)]
    hashes = [bytes([i % 251, i // 251]) * 8 for i in range(n)]
    other = unit(rng.standard_normal((3, D)))
    rows = {"c1": (at_cosine(image[1], 0.99, rng), other[0], "caption 1b", b"c" * 16),
            "e2": (image[2], text[2], captions[2], hashes[2]),
            "t3": (other[1], text[3], captions[3], b"t" * 16),
            "b4": (at_cosine(image[4], 0.95, rng), other[2], "other", b"b" * 16)}  # fmt: skip
    for name, (img, txt, cap, h) in rows.items():
        ids.append(name)
        image, text = np.vstack([image, img]), np.vstack([text, txt])
        captions.append(cap)
        hashes.append(h)
    return ids, image.astype(np.float32), text.astype(np.float32), captions, hashes


def write_shards(root, ids, image, text, captions, hashes, copied=None, shards=2):
    fused = unit(image + text)
    bounds = np.linspace(0, len(ids), shards + 1).astype(int)
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        cp = None if copied is None else list(copied[a:b])
        table = embeddings_table(ids[a:b], captions[a:b], image[a:b], text[a:b], fused[a:b], hashes[a:b], cp)
        os.makedirs(os.path.join(root, "embeddings"), exist_ok=True)
        pq.write_table(table, os.path.join(root, "embeddings", shard_name(s, shards)))
    manifest = {"dim": D, "model": {"spec": "x", "fingerprint": "y"}, "fusion": {}}
    storage.write_json(os.path.join(root, "manifest.json"), manifest)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dup"))
    write_shards(f"{root}/emb", *catalogue())
    build_index(BuildSettings(f"{root}/emb", f"{root}/idx", vector="image", factory="IVF8,Flat", nprobe=8))
    return root


def test_the_index_holding_the_vector_is_searched_and_the_file_is_written(built):
    counts = write_duplicates(f"{built}/idx", 0.97)
    assert counts["search"] == "the index's 8 lists, nprobe 8" and counts["vector"] == "image"
    assert not counts["incremental"]
    table = pq.read_table(f"{built}/idx/{DUPLICATES_FILE}")
    assert as_groups(table) == {"c1": {"c1", "r0001"}, "e2": {"e2", "r0002"}}
    assert str(table.schema).startswith("id: string\ngroup_id: string\nsimilarity: float")
    assert read_groups(f"{built}/idx") == {"c1": "c1", "r0001": "c1", "e2": "e2", "r0002": "e2"}


def test_another_vector_gets_a_structure_of_its_own_and_its_exact_keys(built):
    text = write_duplicates(f"{built}/idx", 0.97, vector="text")
    assert text["search"] == "lists built for the column"
    table = pq.read_table(f"{built}/idx/{DUPLICATES_FILE}")
    assert as_groups(table) == {"e2": {"e2", "r0002"}, "r0003": {"r0003", "t3"}}  # same caption, same text vector
    fused = write_duplicates(f"{built}/idx", 0.97, vector="fused")
    assert as_groups(pq.read_table(f"{built}/idx/{DUPLICATES_FILE}")) == {"e2": {"e2", "r0002"}}
    assert fused["searched"] == 603  # e2 shares r0002's bytes and caption: not searched


def test_a_compressed_index_is_confirmed_on_the_stored_vectors(built, tmp_path):
    build_index(BuildSettings(f"{built}/emb", str(tmp_path / "pq"), vector="image", factory="IVF8,PQ8x4np", nprobe=8))
    counts = write_duplicates(str(tmp_path / "pq"), 0.97)
    assert counts["search"] == "the index's 8 lists, nprobe 8"
    table = pq.read_table(tmp_path / "pq" / DUPLICATES_FILE)
    assert as_groups(table) == {"c1": {"c1", "r0001"}, "e2": {"e2", "r0002"}}
    assert min(table.column("similarity").to_pylist()) >= 0.97


def test_a_night_searches_only_its_fresh_rows_and_equals_a_full_pass(built, tmp_path):
    write_duplicates(f"{built}/idx", 0.97)
    ids, image, text, captions, hashes = catalogue()
    rng = np.random.default_rng(9)
    gone = ids.index("c1")  # deleted: r0001's group disappears
    keep = [i for i in range(len(ids)) if i != gone]
    ids, image, text = [ids[i] for i in keep] + ["n9"], image[keep], text[keep]
    captions, hashes = [captions[i] for i in keep] + ["new"], [hashes[i] for i in keep] + [b"n" * 16]
    image, text = np.vstack([image, at_cosine(image[9], 0.985, rng)]), np.vstack([text, text[0]])
    copied = [True] * (len(ids) - 1) + [False]
    night = write_shards(str(tmp_path / "emb"), ids, image, text, captions, hashes, copied)
    build_index(BuildSettings(night, str(tmp_path / "idx"), vector="image", factory="IVF8,Flat", nprobe=8))
    counts = write_duplicates(str(tmp_path / "idx"), 0.97, previous=f"{built}/idx")
    assert counts["incremental"] and counts["searched"] == 2  # n9, and r0001 (its group lost c1)
    inc = pq.read_table(tmp_path / "idx" / DUPLICATES_FILE)
    assert as_groups(inc) == {"e2": {"e2", "r0002"}, "n9": {"n9", "r0009"}}
    full = write_duplicates(str(tmp_path / "idx"), 0.97)
    assert not full["incremental"] and as_groups(pq.read_table(tmp_path / "idx" / DUPLICATES_FILE)) == as_groups(inc)
    other = write_duplicates(str(tmp_path / "idx"), 0.98, previous=f"{built}/idx")
    assert not other["incremental"]  # the previous groups used another threshold


def test_collapse_keeps_the_best_hit_of_each_group():
    hits = [Hit(1, "a", 0.9, None), Hit(2, "b", 0.8, None), Hit(3, "c", 0.7, None), Hit(4, "d", 0.6, None)]
    out = collapse(hits, {"a": "a", "b": "a", "c": "c", "d": "c"}, k=5)
    assert [(h.rank, h.id) for h in out] == [(1, "a"), (2, "c")]
    assert [h.id for h in collapse(hits, {}, k=3)] == ["a", "b", "c"]


def test_bad_requests_say_what_to_do(built, tmp_path):
    with pytest.raises(SettingsError, match="--threshold"):
        write_duplicates(f"{built}/idx", 1.5)
    with pytest.raises(InputError, match="build-index"):
        write_duplicates(str(tmp_path), 0.97)
    with pytest.raises(InputError, match="fusionindex duplicates"):
        read_groups(str(tmp_path))


def test_the_benchmark_finds_every_planted_copy_at_a_small_size(tmp_path, capsys):
    from benchmarks.duplicates import main

    out = tmp_path / "r.json"
    assert main(["--n", "30000", "--dim", "32", "--output", str(out)]) == 0  # exit 1 when a planted answer is missed
    r = json.loads(out.read_text())
    assert r["quality"]["ok"] and r["night"]["same_groups_as_full"] and r["night"]["searched"] == 300
    assert r["full_pass"]["cpu_s"] > 0 and "min_similarity" in capsys.readouterr().out
