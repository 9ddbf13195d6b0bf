"""What `build-index` is asked to do, importable without faiss (the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError, check_at_least, check_choice
from index_builder.choose import MERGE, parse_size
from index_builder.embeddings import VECTOR_COLUMNS
from index_builder.factory import check_factory

RETRAIN = ("auto", "always", "never")
DEFAULT_THRESHOLD = 1.25  # drift: retrain when an error grows by more than 25% (index_builder.drift)


@dataclass(frozen=True)
class BuildSettings:
    """Everything `build-index` is asked to do, validated on creation (flag names in messages)."""

    embeddings: str  # the output directory of `embed`
    output: str  # IDX
    vector: str = "fused"  # one of VECTOR_COLUMNS
    factory: str | None = None  # None: chosen from the row count and dim (and the budget, when given)
    nprobe: int | None = None  # None: the smallest reaching target_recall
    max_bytes_per_vector: float | None = None  # budget: code bytes per vector (SQ8 is d, PQ64x8 64)
    max_memory: str | None = None  # budget: the whole index in RAM, e.g. "4GB", "512MiB"
    target_recall: float = 0.9  # recall@recall_k against exact search that nprobe (and the choice) must reach
    recall_k: int = 10
    train_size: int | None = None  # None: 39 vectors per list, >= 20k (factory.choose_train_size)
    seed: int = 0
    workers: int = 1  # processes adding shards in parallel (a Beam stage when > 1)
    num_index_shards: int = 1  # K independently searchable indexes, split by id hash (index_builder.split)
    merge: str = "auto"  # ram | disk (index.ivfdata beside index.faiss) | auto: disk when RAM would not hold it
    recall_queries: int = 1000  # held-out vectors of the data, each excluded from its own ground truth
    cache_bytes: int = 1 << 30  # when all shards' vectors fit, they are read once and kept in memory
    template: str | None = None  # an earlier IDX whose trained template may be reused instead of training
    retrain: str = "auto"  # with a template: auto (reuse unless the vectors drifted) | always | never
    drift_threshold: float = DEFAULT_THRESHOLD  # auto retrains when an error grows past this many times

    def __post_init__(self) -> None:
        check_choice("--vector", self.vector, VECTOR_COLUMNS)
        if self.factory is not None:
            check_factory(self.factory)
        check_at_least("--nprobe", self.nprobe, 1)
        check_at_least("--train-size", self.train_size, 1)
        check_at_least("--workers", self.workers, 1)
        check_at_least("--num-index-shards", self.num_index_shards, 1)
        check_at_least("--recall-queries", self.recall_queries, 1)
        check_at_least("--recall-k", self.recall_k, 1)
        check_at_least("--max-bytes-per-vector", self.max_bytes_per_vector, 0.5)
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if not 0 < self.target_recall <= 1:
            raise SettingsError(f"--target-recall must be in (0, 1] (got {self.target_recall})")
        if self.factory is not None and self.budgeted:
            raise SettingsError(
                "--factory names the index, --max-bytes-per-vector/--max-memory let the builder choose one: give either"
            )
        check_choice("--retrain", self.retrain, RETRAIN)
        check_choice("--merge", self.merge, MERGE)
        if not self.drift_threshold > 1:
            raise SettingsError(f"--drift-threshold must be > 1 (got {self.drift_threshold})")

    @property
    def budgeted(self) -> bool:
        return self.max_bytes_per_vector is not None or self.max_memory is not None

    @property
    def max_memory_bytes(self) -> int | None:
        return None if self.max_memory is None else parse_size(self.max_memory)
