"""The seam between the embed driver (run.py) and the engines that run its work units.

    make_engine(settings, beam_args)  -> BeamEngine (beam.py) | SparkEngine (spark.py)
    Engine.run(EngineWork)            -> EngineRun(EngineMetrics | None, runner)

The driver plans the input, keys and prepares the output, and writes the manifest; an engine
only runs the id join and the units (UnitWorker) on its workers and reports what they measured
as an `EngineMetrics`: one typed set of figures whatever the engine (Beam's counters and the
Spark tasks' reports are each summed into it by their own engine). Each engine imports only
its own library: this module imports neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from encoders.errors import SettingsError

if TYPE_CHECKING:
    from pipelines.embed.settings import EmbedSettings, Runtime
    from pipelines.embed.worker import UnitJob
    from pipelines.inputs import InputPlan


@dataclass(frozen=True)
class EngineMetrics:
    """What the workers measured, summed over the units they ran.

    `unit_ms`: time in units that were embedded (read + embed + commit, model loads excluded);
    `load_model_ms`: model loads; `inference_ms`: model calls; `stage_us`: per-stage counters
    (microseconds, named as pipelines.embed.timings.stage_metrics names them)."""

    rows_read: int = 0
    shards_reused: int = 0
    unit_ms: int = 0
    load_model_ms: int = 0
    inference_ms: int = 0
    stage_us: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineRun:
    """What an engine hands back once every unit is done. `metrics`: None when the engine (a Beam
    runner) reports none; `runner`: the Beam runner or the Spark master, as the manifest records it."""

    metrics: EngineMetrics | None
    runner: str


@dataclass(frozen=True)
class EngineWork:
    """One run's work for an engine: the planned units, what each worker needs (`job`), the tag of
    the model shared per worker process, and the join's inputs: `comparable` (the previous run,
    job.previous_shards, used the same model and fusion) and `join_counts` (where the join writes
    its deleted count when there is a previous run)."""

    plan: InputPlan
    job: UnitJob
    model_tag: str
    comparable: bool
    join_counts: str


class Engine(Protocol):
    """Runs an embed run's units on some workers; the driver knows nothing else of it."""

    name: str  # "beam" or "spark", as the manifest records it

    def localize(self, settings: EmbedSettings) -> EmbedSettings:
        """The settings as the workers must see them (Spark: local paths made absolute)."""
        ...

    def localize_path(self, path: str) -> str:
        """A path of the driver's (a previous run) as the workers must see it."""
        ...

    def workers_on_this_machine(self) -> bool:
        """Whether the workers run here, so that this machine's Runtime is theirs."""
        ...

    def dry_run(self) -> bool:
        """Whether the run only builds the job (nothing runs, nothing may be written)."""
        ...

    def check_runtime(self, runtime: Runtime, settings: EmbedSettings) -> None:
        """Warn about a runtime that works but wastes this engine's workers (called when local)."""
        ...

    def run(self, work: EngineWork) -> EngineRun:
        """Run the join and every unit to the end; raises DryRun after a dry run."""
        ...


def make_engine(settings: EmbedSettings, beam_args: list[str] | None) -> Engine:
    """The engine `settings.engine` names, with its options checked (SettingsError with the fix)
    before anything is read or written."""
    if settings.engine == "spark":
        if beam_args:
            raise SettingsError(
                f"Beam options ({' '.join(beam_args)}) apply to --engine beam only; "
                "with --engine spark use --spark-master and --spark-conf KEY=VALUE"
            )
        from pipelines.embed.spark import SparkEngine

        return SparkEngine(settings)
    from pipelines.beam_options import pipeline_options
    from pipelines.embed.beam import BeamEngine

    return BeamEngine(pipeline_options(beam_args or []))
