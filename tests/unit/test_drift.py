"""The drift test on real faiss templates and synthetic vectors (no runner, no model)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_builder.drift import codec_errors, drift


def clusters(n, d, rng, centres):
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory", ["IVF16,PQ4x4np", "OPQ4,IVF16,PQ4x4np", "IVF16,Flat"])
def test_same_distribution_does_not_drift_and_a_new_one_does(factory):
    rng = np.random.default_rng(0)
    old, new = rng.standard_normal((20, 16)), rng.standard_normal((20, 16))
    template = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    template.train(clusters(3000, 16, rng, old))
    baseline = codec_errors(template, clusters(1000, 16, rng, old))
    same, why_same = drift(baseline, codec_errors(template, clusters(1000, 16, rng, old)))
    moved, why_moved = drift(baseline, codec_errors(template, clusters(1000, 16, rng, new)))
    assert not same, why_same
    assert moved and "retrain above 1.25x" in why_moved, why_moved


def test_exact_codes_have_nothing_to_compare():
    assert drift({"reconstruction": 0.0}, {"reconstruction": 0.0}) == (False, "exact codes: nothing to drift")
    assert drift({"reconstruction": 0.0, "coarse": 1.0}, {"reconstruction": 0.0, "coarse": 1.3})[0]


def test_the_index_estimate_weighs_computed_rows_by_their_share_and_accumulates():
    from index_builder.drift import blend

    baseline = {"reconstruction": 1.0, "coarse": 2.0}
    night = blend(baseline, {"reconstruction": 3.0, "coarse": 2.0}, copied_rows=98, fresh_rows=2)
    assert night == {"reconstruction": 1.04, "coarse": 2.0}
    assert not drift(baseline, night)[0]  # 2% unusual rows do not retrain the template
    estimate = baseline
    for _ in range(12):  # the same 2% a night, night after night: the shift accumulates
        estimate = blend(estimate, {"reconstruction": 3.0, "coarse": 2.0}, copied_rows=98, fresh_rows=2)
    assert drift(baseline, estimate)[0] and round(estimate["reconstruction"], 3) == 1.431  # 3 - 2 * 0.98**12
    assert drift(baseline, blend(baseline, {"reconstruction": 3.0, "coarse": 2.0}, 70, 30))[0]  # a large share at once
