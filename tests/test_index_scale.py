"""Building at scale: the add as a Beam stage (several worker processes, each loading the
template once and writing only inverted lists) and the on-disk merge, against the in-process,
in-RAM build of the same data."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from encoders.errors import SettingsError
from index_builder import faiss_io, mapped_lists
from index_builder.build import build_index
from index_builder.embeddings import list_shards
from index_builder.measure import exact_neighbours, latency, recall_at
from index_builder.parts import add_part, merge_in_ram, merge_on_disk, part_name
from index_builder.remeasure import evaluate_index
from index_builder.search import LoadedIndex
from index_builder.settings import BuildSettings
from pipelines.cli import main
from pipelines.index_add.beam_stage import beam_adder
from tests.test_index import clustered, write_embeddings


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    rng = np.random.default_rng(5)
    root = str(tmp_path_factory.mktemp("scale"))
    write_embeddings(root, [clustered(n, 32, rng) for n in (900, 1100, 1000, 1000)])
    return root


def results(idx: LoadedIndex, x: np.ndarray) -> list[list[str]]:
    return [[h.id for h in hits] for hits in idx.search(x, k=10)]


@pytest.mark.beam
def test_the_beam_add_and_the_disk_merge_give_the_in_process_index(emb, tmp_path):
    cfg = BuildSettings(emb, str(tmp_path / "ram"), factory="IVF32,PQ8x8np", seed=1)
    ram = build_index(cfg).to_dict()
    beam = build_index(BuildSettings(emb, str(tmp_path / "beam"), factory="IVF32,PQ8x8np", seed=1, workers=2),
                       beam_adder([], workers=2)).to_dict()  # fmt: skip
    assert beam["recall"] == ram["recall"] and beam["ntotal"] == 4000
    read = [open(tmp_path / d / name, "rb").read() for d in ("ram", "beam") for name in ("index.faiss", "ids.parquet")]
    assert read[0] == read[2] and read[1] == read[3]  # the same ids and codes, byte for byte
    assert not os.path.exists(tmp_path / "beam" / ".parts")  # parts are removed once merged
    disk = build_index(
        BuildSettings(emb, str(tmp_path / "disk"), factory="IVF32,PQ8x8np", seed=1, merge="disk")
    ).to_dict()
    assert disk["merge"] == "disk" and ram["merge"] == "ram" and os.path.exists(tmp_path / "disk" / "index.ivfdata")
    sizes = [os.path.getsize(tmp_path / d / "index.faiss") for d in ("ram", "disk")]
    assert sizes[0] - sizes[1] >= 0.95 * 4000 * (8 + 8)  # the codes and ids moved to index.ivfdata (less list offsets)
    assert disk["recall"] == ram["recall"] and disk["nprobe"] == ram["nprobe"]
    x = clustered(200, 32, np.random.default_rng(9))
    on_disk = LoadedIndex.load(str(tmp_path / "disk"))
    assert results(on_disk, x) == results(LoadedIndex.load(str(tmp_path / "ram")), x)
    moved = tmp_path / "moved"  # a server loads the pair from wherever it is copied to
    os.rename(tmp_path / "disk", moved)
    assert results(LoadedIndex.load(str(moved)), x) == results(on_disk, x)
    assert evaluate_index(str(moved), queries=200)["ntotal"] == 4000


def _faiss_merge(template: faiss.Index, parts: list[str], ivfdata: str) -> faiss.Index:
    """faiss's own on-disk merge (faiss.contrib.ondisk.merge_ondisk's steps) of the same parts."""
    index = faiss_io.copy(template)
    ivf = faiss.extract_index_ivf(index)
    mapped = [faiss.read_InvertedLists(faiss.FileIOReader(p), faiss.IO_FLAG_MMAP) for p in parts]
    pointers = faiss.InvertedListsPtrVector()
    for il in mapped:
        pointers.push_back(il)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, ivfdata)
    ondisk.merge_from_multiple(pointers.data(), pointers.size(), False, False)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    index.ntotal = ivf.ntotal = ondisk.compute_ntotal()
    return index


@pytest.mark.parametrize("factory", ["IVF32,SQ8", "IVF32,PQ8x8np", "IVF128,Flat"])
def test_the_disk_merge_writes_what_faiss_merge_writes(tmp_path, factory):
    rng = np.random.default_rng(3)
    x = clustered(3000, 32, rng)
    template = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    template.train(x[:2000])
    worker, parts = faiss_io.copy(template), []
    for i, (a, b) in enumerate([(0, 1000), (1000, 1010), (1010, 1010), (1010, 3000)]):  # a sparse part, an empty one
        parts.append(str(tmp_path / part_name(i)))
        add_part(worker, x[a:b], np.arange(a, b)).tofile(parts[-1])
    os.makedirs(tmp_path / "mine")
    os.makedirs(tmp_path / "them")
    ours = merge_on_disk(template, parts, str(tmp_path / "mine" / "index.ivfdata"))
    theirs = _faiss_merge(template, parts, str(tmp_path / "them" / "index.ivfdata"))
    ram = merge_in_ram(template, (np.fromfile(p, np.uint8) for p in parts))
    read = [open(tmp_path / d / "index.ivfdata", "rb").read() for d in ("mine", "them")]
    assert read[0] == read[1] and len(read[0]) == 3000 * (faiss.extract_index_ivf(template).code_size + 8)
    for d, index in (("mine", ours), ("them", theirs)):
        faiss.write_index(index, str(tmp_path / d / "index.faiss"))
    headers = [open(tmp_path / d / "index.faiss", "rb").read() for d in ("mine", "them")]
    assert headers[0].replace(b"/mine/", b"/them/") == headers[1]  # the same lists, offsets, sizes and slots
    lists = [faiss.extract_index_ivf(index).invlists for index in (ours, ram)]
    for j in range(32 if "IVF32" in factory else 128):  # the same ids and codes per list as the in-RAM merge
        n = lists[1].list_size(j)
        assert lists[0].list_size(j) == n
        assert np.array_equal(faiss.rev_swig_ptr(lists[0].get_ids(j), n), faiss.rev_swig_ptr(lists[1].get_ids(j), n))
        size = n * lists[1].code_size
        codes = [faiss.rev_swig_ptr(lists[k].get_codes(j), size) for k in (0, 1)]
        assert np.array_equal(codes[0], codes[1])
    served = faiss.read_index(str(tmp_path / "mine" / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    assert served.ntotal == ram.ntotal == 3000
    for index in (served, ours):
        faiss.extract_index_ivf(index).nprobe = faiss.extract_index_ivf(ram).nprobe = 8
        assert np.array_equal(index.search(x[:100], 10)[1], ram.search(x[:100], 10)[1])


def _mapped_kib(path: str) -> int:
    """KiB of `path` mapped into this process (its pages counted in RSS)."""
    kib, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                kib += int(fields[1])
    return kib


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc")
def test_measuring_recall_on_disk_leaves_no_list_pages_mapped(tmp_path):
    x = clustered(20_000, 32, np.random.default_rng(4))
    template = faiss.index_factory(32, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    template.train(x[:5000])
    part = str(tmp_path / part_name(0))
    add_part(faiss_io.copy(template), x, np.arange(len(x))).tofile(part)
    index = merge_on_disk(template, [part], str(tmp_path / "index.ivfdata"))  # 2.7 MB of lists
    ram = merge_in_ram(template, [np.fromfile(part, np.uint8)])
    queries, ids = x[:300], np.arange(300)
    gt = exact_neighbours(queries, ids, [(x, np.ones(len(x), bool))], 10)
    path = str(tmp_path / "index.ivfdata")
    assert _mapped_kib(path) == 0  # the merge wrote it without mapping it
    index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=64))
    assert _mapped_kib(path) > 2000  # a plain search leaves what it read mapped
    mapped_lists.release_mapped_lists(mapped_lists.mapped_lists(index))
    assert _mapped_kib(path) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mapped_lists, "RELEASE_BYTES", 1_500_000)  # 16 lists of ~42 kB a query: 2 queries a batch
        assert mapped_lists.query_batch(mapped_lists.mapped_lists(index), 16) == 2
        assert recall_at(index, queries, ids, gt, 16) == recall_at(ram, queries, ids, gt, 16)
        assert _mapped_kib(path) == 0
        speed = latency(index, queries, 10, 16)
    assert _mapped_kib(path) == 0 and speed["chunk"] >= 4 and speed["batch_1024_ms"] > 0


@pytest.mark.beam
def test_fast_scan_indexes_merge_in_ram_and_are_refused_on_disk(emb, tmp_path):
    fs = build_index(BuildSettings(emb, str(tmp_path / "fs"), factory="IVF32,PQ16x4fs", workers=2),
                     beam_adder([], workers=2)).to_dict()  # fmt: skip
    one = build_index(BuildSettings(emb, str(tmp_path / "one"), factory="IVF32,PQ16x4fs")).to_dict()
    x = clustered(100, 32, np.random.default_rng(3))
    assert fs["ntotal"] == one["ntotal"] == 4000
    assert results(LoadedIndex.load(str(tmp_path / "fs")), x) == results(LoadedIndex.load(str(tmp_path / "one")), x)
    with pytest.raises(SettingsError, match="cannot keep fast-scan blocks on disk"):
        build_index(BuildSettings(emb, str(tmp_path / "no"), factory="IVF32,PQ16x4fs", merge="disk"))


@pytest.mark.beam
def test_build_index_takes_beam_options_on_the_command_line(emb, tmp_path, capsys):
    out, ref = str(tmp_path / "idx"), str(tmp_path / "ref")
    argv = ["-q", "build-index", "--embeddings", emb, "--factory", "IVF16,SQ8", "--num-index-shards", "2"]
    assert main([*argv, "--output", out, "--runner", "FnApiRunner"]) == 0 and "IVF16,SQ8" in capsys.readouterr().out
    assert main([*argv, "--output", ref]) == 0  # the same shards added in this process
    for k in range(2):
        shard = f"shard-{k:05d}-of-00002/index.faiss"
        assert open(os.path.join(out, shard), "rb").read() == open(os.path.join(ref, shard), "rb").read()
    total = sum(faiss.read_index(os.path.join(out, f"shard-{k:05d}-of-00002/index.faiss")).ntotal for k in range(2))
    assert total == sum(s.num_rows for s in list_shards(emb))


@pytest.mark.parametrize("factory,merge", [("Flat", "ram"), ("IVF32,Flat", "ram"), ("IVF32,PQ8x8np", "disk")])
def test_index_shards_cover_every_id_once_and_search_like_one_index(emb, tmp_path, factory, merge):
    one = build_index(BuildSettings(emb, str(tmp_path / "one"), factory=factory, seed=2, merge=merge)).to_dict()
    three = build_index(
        BuildSettings(emb, str(tmp_path / "three"), factory=factory, seed=2, merge=merge, num_index_shards=3)
    ).to_dict()
    assert [s["path"] for s in three["shards"]] == [f"shard-{k:05d}-of-00003" for k in range(3)]
    assert not os.path.exists(tmp_path / "three" / "index.faiss") and three["ntotal"] == one["ntotal"] == 4000
    held = []
    for s in three["shards"]:  # each shard is a plain faiss index a server loads alone, with global ids
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if merge == "disk" else 0
        index = faiss.read_index(str(tmp_path / "three" / s["path"] / "index.faiss"), flags)
        assert index.ntotal == s["ntotal"] > 0
        if faiss.try_extract_index_ivf(index) is not None:
            faiss.extract_index_ivf(index).nprobe = 32  # every list: all of the shard's ids come back
        _, found = index.search(clustered(400, 32, np.random.default_rng(1)), index.ntotal)
        held.append(set(found[found >= 0].tolist()))
    assert sorted(len(h) for h in held) == sorted(s["ntotal"] for s in three["shards"])
    assert set().union(*held) == set(range(4000)) and sum(map(len, held)) == 4000  # every id once
    x = clustered(200, 32, np.random.default_rng(9))
    a, b = LoadedIndex.load(str(tmp_path / "one")), LoadedIndex.load(str(tmp_path / "three"))
    assert results(b, x) == results(a, x) and three["recall"] == one["recall"]
    if factory == "Flat":
        assert [[round(h.score, 5) for h in r] for r in b.search(x, 10)] == [
            [round(h.score, 5) for h in r] for r in a.search(x, 10)
        ]
