"""What `reindex` is asked to do, validated on creation: the embed and build-index settings whole,
plus the nightly job's own (retention, gates, canaries). Importable without torch, faiss or Beam."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from encoders.errors import SettingsError, check_at_least
from index_builder.settings import BuildSettings
from pipelines.embed.settings import EmbedSettings


def _fraction(flag: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise SettingsError(f"{flag} must be between 0 and 1 (got {value})")


@dataclass(frozen=True)
class ReindexSettings:
    root: str  # ROOT: runs/ and LATEST (local or any fsspec URL)
    embed: EmbedSettings  # --input, --model and every embed option; its output is each run's directory
    build: BuildSettings  # every build-index option (--retrain, --factory, ...); paths are set per run
    keep: int = 7  # runs kept under ROOT/runs (never the published one)
    max_reject_rate: float = 0.05  # gate: rejected / rows with status success
    min_recall: float = 0.8  # gate: recall@10 of the index against exact search
    canary_queries: str | None = None  # text file (a query per line) or Parquet with a `query` column
    min_canary_overlap: float = 0.5  # gate: mean top-10 overlap with the published index (same model only)
    report_queries: int = 8  # queries shown with their top results in report.html
    lock_stale_after: float = 900.0  # seconds without a heartbeat before another run takes the lock over

    def __post_init__(self) -> None:
        check_at_least("--keep", self.keep, 1)
        _fraction("--max-reject-rate", self.max_reject_rate)
        _fraction("--min-recall", self.min_recall)
        _fraction("--min-canary-overlap", self.min_canary_overlap)
        check_at_least("--report-queries", self.report_queries, 0)
        check_at_least("--lock-stale-after", self.lock_stale_after, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["embed"] = self.embed.as_dict()
        for name in ("output",):
            d["embed"].pop(name)
        for name in ("embeddings", "output", "template"):
            d["build"].pop(name)
        return d
