"""`evaluate-index` (evaluate_index): re-measure a built index against exact search on queries of its own choosing,
independently of the build (another seed, any vectors of the data), and set the figures beside
the ones its manifest claims. The measuring itself is index_builder.measure and .nprobe, as in
the build."""

from __future__ import annotations

from encoders.errors import InputError
from index_builder.embeddings import list_shards
from index_builder.measure import exact_neighbours, latency, truth_width
from index_builder.nprobe import tune
from index_builder.records import IndexManifest
from index_builder.sampling import read_vectors, sample_training_set
from index_builder.search import open_index
from index_builder.settings import EvaluateIndexSettings


def evaluate_index(
    index_dir: str,
    embeddings: str | None = None,
    queries: int = EvaluateIndexSettings.queries,
    seed: int = EvaluateIndexSettings.seed,
    nprobe: int | None = None,
) -> dict:
    """Recall@1/10/100 of IDX at `nprobe` (default: the manifest's) on `queries` vectors drawn
    (seeded) from the embeddings it was built from (default: the path its manifest records), each
    excluded from its own ground truth; the recall-vs-nprobe table; latency; and the differences
    from the manifest's claims (measured - claimed)."""
    m = IndexManifest.load(index_dir)
    embeddings = embeddings or m.source.path
    shards = list_shards(embeddings)
    index = open_index(index_dir, m)
    x, ids, valid_counts = sample_training_set(shards, m.vector, queries, seed)
    if sum(valid_counts) != index.ntotal:
        raise InputError(
            f"{embeddings} holds {sum(valid_counts)} {m.vector} vectors but {index_dir} indexes {index.ntotal}: "
            "not the embeddings this index was built from; pass --embeddings"
        )
    claimed = m.recall
    k = claimed.k
    gt = exact_neighbours(x, ids, (read_vectors(s, m.vector) for s in shards), truth_width(k, index.ntotal))
    chosen = nprobe if nprobe is not None else m.nprobe
    measured = tune(index, x, ids, gt, k, claimed.target or 0.0, chosen)
    difference = {
        n: round(measured["recall_at"][n] - claimed.recall_at[n], 4)
        for n in measured["recall_at"]
        if n in (claimed.recall_at or {}) and chosen == m.nprobe
    }
    return {
        "index": index_dir,
        "embeddings": embeddings,
        "factory": m.factory,
        "ntotal": int(index.ntotal),
        "queries": int(len(x)),
        "seed": seed,
        "nprobe": measured["nprobe"],
        "recall_at": measured["recall_at"],
        "claimed_recall_at": claimed.recall_at,
        "difference": difference,
        "by_nprobe": measured["by_nprobe"],
        "latency": latency(index, x, k, measured["nprobe"]),
    }
