"""What `build-index` is asked to do, importable without faiss (the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError
from encoders.options import above, check_options, flag_of, option
from index_builder.choose import MERGE, parse_size
from index_builder.embeddings import VECTOR_COLUMNS
from index_builder.factory import check_factory

RETRAIN = ("auto", "always", "never")
DEFAULT_THRESHOLD = 1.25  # drift: retrain when an error grows by more than 25% (index_builder.drift)


@dataclass(frozen=True)
class BuildSettings:
    """Everything `build-index` is asked to do, validated on creation (flag names in messages)."""

    embeddings: str = option(metavar="DIR", help="output directory of `embed`")
    output: str = option(metavar="IDX", help="the index directory to write")
    vector: str = option("fused", choices=tuple(VECTOR_COLUMNS), help="which embedding column to index")
    factory: str | None = option(None, help="faiss index_factory string (default: chosen from row count and dim)")
    nprobe: int | None = option(None, at_least=1, help="default: the smallest reaching --target-recall")
    max_bytes_per_vector: float | None = option(
        None,
        at_least=0.5,
        metavar="B",
        help="budget: bytes each vector costs in the lists apart from its id (SQ8: dim; RaBitQ: dim/8 + 8); "
        "the builder screens every family's largest code within it and builds the most accurate",
    )
    max_memory: str | None = option(
        None, metavar="SIZE", help="budget: the whole index in RAM, e.g. 4GB or 512MiB; the builder picks the index"
    )
    target_recall: float = option(
        0.9,
        metavar="R",
        help="recall@k against exact search that nprobe must reach (a budget keeps the most accurate index either way)",
    )
    recall_k: int = option(10, at_least=1, help="k of --target-recall")
    train_size: int | None = option(
        None, at_least=1, help="training sample size (default: 39 per list, >= 20k)"
    )  # factory.choose_train_size
    seed: int = option(0, help="seed of the training sample and the held-out queries")
    workers: int = option(
        1,
        at_least=1,
        help="local processes adding shards in parallel, as a Beam stage; Beam options such as --runner run that "
        "stage elsewhere",
    )
    num_index_shards: int = option(
        1,
        at_least=1,
        metavar="K",
        help="K independently searchable indexes split by id hash, for serving on K machines",
    )  # index_builder.split
    merge: str = option(
        "auto",
        choices=MERGE,
        help="where the inverted lists are merged: ram, disk (index.ivfdata beside index.faiss, memory-mapped "
        "when loaded) or auto: disk when the index would take more than half the free memory",
    )
    recall_queries: int = option(
        1000, at_least=1, help="held-out vectors of the data used as queries to measure recall"
    )  # each excluded from its own ground truth
    cache_bytes: int = 1 << 30  # when all shards' vectors fit, they are read once and kept in memory
    template: str | None = option(
        None, metavar="IDX", help="an earlier index whose trained template to reuse (see --retrain)"
    )
    retrain: str = option(
        "auto", choices=RETRAIN, help="with an earlier template: auto (reuse unless the vectors drifted), always, never"
    )
    drift_threshold: float = option(
        DEFAULT_THRESHOLD,
        check=above(1),
        help="auto retrains when the codec or coarse error grows past this many times",
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.factory is not None:
            check_factory(self.factory)
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if not 0 < self.target_recall <= 1:
            raise SettingsError(f"{flag_of(self, 'target_recall')} must be in (0, 1] (got {self.target_recall})")
        if self.factory is not None and self.budgeted:
            raise SettingsError(
                f"{flag_of(self, 'factory')} names the index, {flag_of(self, 'max_bytes_per_vector')}/"
                f"{flag_of(self, 'max_memory')} let the builder choose one: give either"
            )

    @property
    def budgeted(self) -> bool:
        return self.max_bytes_per_vector is not None or self.max_memory is not None

    @property
    def max_memory_bytes(self) -> int | None:
        return None if self.max_memory is None else parse_size(self.max_memory)


@dataclass(frozen=True)
class EvaluateIndexSettings:
    """`evaluate-index`: re-measure a built index against exact search (index_builder.remeasure)."""

    index: str = option(metavar="IDX", help="an index directory, or a reindex ROOT (its LATEST)")
    embeddings: str | None = option(None, metavar="DIR", help="default: the directory its manifest records")
    queries: int = option(1000, at_least=1, help="vectors of the data used as queries")
    seed: int = option(12345, help="query sample seed (not the build's)")
    nprobe: int | None = option(None, at_least=1, help="default: the index's own")
    json: str | None = option(None, metavar="FILE", help="also write the figures as JSON")

    def __post_init__(self) -> None:
        check_options(self)
