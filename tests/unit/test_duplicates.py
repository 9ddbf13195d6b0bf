"""Near-duplicate groups on synthetic vectors with known answers (real faiss, no files)."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pytest

from index_builder.duplicates import components, exact_keys, find_groups
from index_builder.pair_search import Knn, build_lists, index_lists

D = 64
T = 0.97


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def at_cosine(x: np.ndarray, cos: float, rng) -> np.ndarray:
    """A unit vector at exactly `cos` to the unit vector x (x rotated towards a random orthogonal u)."""
    u = rng.standard_normal(x.shape)
    u = unit(u - (u @ x) * x)
    return unit(cos * x + np.sqrt(1 - cos * cos) * u)


def as_groups(table: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i, g in zip(table.column("id").to_pylist(), table.column("group_id").to_pylist()):
        out.setdefault(g, set()).add(i)
    return out


@pytest.fixture
def world():
    """400 random rows (natural cosines well below 0.8) + planted rows appended by each test."""
    rng = np.random.default_rng(0)
    return rng, [f"r{i:04d}" for i in range(400)], list(unit(rng.standard_normal((400, D))))


def test_planted_copies_group_and_pairs_below_the_threshold_do_not(world):
    rng, ids, vecs = world
    for j, cos in enumerate([0.99, 0.9705, 0.9695, 0.999]):
        ids.append(f"c{j}")
        vecs.append(at_cosine(vecs[j], cos, rng))
    table, counts = find_groups(ids, np.stack(vecs), T)
    assert as_groups(table) == {"c0": {"c0", "r0000"}, "c1": {"c1", "r0001"}, "c3": {"c3", "r0003"}}
    sim = dict(zip(table.column("id").to_pylist(), table.column("similarity").to_pylist()))
    assert sim["c1"] == sim["r0001"] == pytest.approx(0.9705, abs=1e-5)
    assert table.schema.field("similarity").type == pa.float32()
    assert min(sim.values()) >= T and counts == {"groups": 3, "rows_in_groups": 6, "searched": 404, "saturated": 0}


def test_a_chain_is_one_group_though_its_ends_are_below_the_threshold(world):
    rng, ids, vecs = world
    a = vecs[10]
    b = at_cosine(a, 0.98, rng)
    c = at_cosine(b, 0.98, rng)
    while float(a @ c) >= T:  # make sure the ends are not a pair themselves
        c = at_cosine(b, 0.98, rng)
    ids += ["b", "c"]
    vecs += [b, c]
    table, _ = find_groups(ids, np.stack(vecs), T)
    assert as_groups(table) == {"b": {"r0010", "b", "c"}}  # group_id: the smallest id
    sim = dict(zip(table.column("id").to_pylist(), table.column("similarity").to_pylist()))
    assert sim["c"] == pytest.approx(0.98, abs=1e-5) and sim["r0010"] == pytest.approx(0.98, abs=1e-5)


def test_exact_keys_group_without_a_search_and_only_one_copy_is_searched(world):
    rng, ids, vecs = world
    ids += ["same1", "same2", "same3"]
    vecs += [vecs[5], vecs[5], vecs[5]]
    hashes = [bytes([1 + i % 255, 1 + i // 255]) * 8 for i in range(400)] + [bytes(16)] * 3
    hashes[5] = bytes(16)
    hashes[6] = None  # no key: searched, grouped only by its vector
    keys = exact_keys(pa.array(hashes, pa.binary(16)))
    assert keys[6] == -1 and len(set(keys[[5, 400, 401, 402]])) == 1
    table, counts = find_groups(ids, np.stack(vecs), T, keys=keys)
    assert as_groups(table) == {"r0005": {"r0005", "same1", "same2", "same3"}}
    assert counts["searched"] == 400  # the three copies share row 5's search
    assert table.column("similarity").to_pylist() == [pytest.approx(1.0, abs=1e-6)] * 4


def test_fused_keys_need_the_same_bytes_and_the_same_caption():
    hashes = pa.array([b"a" * 16, b"a" * 16, b"a" * 16, b"b" * 16, None], pa.binary(16))
    captions = pa.array(["x", "x", None, None, "x"])
    keys = exact_keys(hashes, captions)
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3 and keys[4] == -1


def flat(x: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def test_a_cluster_larger_than_k_is_one_group_and_saturation_is_counted(world):
    rng, ids, vecs = world
    centre = vecs[20]
    for j in range(60):
        ids.append(f"k{j:02d}")
        vecs.append(at_cosine(centre, 0.995, rng))
    x = np.stack(vecs)
    cluster = {f"k{j:02d}" for j in range(60)} | {"r0020"}
    joined, counts = find_groups(ids, x, T)  # the join compares every pair of a list: no k
    assert as_groups(joined)["k00"] == cluster and counts["saturated"] == 0
    grown, counts = find_groups(ids, x, T, search=Knn(flat(x), k=4, max_k=64))
    assert as_groups(grown)["k00"] == cluster and counts["saturated"] == 0
    capped, counts = find_groups(ids, x, T, search=Knn(flat(x), k=4, max_k=16))
    assert as_groups(capped)["k00"] == cluster  # chained through the 16 nearest of each
    assert counts["saturated"] == 61  # every member has 60 others above the threshold


@pytest.fixture(scope="module")
def compressed():
    """5,000 random rows, 50 planted copies at 0.98, and an IVF-PQ index over them whose scores are rough."""
    rng = np.random.default_rng(1)
    n = 5000
    x = unit(rng.standard_normal((n, D)))
    for j in range(50):
        x[n - 50 + j] = at_cosine(x[j], 0.98, rng)
    index = faiss.index_factory(D, "IVF32,PQ8x4np", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    scores = index.search(x[:50], 2, params=faiss.SearchParametersIVF(nprobe=8))[0]
    assert (np.abs(scores - 0.98) > 0.03).any()  # the codes' scores are too rough to filter on
    planted = {frozenset({f"r{j}", f"r{n - 50 + j}"}) for j in range(50)}
    return [f"r{i}" for i in range(n)], x, index, planted


def test_an_ivf_index_is_joined_over_its_own_lists_on_the_stored_vectors(compressed):
    ids, x, index, planted = compressed
    lists = index_lists(index, nprobe=8)
    assert lists.nlist == 32 and lists.nprobe == 8 and sorted(lists.rows.tolist()) == list(range(len(ids)))
    table, _ = find_groups(ids, x, T, search=lists)
    assert {frozenset(g) for g in as_groups(table).values()} == planted


def test_a_knn_search_of_compressed_codes_is_confirmed_on_the_stored_vectors(compressed):
    ids, x, index, planted = compressed
    knn = Knn(index, faiss.SearchParametersIVF(nprobe=8), exact_scores=False)
    table, _ = find_groups(ids, x, T, search=knn)
    assert {frozenset(g) for g in as_groups(table).values()} == planted
    assert min(table.column("similarity").to_pylist()) >= T


def test_a_pca_index_probes_its_lists_in_its_reduced_space(compressed):
    ids, x, _, planted = compressed
    index = faiss.index_factory(D, "PCA32,IVF32,PQ8x4np", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    table, _ = find_groups(ids, x, T, search=index_lists(index, nprobe=8))
    assert {frozenset(g) for g in as_groups(table).values()} == planted


def test_built_lists_are_ivf_above_the_flat_limit_and_find_copies():
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((3000, D)))
    x[-1] = at_cosine(x[0], 0.975, rng)
    lists = build_lists(x, flat_below=1000)
    assert lists.nlist == int(2 * np.sqrt(3000)) and lists.offsets[-1] == 3000 and lists.known.shape == (3000, 8)
    table, _ = find_groups([str(i) for i in range(3000)], x, T, search=lists)
    assert as_groups(table) == {"0": {"0", "2999"}}
    assert index_lists(flat(x), None) is None  # no lists: searched k-NN instead


def test_components_is_union_find():
    labels = components(7, np.array([4, 1, 6, 2]), np.array([2, 0, 5, 4]))
    assert labels.tolist() == [0, 0, 2, 3, 2, 5, 5]


def full_and_incremental(ids, x, fresh, previous):
    full, _ = find_groups(ids, x, T)
    inc, counts = find_groups(ids, x, T, previous=previous, fresh=fresh)
    return full.sort_by("id"), inc.sort_by("id"), counts


def test_incremental_equals_a_full_pass_and_searches_only_what_changed(world):
    rng, ids, vecs = world
    a = vecs[30]
    b = at_cosine(a, 0.98, rng)
    c = at_cosine(b, 0.98, rng)
    while float(a @ c) >= T:
        c = at_cosine(b, 0.98, rng)
    p = unit(rng.standard_normal(D))
    ids += ["b", "c", "p", "q"]  # chain r0030-b-c; pair p-q; r0040 will gain a new copy
    vecs += [b, c, p, at_cosine(p, 0.99, rng)]
    yesterday, _ = find_groups(ids, np.stack(vecs), T)
    assert len(as_groups(yesterday)) == 2
    # tonight: the chain's middle row b is deleted, q changes to an unrelated vector, a copy of r0040 arrives
    keep = [i for i, name in enumerate(ids) if name != "b"]
    ids2 = [ids[i] for i in keep] + ["new40"]
    vecs2 = [vecs[i] for i in keep] + [at_cosine(vecs[40], 0.985, rng)]
    vecs2[ids2.index("q")] = unit(rng.standard_normal(D))
    fresh = np.array([name in ("q", "new40") for name in ids2])
    full, inc, counts = full_and_incremental(ids2, np.stack(vecs2), fresh, yesterday)
    assert inc.equals(full)
    assert as_groups(inc) == {"new40": {"new40", "r0040"}}
    assert counts["searched"] == 5  # q, new40 and the rest of the broken groups (r0030, c; p)


def test_incremental_keeps_intact_groups_and_adds_a_fresh_row_to_them(world):
    rng, ids, vecs = world
    ids += ["p", "q"]
    vecs += [at_cosine(vecs[60], 0.99, rng), at_cosine(vecs[70], 0.99, rng)]
    yesterday, _ = find_groups(ids, np.stack(vecs), T)
    ids2, vecs2 = ids + ["p2"], vecs + [at_cosine(vecs[60], 0.992, rng)]
    fresh = np.zeros(len(ids2), bool)
    fresh[-1] = True
    full, inc, counts = full_and_incremental(ids2, np.stack(vecs2), fresh, yesterday)
    assert inc.column("id").equals(full.column("id")) and inc.column("group_id").equals(full.column("group_id"))
    np.testing.assert_allclose(inc.column("similarity").to_numpy(), full.column("similarity").to_numpy(), atol=1e-6)
    assert counts["searched"] == 1 and as_groups(inc)["p"] == {"p", "p2", "r0060"}
