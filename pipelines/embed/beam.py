"""The Beam side of `embed`: the job graph, its DoFns (thin wrappers over UnitWorker), options.

    units | ReadKeys ------------------+
                                       CoGroupByKey(id) | Decide --> plans: (unit, RowPlan)
    previous shards | ReadPreviousKeys-+                          --> deleted | sum | WriteJoinCounts
    {units by index, plans} | CoGroupByKey(unit) | EmbedUnit

The join by id runs inside the pipeline (a shuffle, not a driver-side dict), so it scales with
the input: it finds later copies of duplicate ids and, against a previous run, the rows whose
vectors can be copied. Without a previous run and with --duplicate-ids allow there is nothing
to join, and units go straight to EmbedUnit. Join elements cross the shuffles as plain tuples
(Beam encodes those natively; dataclasses would be pickled: 5x slower, twice the bytes) and are
the pure functions' dataclasses again on either side.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import multi_process_shared, shared

from encoders.errors import SettingsError
from index_builder import storage
from pipelines.dry_run import DryRun
from pipelines.embed.handler import EmbeddingModelHandler
from pipelines.embed.join import DELETED, decide_grouped, previous_keys, today_keys
from pipelines.embed.rows import RowPlan
from pipelines.embed.timings import stage_metrics
from pipelines.embed.worker import EngineRun, UnitFeeder, UnitJob, UnitWorker
from pipelines.inputs import InputPlan, WorkUnit
from pipelines.threads import ThreadLayout, beam_layout

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"  # the local runner that needs no download (DirectRunner tries Prism first)
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
# Runners that would give a wrong result without saying so: refused, with the reason.
REFUSED_RUNNERS = {
    "DaskRunner": "Beam's DaskRunner loses data silently: only the last-applied branch of a pipeline runs, "
    "elements emitted in finish_bundle are dropped, and it reports no metrics; use the default FnApiRunner "
    "(--direct_num_workers N --direct_running_mode multi_processing) or DataflowRunner",
}
NAMESPACE = "fusionindex"


class ReadKeys(beam.DoFn):
    """WorkUnit -> (id, TodayRow as a tuple): join.today_keys."""

    def __init__(self, skip_bad_files: bool, hashes: bool):
        self.skip_bad_files, self.hashes = skip_bad_files, hashes

    def process(self, unit: WorkUnit):
        yield from today_keys(unit, skip_bad_files=self.skip_bad_files, hashes=self.hashes)


class ReadPreviousKeys(beam.DoFn):
    """Index of a previous run's shard -> (id, PreviousRow as a tuple): join.previous_keys."""

    def __init__(self, shards: tuple[str, ...]):
        self.shards = shards

    def process(self, shard: int):
        yield from previous_keys(self.shards, shard)


class Decide(beam.DoFn):
    """(id, {"today": [...], "previous": [...]}) -> (unit, RowPlan as a tuple), and 1 on output "deleted"."""

    def __init__(self, reject_duplicates: bool, comparable: bool):
        self.reject_duplicates, self.comparable = reject_duplicates, comparable

    def process(self, element):
        _, grouped = element
        for key, value in decide_grouped(
            grouped["today"], grouped["previous"], reject_duplicates=self.reject_duplicates, comparable=self.comparable
        ):
            yield beam.pvalue.TaggedOutput(DELETED, value) if key == DELETED else (key, value)


class WriteJoinCounts(beam.DoFn):
    """The deleted count (a global sum) -> DIR/.join.json, read by the driver for the manifest."""

    def __init__(self, path: str):
        self.path = path

    def process(self, deleted: int):
        storage.write_json(self.path, {"deleted": int(deleted)})


def acquire_model(handler: EmbeddingModelHandler, handle: shared.Shared, tag: str):
    """Load the model once per process (or per machine for large models), as RunInference does.
    A large model's proxy comes with this process's own preprocessing loaded (counted as load time)."""
    if handler.share_model_across_processes():
        handler.worker_preprocessing()
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
        job = self.job
        handler = EmbeddingModelHandler(job.settings, tensor_recipe=job.tensor_recipe, threads=job.threads)
        self.worker = UnitWorker(self.job, handler, lambda: acquire_model(handler, self._shared, self.model_tag))
        self._feeder: UnitFeeder | None = None

    def start_bundle(self):
        self._abandon()

    def process(self, element):
        _, grouped = element
        (unit,) = grouped["unit"]
        plans = [RowPlan(*p) for p in grouped["plans"]]
        if not self.worker.reads_ahead():  # one unit at a time, in this thread
            yield from self._outputs([self.worker.process(unit, plans)])
            return
        # with read/decode-ahead, the bundle's units stream through one pipeline in a thread
        # (UnitFeeder): the next unit's first batch is prepared while this one's last runs forward
        if self._feeder is None:
            self._feeder = UnitFeeder(self.worker)
        yield from self._outputs(self._feeder.put(unit, plans))

    def finish_bundle(self):
        if self._feeder is not None:
            feeder, self._feeder = self._feeder, None
            for out in self._outputs(feeder.close()):
                yield GlobalWindows.windowed_value(out)

    def teardown(self):
        self._abandon()

    def _abandon(self):
        """A feeder left by a bundle that failed: let its thread end."""
        if getattr(self, "_feeder", None) is not None:
            self._feeder.abandon()
            self._feeder = None

    def _outputs(self, reports) -> list:
        """Metrics of each report (in the bundle's thread: Beam's metrics are per thread), and the
        (unit index, counts) of the units embedded."""
        out = []
        for report in reports:
            if report.counts is None:
                self.reused.inc()
                continue
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
            for name, us in stage_metrics(report.stages, report.ahead).items():
                Metrics.counter(NAMESPACE, name).inc(us)
            out.append((report.unit, c))
        return out


def build_pipeline(
    p: beam.Pipeline,
    plan: InputPlan,
    job: UnitJob,
    model_tag: str,
    *,
    comparable: bool = False,
    join_counts: str | None = None,
):
    """Add the embed transforms to `p`; returns the PCollection of (unit index, counts).

    `comparable`: the previous run (job.previous_shards) used the same model and fusion;
    `join_counts`: where the join writes its deleted count (used when there is a previous run)."""
    s = job.settings
    units = p | "Units" >> beam.Create(plan.units)
    if s.duplicate_ids == "reject" or job.previous_shards:
        today = units | "ReadKeys" >> beam.ParDo(ReadKeys(s.skip_bad_files, hashes=bool(job.previous_shards)))
        previous = (
            p
            | "PreviousShards" >> beam.Create(range(len(job.previous_shards)))
            | "ReadPreviousKeys" >> beam.ParDo(ReadPreviousKeys(job.previous_shards))
        )
        decided = (
            {"today": today, "previous": previous}
            | "JoinById" >> beam.CoGroupByKey()
            | "Decide"
            >> beam.ParDo(Decide(s.duplicate_ids == "reject", comparable)).with_outputs("deleted", main="plans")
        )
        plans = decided.plans
        if job.previous_shards:
            _ = (
                decided.deleted
                | "Deleted" >> beam.CombineGlobally(sum)
                | "WriteJoinCounts" >> beam.ParDo(WriteJoinCounts(join_counts))
            )
    else:
        plans = p | "NoPlans" >> beam.Create([])
    by_index = units | "ByIndex" >> beam.Map(lambda u: (u.index, u))
    return (
        {"unit": by_index, "plans": plans}
        | "JoinByUnit" >> beam.CoGroupByKey()
        | "Embed" >> beam.ParDo(EmbedUnit(job, model_tag))
    )


def metric_sums(result) -> dict[str, int] | None:
    """Each fusionindex counter's value and distribution's sum, summed over workers (committed
    where the runner has it, else attempted); None when the runner reports no metrics."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except (NotImplementedError, KeyError, AttributeError) as exc:  # runners differ in metric support
        log.debug("no metrics from the runner: %s", exc)
        return None
    sums: dict[str, int] = {}
    for kind, total in (("counters", lambda v: v), ("distributions", lambda v: v.sum)):
        for m in found[kind]:
            value = m.committed if m.committed is not None else m.attempted
            sums[m.key.metric.name] = sums.get(m.key.metric.name, 0) + (total(value) if value is not None else 0)
    return sums


def run_beam(
    options: PipelineOptions, plan: InputPlan, job: UnitJob, model_tag: str, *, comparable: bool, join_counts: str
) -> EngineRun:
    """The Beam driver: build the graph, run it to the end, read its metrics. After `--dry_run=True`
    (DataflowRunner: the job is built, nothing runs) raises DryRun instead."""
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan, job, model_tag, comparable=comparable, join_counts=join_counts)
    result = p.run()
    result.wait_until_finish()
    if is_dry_run(options):
        raise dry_run_done("embed", options, p.runner)
    return EngineRun(metric_sums(result), str(options.view_as(StandardOptions).runner))


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
    """Beam options from the leftover CLI args; the default runner needs no download."""
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_RUNNER
    name = runner_name(options)
    if name in REFUSED_RUNNERS:
        raise SettingsError(f"--runner {standard.runner} is refused: {REFUSED_RUNNERS[name]}")
    dry_run = options.view_as(TestOptions).dry_run
    if isinstance(dry_run, str) and dry_run.lower() in ("false", "0", "no", ""):
        raise SettingsError(
            f"--dry_run={dry_run}: Beam takes any value as true and would not submit the job; "
            "leave --dry_run out to run it, or write --dry_run=True"
        )
    if dry_run and name != "DataflowRunner":
        raise SettingsError(
            f"--dry_run: only DataflowRunner builds a job without running it; {name} would run the pipeline"
        )
    try:
        from apache_beam.runners.runner import create_runner

        create_runner(standard.runner)
        if name == "DataflowRunner":  # Beam without [gcp] creates the runner and fails only when submitting
            import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
    except (ValueError, ImportError) as exc:
        hint = "; install the Dataflow extra: pip install 'fusionindex[dataflow]'" if name == "DataflowRunner" else ""
        raise SettingsError(f"--runner {standard.runner}: {exc}{hint}") from exc
    return options


def thread_layout(options: PipelineOptions) -> ThreadLayout:
    """How this run's workers share a machine's cores (pipelines/threads.py: their torch threads)."""
    direct = options.view_as(DirectOptions)
    return beam_layout(
        runner_name(options),
        num_workers=direct.direct_num_workers,
        running_mode=direct.direct_running_mode,
        experiments=options.view_as(DebugOptions).experiments or (),
    )


def model_copies_warning(
    num_workers: int | None, running_mode: str | None, device: str, large_model: bool
) -> str | None:
    """What to tell the user when several local worker processes (DirectRunner / FnApiRunner
    multi_processing) would each load a model copy and a CUDA context onto the one device,
    which then time-slices them; None when that is not the case."""
    n = num_workers or 1
    if n <= 1 or running_mode != "multi_processing" or not device.startswith("cuda") or large_model:
        return None
    return (
        f"--direct_num_workers {n} --direct_running_mode multi_processing on {device}: each of the {n} worker "
        "processes loads its own model copy and CUDA context onto the one device, which runs them by turns "
        "(slower than one worker); add --large-model to load one model that every worker sends its "
        "preprocessed batches to"
    )


def warn_model_copies(options: PipelineOptions, device: str, large_model: bool) -> None:
    """Log `model_copies_warning` for these options, if it says anything (the driver calls it once)."""
    direct = options.view_as(DirectOptions)
    message = model_copies_warning(direct.direct_num_workers, direct.direct_running_mode, device, large_model)
    if message:
        log.warning(message)


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name, however it was given (a name, a dotted path or an instance)."""
    runner = options.view_as(StandardOptions).runner
    return runner.rsplit(".", 1)[-1] if isinstance(runner, str) else type(runner).__name__


def is_local(options: PipelineOptions) -> bool:
    """Whether the workers run on this machine (so this machine's Runtime is theirs)."""
    return runner_name(options) in LOCAL_RUNNERS


def is_dry_run(options: PipelineOptions) -> bool:
    """`--dry_run=True`: the runner builds the job (DataflowRunner: the job graph and its
    request) and submits nothing. No output will be written, so no later stage may run."""
    return bool(options.view_as(TestOptions).dry_run)


def dry_run_done(stage: str, options: PipelineOptions, runner, written: str = "nothing was written") -> DryRun:
    """The DryRun ending a command whose `stage` was only built; `written`: what the driver did write."""
    return DryRun(stage, runner_name(options), runner, written)
