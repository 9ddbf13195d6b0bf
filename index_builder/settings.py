"""What `build-index` is asked to do, importable without faiss (the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError, check_at_least, check_choice
from index_builder.drift import DEFAULT_THRESHOLD
from index_builder.embeddings import VECTOR_COLUMNS
from index_builder.factory import check_factory

RETRAIN = ("auto", "always", "never")


@dataclass(frozen=True)
class BuildSettings:
    """Everything `build-index` is asked to do, validated on creation (flag names in messages)."""

    embeddings: str  # the output directory of `embed`
    output: str  # IDX
    vector: str = "fused"  # one of VECTOR_COLUMNS
    factory: str | None = None  # None: chosen from the row count and dim
    nprobe: int | None = None  # None: about sqrt(nlist)
    train_size: int | None = None  # None: ~50 vectors per list, >= 20k
    seed: int = 0
    workers: int = 1  # processes adding shards in parallel
    recall_queries: int = 200
    cache_bytes: int = 2 << 30  # shards up to this size are read once and kept in memory
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
        check_at_least("recall_queries", self.recall_queries, 1)
        check_choice("--retrain", self.retrain, RETRAIN)
        if not self.drift_threshold > 1:
            raise SettingsError(f"--drift-threshold must be > 1 (got {self.drift_threshold})")
