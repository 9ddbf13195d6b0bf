"""DIR/manifest.json of an embeddings directory and IDX/manifest.json of an index directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from encoders.errors import InputError
from index_builder.records.base import Part, Record, optional

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Counts(Part):
    """Rows of an embed run: read = embedded + rejected + skipped; embedded = new + changed + unchanged."""

    read: int = 0
    embedded: int = 0
    rejected: int = 0
    skipped: int = 0
    empty_caption: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    metadata_changed: int = 0  # unchanged rows whose carried columns changed (embed --carry-columns)
    rejects_by_reason: dict = field(default_factory=dict)
    deleted: int | None = optional()  # ids of the previous run with no success row today (with a previous run)


@dataclass(frozen=True)
class ModelSpec(Part):
    spec: str | None = None  # what --model said
    family: str | None = None
    model_type: str | None = None
    fingerprint: str | None = None  # of the weights and preprocessing files


@dataclass(frozen=True)
class PreviousRun(Part):
    """The run an incremental embed compared against; `comparable`: its vectors may be copied."""

    path: str | None = None
    finished_at: str | None = None
    model_fingerprint: str | None = None
    fusion: dict | None = None
    comparable: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class EmbedTimings(Part):
    """Seconds: the run, the engine's part, and summed over workers the units, model loads and calls;
    the stage table (`stages_s`...) when the engine reports metrics (pipelines.embed.timings)."""

    total_s: float | None = None
    pipeline_s: float | None = None
    units_s: float | None = None
    model_load_s: float | None = None
    inference_s: float | None = None
    stages_s: dict | None = optional()
    other_s: float | None = optional()
    decode_ahead_s: dict | None = optional()
    host_us_per_row: float | None = optional()
    unit_thread_host_us_per_row: float | None = optional()


@dataclass(frozen=True)
class EmbedManifest(Record):
    """DIR/manifest.json of an embeddings directory. Vectors made elsewhere may come with a manifest
    that records only `dim`: `model` and `fusion` are then None."""

    FILE: ClassVar[str] = MANIFEST
    KIND: ClassVar[str] = "fusionindex.embeddings"
    VERSION: ClassVar[int] = 2
    WRITTEN_BY: ClassVar[str] = (
        "the embed run did not finish (or this is not an embeddings directory); run `fusionindex embed`"
    )

    kind: str = KIND
    format_version: int = VERSION
    inputs: list | None = None
    columns: dict | None = None
    counts: Counts = field(default_factory=Counts)
    bad_files: list = field(default_factory=list)
    shards: int | None = None
    reused_shards: int | None = None  # None: the engine reported no metrics
    previous: PreviousRun | None = None
    dim: int | None = None
    model: ModelSpec | None = None
    fusion: dict | None = None  # encoders.fusion params
    settings: dict | None = None
    runtime: dict | list | None = None  # one Runtime, or the list when shards were made several ways
    engine: str | None = None
    runner: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    timings: EmbedTimings = field(default_factory=EmbedTimings)

    def model_spec(self, flag: str = "--model") -> str:
        """The model the vectors were embedded with; a usage error when the manifest records none."""
        if self.model is None or not self.model.spec:
            raise InputError(
                f"the embeddings manifest records no model (vectors made elsewhere): pass {flag} with the model "
                "that made them"
            )
        return self.model.spec


@dataclass(frozen=True)
class RecallPoint(Part):
    nprobe: int | None = None
    recall_at_k: float | None = None
    recall_at: dict | None = None  # "1", "10", "100" -> recall


@dataclass(frozen=True)
class Recall(Part):
    """Recall against exact search on held-out queries at the chosen nprobe (index_builder.tune)."""

    queries: int | None = None
    k: int | None = None
    target: float | None = None
    nprobe: int | None = None
    reached: bool = False
    recall_at_k: float | None = None
    recall_at: dict | None = None
    by_nprobe: tuple[RecallPoint, ...] = ()


@dataclass(frozen=True)
class Latency(Part):
    batch_1_ms: float | None = None
    batch_1024_ms: float | None = None
    batch_1024_us_per_query: float | None = None
    chunk: int | None = optional()  # queries per timed chunk when the lists are on disk


@dataclass(frozen=True)
class Training(Part):
    """How the template came to be: trained, or reused from an earlier index (`from`) and why; the
    codec's errors the drift test compares (index_builder.drift)."""

    mode: str | None = None  # trained | reused
    reason: str | None = None
    from_: str | None = optional(key="from")
    factory: str | None = optional()
    errors: dict | None = optional()
    estimated_errors: dict | None = optional()
    baseline_errors: dict | None = optional()
    fresh_rows: int | None = optional()
    copied_rows: int | None = optional()
    baseline_on: str | None = optional()


@dataclass(frozen=True)
class IndexChoice(Part):
    """Which factories were tried within the budget, which skipped, why the kept one, and the
    candidates screened on a subsample (the frontier; a reused template's night's)."""

    budget: dict | None = None
    tried: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    reason: str | None = None
    screened: list = field(default_factory=list)


@dataclass(frozen=True)
class Source(Part):
    path: str | None = None  # the embeddings directory
    manifest: EmbedManifest = field(default_factory=EmbedManifest)


@dataclass(frozen=True)
class IndexTimings(Part):
    """Seconds of a build's steps (the kept candidate's, and all trials together in `trials_s`)."""

    sample_s: float | None = optional()
    drift_s: float | None = optional()
    screen_s: float | None = optional()
    ground_truth_s: float | None = optional()
    train_s: float | None = optional()
    add_merge_s: float | None = optional()
    recall_s: float | None = optional()
    trials_s: float | None = optional()
    latency_s: float | None = optional()
    write_s: float | None = optional()
    total_s: float | None = optional()


@dataclass(frozen=True)
class IndexShard(Part):
    path: str = ""  # "" for IDX itself, else its shard-KKKKK-of-NNNNN directory
    ntotal: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class IndexManifest(Record):
    """IDX/manifest.json: what was built (factory, sizes, nprobe, recall, latency), how (training,
    choice, timings) and from what (`source`: the embeddings directory and its manifest)."""

    FILE: ClassVar[str] = MANIFEST
    KIND: ClassVar[str] = "fusionindex.index"
    VERSION: ClassVar[int] = 2
    WRITTEN_BY: ClassVar[str] = "not a finished index; run `fusionindex build-index`"

    kind: str = KIND
    format_version: int = VERSION
    factory: str | None = None
    metric: str = "inner_product"
    vector: str = "fused"
    dim: int | None = None
    ntotal: int = 0
    skipped_null_vectors: int = 0
    nprobe: int | None = None
    bytes_per_vector: float | None = None
    merge: str = "ram"  # disk: index.faiss + index.ivfdata
    train_size: int | None = None
    seed: int | None = None
    training: Training = field(default_factory=Training)
    choice: IndexChoice = field(default_factory=IndexChoice)
    recall: Recall = field(default_factory=Recall)
    latency: Latency | None = None
    gpu_training: bool = False
    source: Source = field(default_factory=Source)
    started_at: str | None = None
    finished_at: str | None = None
    timings: IndexTimings = field(default_factory=IndexTimings)
    shards: tuple[IndexShard, ...] = ()
    memory_bytes: int | None = None
