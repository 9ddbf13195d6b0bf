"""The Beam engine of `embed` (BeamEngine): the job graph and its DoFns (thin wrappers over UnitWorker).
Beam's options, shared with the index add stage, are in pipelines/beam_options.py.

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

import dataclasses
import logging
from functools import partial

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import multi_process_shared, shared

from encoders import storage
from pipelines.beam_options import dry_run_done, is_dry_run, thread_layout, workers_on_this_machine
from pipelines.embed.engine import EngineMetrics, EngineRun, EngineWork
from pipelines.embed.handler import EmbeddingModelHandler
from pipelines.embed.join import DELETED, decide_grouped, previous_keys, today_keys
from pipelines.embed.process import set_up_worker
from pipelines.embed.rows import RowPlan
from pipelines.embed.settings import EmbedSettings, Runtime
from pipelines.embed.stream import UnitFeeder
from pipelines.embed.timings import AHEAD_PREFIX, UNIT_PREFIX, stage_metrics
from pipelines.embed.worker import UnitJob, UnitWorker
from pipelines.inputs import InputPlan, WorkUnit

log = logging.getLogger(__name__)

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
        load = partial(load_in_model_process, handler)
        return multi_process_shared.MultiProcessShared(load, tag=tag, always_proxy=True).acquire()
    return handle.acquire(handler.load_model, tag=tag)


def load_in_model_process(handler: EmbeddingModelHandler):
    """--large-model: the model's own process (MultiProcessShared's server) is a worker process
    too: set it up (pipelines/embed/process.py), then load the towers."""
    set_up_worker(handler.settings, handler.model_threads())
    return handler.load_model()


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
        handler = EmbeddingModelHandler(job.settings, model=job.model, runtime=job.runtime, threads=job.threads)
        set_up_worker(job.settings, handler.worker_threads())  # the worker set-up hook: process-wide settings
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


def engine_metrics(sums: dict[str, int]) -> EngineMetrics:
    """EmbedUnit's counters (as metric_sums adds them up) as the engine-neutral figures."""
    stage_names = {k for k in sums if k.startswith((UNIT_PREFIX, AHEAD_PREFIX))}
    return EngineMetrics(
        rows_read=sums.get("rows_read", 0),
        shards_reused=sums.get("shards_reused", 0),
        unit_ms=sums.get("unit_ms", 0),
        load_model_ms=sums.get("load_model_ms", 0),
        inference_ms=sums.get("inference_batch_latency_ms", 0),
        stage_us={k: sums[k] for k in sorted(stage_names)},
    )


class BeamEngine:
    """The Engine on Beam: the job graph above, on the runner `options` name (local or Dataflow)."""

    name = "beam"

    def __init__(self, options: PipelineOptions):
        self.options = options

    def localize(self, settings: EmbedSettings) -> EmbedSettings:
        return settings

    def localize_path(self, path: str) -> str:
        return path

    def workers_on_this_machine(self) -> bool:
        return workers_on_this_machine(self.options)

    def dry_run(self) -> bool:
        return is_dry_run(self.options)

    def check_runtime(self, runtime: Runtime, settings: EmbedSettings) -> None:
        warn_model_copies(self.options, runtime.device, settings.large_model)

    def run(self, work: EngineWork) -> EngineRun:
        """Build the graph, run it to the end, read its metrics. After `--dry_run=True`
        (DataflowRunner: the job is built, nothing runs) raises DryRun instead."""
        job = dataclasses.replace(work.job, threads=thread_layout(self.options))  # the workers' torch threads
        p = beam.Pipeline(options=self.options)
        build_pipeline(p, work.plan, job, work.model_tag, comparable=work.comparable, join_counts=work.join_counts)
        result = p.run()
        result.wait_until_finish()
        if self.dry_run():
            raise dry_run_done("embed", self.options, p.runner)
        sums = metric_sums(result)
        return EngineRun(
            None if sums is None else engine_metrics(sums), str(self.options.view_as(StandardOptions).runner)
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
