"""Compare two `fusionindex embed` outputs of the same input: a parity check for a GPU session.

    python -m benchmarks.compare_embeddings A B [--min-cosine 0.999]

Prints, per vector column (image, text, fused), the cosine between the two runs' vectors of each
row (min and median over rows embedded in both) and the largest absolute difference; and the
rows each run embedded and rejected. Exits 1 when the runs embedded different ids (in shard
order) or a column's min cosine is below --min-cosine: two settings that should only change
speed (e.g. `--decode-ahead on` and `stream`) must give the same vectors up to kernel rounding.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from encoders import storage
from index_builder.embeddings import VECTOR_COLUMNS, arrow_to_vectors, list_shards
from index_builder.records import EmbedManifest


def load(out: str) -> tuple[list[str], dict[str, np.ndarray], dict]:
    """(ids, {column: [n, d] vectors}, counts) of an embed output, in shard order."""
    ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {c: [] for c in VECTOR_COLUMNS.values()}
    for shard in list_shards(out):
        table = storage.read_parquet(shard.path, columns=["id", *parts])
        ids += table.column("id").to_pylist()
        for c in parts:
            parts[c].append(arrow_to_vectors(table.column(c))[0])
    counts = EmbedManifest.load(out).counts.to_dict()
    return ids, {c: np.concatenate(v) for c, v in parts.items()}, counts


def compare(a: str, b: str) -> dict:
    """Figures of `a` against `b` (see the module docstring)."""
    ids_a, vec_a, counts_a = load(a)
    ids_b, vec_b, counts_b = load(b)
    out: dict = {"same_ids": ids_a == ids_b, "rows": [len(ids_a), len(ids_b)], "counts": [counts_a, counts_b]}
    if not out["same_ids"]:
        return out
    for name, c in VECTOR_COLUMNS.items():
        x, y = vec_a[c], vec_b[c]
        both = np.any(x != 0, axis=1) & np.any(y != 0, axis=1)  # no text: an all-zero text vector
        nx, ny = np.linalg.norm(x[both], axis=1), np.linalg.norm(y[both], axis=1)
        cos = np.sum(x[both] * y[both], axis=1) / np.maximum(nx * ny, 1e-12)
        out[name] = {
            "rows": int(both.sum()),
            "cosine_min": float(cos.min()) if len(cos) else None,
            "cosine_median": float(np.median(cos)) if len(cos) else None,
            "max_abs_diff": float(np.abs(x - y).max()) if len(x) else 0.0,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="an embed output directory")
    ap.add_argument("b", help="another embed output directory, of the same input")
    ap.add_argument("--min-cosine", type=float, default=0.999)
    args = ap.parse_args(argv)
    result = compare(args.a, args.b)
    print(json.dumps(result, indent=1))
    low = [n for n in VECTOR_COLUMNS if (result.get(n) or {}).get("cosine_min") is not None
           and result[n]["cosine_min"] < args.min_cosine]  # fmt: skip
    if not result["same_ids"] or low:
        print(f"parity FAILED: {'different ids' if not result['same_ids'] else 'cosine below ' + str(args.min_cosine)}"
              f"{' in ' + ', '.join(low) if low else ''}")  # fmt: skip
        return 1
    print("parity ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
