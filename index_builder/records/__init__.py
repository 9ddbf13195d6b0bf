"""The records one command writes and another reads: frozen dataclasses, one `load`/`save` each.

    EmbedManifest  DIR/manifest.json   `embed` writes it last; build-index, search, report, reindex read it
    IndexManifest  IDX/manifest.json   `build-index` writes it last; search, evaluate-index, reindex read it
    Latest         ROOT/LATEST         `reindex` writes it after the gates pass; search reads it for a ROOT

    base.py        Part (a JSON object as a frozen dataclass) and Record (a file: load, save, version)

They live in index_builder because build-index reads the embeddings manifest and index_builder may
not import pipelines; `run.json` of a nightly run is `pipelines.reindex.root.RunRecord`, on the
same base.
"""

from index_builder.records.base import Part, Record
from index_builder.records.latest import INDEX, RUNS, Latest, RunCounts
from index_builder.records.manifests import (
    MANIFEST,
    Counts,
    EmbedManifest,
    EmbedTimings,
    IndexChoice,
    IndexManifest,
    IndexShard,
    IndexTimings,
    Latency,
    ModelSpec,
    PreviousRun,
    Recall,
    RecallPoint,
    Source,
    Training,
)

__all__ = [
    "INDEX", "MANIFEST", "RUNS", "Counts", "EmbedManifest", "EmbedTimings", "IndexChoice", "IndexManifest",
    "IndexShard", "IndexTimings", "Latency", "Latest", "ModelSpec", "Part", "PreviousRun", "Recall", "RecallPoint",
    "Record", "RunCounts", "Source", "Training",
]  # fmt: skip
