"""The Beam side of `embed`: the job graph, its DoFns (thin wrappers over UnitWorker), options.

Create(units) | Reshuffle | EmbedUnit   <- side input: later copies of duplicate ids
units | ReadIds | GroupByKey(id) | later_duplicates | GroupByKey(unit) -> AsDict
"""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.utils import multi_process_shared, shared

from encoders.errors import InputError, SettingsError
from pipelines.embed.handler import THREADS_ENV, EmbeddingModelHandler
from pipelines.embed.rows import later_duplicates
from pipelines.embed.worker import UnitJob, UnitWorker
from pipelines.inputs import InputPlan, WorkUnit, read_ids

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"  # the local runner that needs no download (DirectRunner tries Prism first)
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
NAMESPACE = "fusionindex"


class ReadIds(beam.DoFn):
    """WorkUnit -> (id, (unit index, row index)) for every row that would be embedded."""

    def __init__(self, skip_bad_files: bool):
        self.skip_bad_files = skip_bad_files

    def process(self, unit: WorkUnit):
        try:
            pairs = read_ids(unit)
        except InputError:
            if not self.skip_bad_files:
                raise
            pairs = []  # the unit worker rejects the whole unreadable row group
        for row_index, row_id in pairs:
            yield row_id, (unit.index, row_index)


def acquire_model(handler: EmbeddingModelHandler, handle: shared.Shared, tag: str):
    """Load the model once per process (or per machine for large models), as RunInference does."""
    if handler.share_model_across_processes():
        return multi_process_shared.MultiProcessShared(handler.load_model, tag=tag, always_proxy=True).acquire()
    return handle.acquire(handler.load_model, tag=tag)


class EmbedUnit(beam.DoFn):
    """WorkUnit -> committed shard (+ rejects); yields (unit index, counts) for units it embedded."""

    def __init__(self, job: UnitJob, model_tag: str):
        self.job, self.model_tag = job, model_tag
        self._shared = shared.Shared()
        self.read = Metrics.counter(NAMESPACE, "rows_read")
        self.skipped = Metrics.counter(NAMESPACE, "rows_skipped")
        self.embedded = Metrics.counter(NAMESPACE, "rows_embedded")
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")
        self.reused = Metrics.counter(NAMESPACE, "shards_reused")
        self.batch_ms = Metrics.distribution(NAMESPACE, "inference_batch_latency_ms")
        self.unit_ms = Metrics.distribution(NAMESPACE, "unit_ms")  # read + embed + commit, model load excluded
        self.load_ms = Metrics.distribution(NAMESPACE, "load_model_ms")

    def setup(self):
        handler = EmbeddingModelHandler(self.job.settings, tensor_recipe=self.job.tensor_recipe)
        self.worker = UnitWorker(self.job, handler, lambda: acquire_model(handler, self._shared, self.model_tag))

    def process(self, unit: WorkUnit, duplicates: dict):
        report = self.worker.process(unit, duplicates.get(unit.index, []))
        if report.counts is None:
            self.reused.inc()
            return
        c = report.counts
        for metric, n in (
            (self.read, c["read"]),
            (self.skipped, c["skipped"]),
            (self.embedded, c["embedded"]),
            (self.rejected, c["rejected"]),
        ):
            metric.inc(n)
        for ms in report.batch_ms:
            self.batch_ms.update(ms)
        self.unit_ms.update(report.unit_ms)
        if report.load_ms is not None:
            self.load_ms.update(report.load_ms)
        yield unit.index, c


def build_pipeline(p: beam.Pipeline, plan: InputPlan, job: UnitJob, model_tag: str):
    """Add the embed transforms to `p`; returns the PCollection of (unit index, counts)."""
    units = p | "Units" >> beam.Create(plan.units)
    if job.settings.duplicate_ids == "reject":
        duplicates = (
            units
            | "ReadIds" >> beam.ParDo(ReadIds(job.settings.skip_bad_files))
            | "GroupIds" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(later_duplicates)
            | "ByUnit" >> beam.GroupByKey()
            | "Lists" >> beam.MapTuple(lambda unit, rows: (unit, list(rows)))
        )
    else:
        duplicates = p | "NoDuplicates" >> beam.Create([])
    return (
        units
        | "Spread" >> beam.Reshuffle()
        | "Embed" >> beam.ParDo(EmbedUnit(job, model_tag), duplicates=beam.pvalue.AsDict(duplicates))
    )


def _beam_parser():
    """An argument parser holding every option Beam's PipelineOptions classes define
    (as PipelineOptions.get_all_options builds it; Beam only warns about the rest). A bad value
    for a Beam option raises SettingsError instead of printing usage and exiting."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    class Strict(_BeamArgumentParser):
        def error(self, message):
            if not message.startswith("ambiguous option: "):  # Beam ignores those too
                raise SettingsError(f"Beam option: {message}")

    parser = Strict(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def beam_flags() -> list[str]:
    """Every --flag Beam knows."""
    return sorted(o for a in _beam_parser()._actions for o in a.option_strings if o.startswith("--"))


def unknown_beam_args(args: list[str]) -> list[str]:
    """The arguments among `args` that no Beam pipeline option accepts."""
    return _beam_parser().parse_known_args(args)[1]


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the leftover CLI args; the default runner needs no download.

    With several local worker processes, each gets an equal share of the CPUs for torch
    (and OpenMP), instead of every process starting one thread per core.
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_RUNNER
    try:
        from apache_beam.runners.runner import create_runner

        create_runner(standard.runner)
    except (ValueError, ImportError) as exc:
        raise SettingsError(f"--runner {standard.runner}: {exc}") from exc
    direct = options.view_as(DirectOptions)
    if (direct.direct_num_workers or 1) > 1 and direct.direct_running_mode == "multi_processing":
        share = str(max(1, (os.cpu_count() or 1) // direct.direct_num_workers))
        os.environ.setdefault(THREADS_ENV, share)
        os.environ.setdefault("OMP_NUM_THREADS", share)
    return options


def is_local(options: PipelineOptions) -> bool:
    """Whether the workers run on this machine (so this machine's Runtime is theirs)."""
    runner = options.view_as(StandardOptions).runner
    return (runner if isinstance(runner, str) else type(runner).__name__) in LOCAL_RUNNERS
