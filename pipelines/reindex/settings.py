"""What `reindex` is asked to do, validated on creation: the embed and build-index settings whole,
plus the nightly job's own (retention, gates, canaries). Importable without torch, faiss or Beam."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from encoders.errors import SettingsError
from encoders.options import between, check_options, flag_of, nested, option
from index_builder.settings import BuildSettings
from pipelines.embed.settings import EmbedSettings


@dataclass(frozen=True)
class ReindexSettings:
    root: str = option(metavar="ROOT", help="runs/ and LATEST live here (local or fsspec URL)")
    config: str | None = option(
        None,
        metavar="FILE.toml",
        help="any of these options as TOML (flags override it; a [beam] table holds Beam options)",
    )  # read by the CLI (pipelines.reindex.config); not part of what a night computes
    keep: int = option(7, at_least=1, help="runs kept under ROOT/runs (never the published one)")
    max_reject_rate: float = option(0.05, check=between(0, 1), help="gate: rejected / rows with status success")
    min_recall: float = option(0.8, check=between(0, 1), help="gate: recall@10 vs exact search")
    canary_queries: str | None = option(
        None, metavar="FILE", help="text file (a query per line) or Parquet with a query column"
    )
    min_canary_overlap: float = option(
        0.5, check=between(0, 1), help="gate: mean top-10 overlap with the published index (same model only)"
    )
    report_queries: int = option(8, at_least=0, help="queries shown with their top results in report.html")
    duplicates: float | None = option(
        None,
        metavar="THRESHOLD",
        check=between(0, 1),
        help="near-duplicate groups at this cosine (e.g. 0.97) in the run's IDX/duplicates.parquet, before publish; "
        "only tonight's rows are searched when the published run's groups are comparable",
    )
    max_duplicate_rate: float | None = option(
        None, check=between(0, 1), help="gate (with --duplicates): indexed items in groups / indexed items"
    )
    lock_stale_after: float = option(
        900.0, at_least=1, metavar="SECONDS", help="take over a lock whose heartbeat is this old"
    )
    # --input, --model and every embed option; its output is each run's directory
    embed: EmbedSettings = nested(skip=("output",), kw_only=True)
    # every build-index option (--retrain, --factory, ...); paths are set per run
    build: BuildSettings = nested(skip=("embeddings", "output", "template"), kw_only=True)

    def __post_init__(self) -> None:
        check_options(self)
        if self.max_duplicate_rate is not None and self.duplicates is None:
            raise SettingsError(
                f"{flag_of(self, 'max_duplicate_rate')} gates the groups {flag_of(self, 'duplicates')} computes: "
                "give both"
            )

    def as_dict(self) -> dict:
        """JSON-ready form, as recorded in run.json (keys in the order run.json has always had)."""
        d = asdict(self)
        d.pop("config")
        d = {"root": d.pop("root"), "embed": self.embed.as_dict(), "build": d.pop("build"), **d}
        for name in ("output",):
            d["embed"].pop(name)
        for name in ("embeddings", "output", "template"):
            d["build"].pop(name)
        return d
