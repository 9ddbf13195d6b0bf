"""Has the data drifted away from a trained index template? Pure functions over faiss codecs.

Two measures on a sample of vectors, each compared with its value on held-out vectors when the
template was trained:
- `reconstruction`: mean squared error of the index's own codec (`sa_encode` then `sa_decode`:
  the coarse list plus PQ/SQ codes; 0 for exact codes);
- `coarse`: mean squared distance to the nearest coarse centroid (IVF indexes only).
A reused template stays good while the index's errors stay near their training-time values.
Each night only the vectors computed that night can be measured fairly (copied ones may have
been training points, which a codec nearly memorises), so the index's error is an estimate
carried from night to night: copied rows keep the previous night's estimate, computed rows bring
their measured error, weighted by row counts (`blend`). A handful of unusual new rows does not
retrain a template; the same shift accumulated over many nights, or arriving at once in a large
share of the catalogue, does, once the estimate grows past `threshold` times the baseline.
"""

from __future__ import annotations

import faiss
import numpy as np

from index_builder.settings import DEFAULT_THRESHOLD

TINY = 1e-12  # errors below this (exact codes) are not compared


def _transformed(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """`x` through the index's pre-transforms (OPQ, PCA), as its IVF sees it."""
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        for i in range(top.chain.size()):
            x = top.chain.at(i).apply(x)
    return x


def codec_errors(index: faiss.Index, x: np.ndarray) -> dict[str, float]:
    """{"reconstruction", "coarse"} mean squared errors of a trained `index` on `x` [n, d]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = {"reconstruction": float(((x - index.sa_decode(index.sa_encode(x))) ** 2).sum(1).mean())}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        xt = _transformed(index, x)
        _, assign = ivf.quantizer.search(xt, 1)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        out["coarse"] = float(((xt - centroids[assign[:, 0]]) ** 2).sum(1).mean())
    return out


def blend(previous: dict[str, float], fresh: dict[str, float], copied_rows: int, fresh_rows: int) -> dict[str, float]:
    """The index's estimated errors: copied rows keep `previous`, computed rows bring `fresh`."""
    total = copied_rows + fresh_rows
    return {k: (copied_rows * previous[k] + fresh_rows * fresh[k]) / total for k in fresh if k in previous}


def drift(baseline: dict[str, float], now: dict[str, float], threshold: float = DEFAULT_THRESHOLD) -> tuple[bool, str]:
    """(drifted, why): the measure that grew most relative to its baseline, against `threshold`."""
    ratios = {k: now[k] / baseline[k] for k in baseline if k in now and baseline[k] > TINY}
    if not ratios:
        return False, "exact codes: nothing to drift"
    name = max(ratios, key=ratios.get)
    why = (
        f"{name} error {now[name]:.4g} vs {baseline[name]:.4g} at training "
        f"({ratios[name]:.2f}x; retrain above {threshold}x)"
    )
    return ratios[name] > threshold, why
