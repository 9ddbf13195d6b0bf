"""Canary queries: does the new index still answer them the way the published one did?

Silent breakage (a wrong column, a broken preprocessing step, a corrupt template) keeps every
count right and recall against exact search high, yet changes what users get. The canaries are
encoded once with the model and ranked by both indexes; the gate is the mean share of the
published top-k that the new top-k keeps. A different model changes rankings on purpose, so the
check is skipped then.
"""

from __future__ import annotations

from encoders import storage
from encoders.errors import InputError
from index_builder.search import LoadedIndex
from pipelines.search.searcher import Searcher

QUERY_COLUMNS = ("query", "text", "caption")


def load_queries(path: str) -> list[str]:
    """Queries from a text file (one per line; blank lines and lines starting with # skipped) or a
    Parquet file with a `query` (or `text`, `caption`) column."""
    if not storage.exists(path):
        raise InputError(f"--canary-queries {path} does not exist")
    if path.endswith(".parquet"):
        names = storage.read_schema(path).names
        column = next((c for c in QUERY_COLUMNS if c in names), None)
        if column is None:
            raise InputError(
                f"--canary-queries {path}: no {', '.join(QUERY_COLUMNS)} column; columns are: {', '.join(names)}"
            )
        queries = storage.read_parquet(path, [column]).column(0).to_pylist()
    else:
        fs, p = storage.url_to_fs(path)
        with fs.open(p, "rb") as fh:
            queries = fh.read().decode("utf-8").splitlines()
    queries = [q.strip() for q in queries if q and q.strip() and not q.strip().startswith("#")]
    if not queries:
        raise InputError(f"--canary-queries {path} holds no queries")
    return queries


def canary_overlap(searcher: Searcher, published_index: str, queries: list[str], k: int = 10) -> dict:
    """Mean top-k overlap between the new index (the searcher's) and the published one."""
    vectors = searcher.towers.encode_texts(queries).numpy()
    new = searcher.search(vectors, k)
    old = LoadedIndex.load(published_index).search(vectors, k)
    per_query = []
    for q, a, b in zip(queries, new, old):
        kept = len({h.id for h in a} & {h.id for h in b}) / max(1, min(k, len(b)))
        per_query.append({"query": q, "overlap": round(kept, 4)})
    mean = sum(p["overlap"] for p in per_query) / len(per_query)
    worst = sorted(per_query, key=lambda p: p["overlap"])[:5]
    return {"queries": len(queries), "k": k, "mean_overlap": round(mean, 6), "worst": worst}
