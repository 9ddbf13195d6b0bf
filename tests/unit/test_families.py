"""Every family the budget can choose keeps what the nightly job relies on: added in parts and
merged (in RAM; on disk where faiss allows) it equals one in-process build, and the drift
measures see a new distribution (real faiss, tiny data)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_builder import faiss_io
from index_builder.drift import codec_errors, drift
from index_builder.parts import add_part, merge_in_ram, merge_on_disk

FAMILIES = ["IVF8,RaBitQ", "IVF8,RaBitQ3", "IVF8,RaBitQfs", "IVF8,RaBitQfs2", "IVF8,SQ6", "IVF8,SQbf16",
            "IVF8,PQ8x6np", "OPQ8_24,IVF8,PQ8x8np", "IVF8,PQ16x4fs", "PCA24,IVF8,RaBitQ",
            "PCA16,IVF8,RaBitQ3"]  # fmt: skip


def clusters(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    old, new = rng.standard_normal((20, 32)), rng.standard_normal((20, 32))
    return clusters(3000, old, rng), clusters(1000, old, rng), clusters(1000, new, rng)


def _search(index: faiss.Index, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    faiss.extract_index_ivf(index).nprobe = 4
    return index.search(q, 10)


@pytest.mark.parametrize("factory", FAMILIES)
def test_parts_merged_equal_one_build_and_drift_is_seen(factory, data, tmp_path):
    x, same, moved = data
    template = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    template.train(x)
    whole = faiss_io.copy(template)
    whole.add_with_ids(x, np.arange(len(x)))
    worker = faiss_io.copy(template)
    parts = [add_part(worker, x[i : i + 1000], np.arange(i, i + 1000)) for i in range(0, len(x), 1000)]
    expected = _search(whole, same[:100])
    merged = merge_in_ram(template, parts)
    assert merged.ntotal == len(x) and all(np.array_equal(a, b) for a, b in zip(_search(merged, same[:100]), expected))
    ivf = faiss.downcast_index(faiss.extract_index_ivf(template))
    if isinstance(ivf, faiss.IndexIVFFastScan):
        with pytest.raises(ValueError, match="cannot be merged on disk"):
            merge_on_disk(template, [], str(tmp_path / "index.ivfdata"))
    else:
        paths = []
        for i, part in enumerate(parts):
            paths.append(str(tmp_path / f"{i}.ivl"))
            part.tofile(paths[-1])
        on_disk = merge_on_disk(template, paths, str(tmp_path / "index.ivfdata"))
        assert all(np.array_equal(a, b) for a, b in zip(_search(on_disk, same[:100]), expected))
    baseline = codec_errors(template, x[:1000])
    assert not drift(baseline, codec_errors(template, same))[0]
    assert drift(baseline, codec_errors(template, moved))[0]
