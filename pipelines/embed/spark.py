"""The Spark side of `embed` (--engine spark): the same work units as Beam, as Spark tasks over UnitWorker.

    units (one partition each) | flatMap today_keys --+
                                                      groupByKey(id) | decide_grouped --> (unit, plan), (n, deleted)
    previous shards | flatMap previous_keys ----------+
    units (one task) + plans + deleted | groupByKey(unit index: `tasks` partitions of units, one sums deletions)
                                       | map embed task --> reports (collected: small, one per unit)

With nothing to join (--duplicate-ids allow and no previous run): units (`tasks` partitions) | map
embed task, no shuffle. Without a previous run and with at most DRIVER_JOIN_ROWS rows, the
duplicate-id join (ids only) runs on the driver with the same functions and the plans travel with
the units: no shuffle either. A task runs several units in turn (`embed_tasks`: two tasks per task slot),
so one Python worker loads the model once for all of them and Spark pays a task's round trip per
few units, not per unit; a retried task finds its units' committed shards and reuses them.

The per-element steps are pipelines/embed/join.py's, shared with the Beam graph; each task runs
UnitWorker, which commits its unit's shard atomically, so a task Spark retries (a lost executor,
a killed Python worker) rewrites the same shard once. Each Python worker keeps one loaded model
(a module-level cache; Spark reuses Python workers across tasks). Counts come from the committed
shards, as for Beam; the collected reports only feed timings and reuse counts.

pyspark is imported here only: nothing imports this module unless --engine spark.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

from encoders import storage
from encoders.errors import SettingsError
from pipelines.embed.engine import EngineMetrics, EngineRun, EngineWork
from pipelines.embed.join import DELETED, decide_grouped, previous_keys, today_keys
from pipelines.embed.settings import EmbedSettings, Runtime
from pipelines.embed.spark_context import (
    absolute,
    executors_on_this_machine,
    spark_context,
    spark_missing,
    thread_layout,
    with_absolute_paths,
)
from pipelines.embed.timings import stage_metrics
from pipelines.inputs import InputPlan, WorkUnit
from pipelines.threads import decide, usable_cores

if TYPE_CHECKING:  # torch: imported by the embed tasks only, not by the join's (executors import this module)
    from encoders.towers import Towers
    from pipelines.embed.embedder import Embedder
    from pipelines.embed.worker import UnitJob

log = logging.getLogger(__name__)

UNIT, PLAN, DELETED_TAG = 0, 1, 2  # tags of the elements grouped per unit

_MODEL: dict[str, tuple[Embedder, Towers]] = {}  # this Python worker's model: at most one


def _cached_model(embedder: Embedder, key: str, loads: list[int]) -> Towers:
    """The model for `key`, loaded once per Python worker (a different key replaces it); the
    worker set-up hook runs first (pipelines/embed/process.py)."""
    if key not in _MODEL:
        from pipelines.embed.process import set_up_worker

        set_up_worker(embedder.settings, embedder.model_threads())
        _MODEL.clear()
        _MODEL[key] = (embedder, embedder.load_model())
        loads.append(1)
    return _MODEL[key][1]


def embed_task(job: UnitJob, model_tag: str, element: tuple[int, Iterable[tuple[int, object]]]) -> dict:
    """One unit on an executor: UnitWorker with this Python worker's model; returns its report as a dict."""
    import torch
    from pyspark import TaskContext

    from pipelines.embed.embedder import Embedder
    from pipelines.embed.rows import RowPlan
    from pipelines.embed.worker import UnitWorker

    index, tagged = element
    tagged = list(tagged)
    (unit,) = [v for tag, v in tagged if tag == UNIT]
    plans = [RowPlan(*v) for tag, v in tagged if tag == PLAN]
    key = f"{model_tag}|{job.settings!r}"  # towers carry settings (exact shapes), not only weights
    embedder = (
        _MODEL[key][0]
        if key in _MODEL
        else Embedder(job.settings, model=job.model, runtime=job.runtime, threads=job.threads)
    )
    loads: list[int] = []
    report = UnitWorker(job, embedder, lambda: _cached_model(embedder, key, loads)).process(unit, plans)
    ctx = TaskContext.get()
    return {
        "unit": index,
        "counts": report.counts,
        "unit_ms": report.unit_ms,
        "load_ms": report.load_ms if loads else 0,
        "batch_ms": sum(report.batch_ms),
        "stages": stage_metrics(report.stages, report.ahead),
        "loads": len(loads),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),  # what the set-up applied (pipelines/threads.py)
        "attempt": ctx.attemptNumber() if ctx is not None else 0,
        "task": ctx.partitionId() if ctx is not None else index,
    }


TASKS_PER_SLOT = 2  # embed tasks per task slot: a slow task leaves the others room to balance


def embed_tasks(units: int, slots: int) -> int:
    """How many embed tasks (partitions) `units` units are packed into on `slots` task slots."""
    return max(1, min(units, TASKS_PER_SLOT * max(1, slots)))


def _packed(tasks: int, deleted_key: int, key: int) -> int:
    """groupByKey's partition of a unit index (tasks of several units) or of the deletions (the last)."""
    return tasks if key == deleted_key else key % tasks


def _tag(tag: int, kv: tuple) -> tuple:
    return kv[0], (tag, kv[1])


def _unit_key(unit: WorkUnit) -> tuple:
    return unit.index, (UNIT, unit)


def _route(deleted_key: int, kv: tuple) -> tuple:
    """A verdict of the join -> (unit index, plan), or (deleted_key, 1) for the one partition that sums deletions."""
    key, value = kv
    return (deleted_key, (DELETED_TAG, value)) if key == DELETED else (key, (PLAN, value))


def _task(job: UnitJob, model_tag: str, deleted_key: int, element: tuple) -> dict:
    if element[0] == deleted_key:
        return {"deleted": sum(v for _, v in element[1])}
    return embed_task(job, model_tag, element)


def _decide(reject_duplicates: bool, comparable: bool, element: tuple):
    _, grouped = element
    grouped = list(grouped)
    today = [v for tag, v in grouped if tag == 0]
    previous = [v for tag, v in grouped if tag == 1]
    return decide_grouped(today, previous, reject_duplicates=reject_duplicates, comparable=comparable)


class SparkEngine:
    """The Engine on Spark: `run_spark` on the master --spark-master names (or spark-submit's)."""

    name = "spark"

    def __init__(self, settings: EmbedSettings):
        problem = spark_missing()  # before the output directory is touched
        if problem:
            raise SettingsError(problem)
        self.master = settings.spark_master

    def localize(self, settings: EmbedSettings) -> EmbedSettings:
        return with_absolute_paths(settings)

    def localize_path(self, path: str) -> str:
        return absolute(path)

    def workers_on_this_machine(self) -> bool:
        return executors_on_this_machine(self.master)

    def dry_run(self) -> bool:
        return False

    def check_runtime(self, runtime: Runtime, settings: EmbedSettings) -> None:
        pass

    def run(self, work: EngineWork) -> EngineRun:
        return run_spark(
            work.job.settings,
            work.plan,
            work.job,
            work.model_tag,
            comparable=work.comparable,
            join_counts=work.join_counts,
        )


DRIVER_JOIN_ROWS = 2_000_000  # at most this many rows: the duplicate-id join (ids only) runs on the driver


def run_spark(
    s: EmbedSettings, plan: InputPlan, job: UnitJob, model_tag: str, *, comparable: bool, join_counts: str
) -> EngineRun:
    """The Spark driver: the id join (when duplicates are rejected or there is a previous run), then the
    embed tasks; writes the deleted count to `join_counts` when there is a previous run."""
    sc, owned = spark_context(s)
    job = dataclasses.replace(job, threads=thread_layout(sc.master, dict(sc.getConf().getAll())))
    log.info("spark: %s per Python worker", decide(job.threads, usable_cores(), os.environ))
    try:
        packed = embed_tasks(len(plan.units), sc.defaultParallelism // max(1, job.threads.cap or 1))
        log.info("spark: %d units in %d embed tasks", len(plan.units), packed)
        tasks = _embed_elements(sc, s, plan, job, packed, comparable)
        try:
            out = tasks.map(partial(_task, job, model_tag, len(plan.units))).collect()
        except Exception as exc:
            if type(exc).__name__ != "Py4JJavaError":
                raise
            raise RuntimeError(f"the Spark job failed: {python_error(str(exc))}") from exc
        master = sc.master
        log_stages(sc)
    finally:
        if owned:
            sc.stop()
    reports = [r for r in out if "deleted" not in r]
    if job.previous_shards:
        storage.write_json(join_counts, {"deleted": sum(r["deleted"] for r in out if "deleted" in r)})
    return EngineRun(_metrics(reports), master)


def _embed_elements(sc, s: EmbedSettings, plan: InputPlan, job: UnitJob, packed: int, comparable: bool):
    """The RDD of the embed tasks' elements, (unit index, [(UNIT, unit), (PLAN, plan)...]) in `packed`
    partitions, and (n, deletions) in one more when there is a previous run. The join runs on Spark
    with a previous run (it hashes every image) or above DRIVER_JOIN_ROWS rows; a duplicate-id join
    of fewer rows runs here on the driver (the ids only: a shuffle of two stages cost ~19 s of a
    44 s local[2] run of 2,048 rows); with nothing to join the units go straight to their tasks."""
    n = len(plan.units)
    if not job.previous_shards and (s.duplicate_ids != "reject" or plan.total_rows <= DRIVER_JOIN_ROWS):
        plans = _joined_here(plan.units, s.skip_bad_files, comparable) if s.duplicate_ids == "reject" else {}
        return sc.parallelize([(u.index, [(UNIT, u), *plans.get(u.index, ())]) for u in plan.units], packed)
    units = sc.parallelize(plan.units, n)  # one unit per partition: the join reads each in its own task
    today = units.flatMap(partial(today_keys, skip_bad_files=s.skip_bad_files, hashes=bool(job.previous_shards)))
    keyed = today.map(partial(_tag, 0))
    if job.previous_shards:
        shards = sc.parallelize(range(len(job.previous_shards)), len(job.previous_shards))
        keyed = keyed.union(shards.flatMap(partial(previous_keys, job.previous_shards)).map(partial(_tag, 1)))
    decided = keyed.groupByKey().flatMap(partial(_decide, s.duplicate_ids == "reject", comparable))
    # the units join their plans in one small task (not one per unit); deletions go to the last partition
    keyed_units = sc.parallelize([_unit_key(u) for u in plan.units], 1)
    return keyed_units.union(decided.map(partial(_route, n))).groupByKey(packed + 1, partial(_packed, packed, n))


def _joined_here(units: list[WorkUnit], skip_bad_files: bool, comparable: bool) -> dict[int, list[tuple]]:
    """The duplicate-id join without a previous run, on the driver, with the functions the Spark join
    runs: unit index -> its (PLAN, plan) elements."""
    by_id: dict[str, list[tuple]] = {}
    for unit in units:
        for row_id, today in today_keys(unit, skip_bad_files=skip_bad_files, hashes=False):
            by_id.setdefault(row_id, []).append(today)
    plans: dict[int, list[tuple]] = {u.index: [] for u in units}
    for today in by_id.values():
        for key, value in decide_grouped(today, (), reject_duplicates=True, comparable=comparable):
            plans[key].append((PLAN, value))
    return plans


def stage_times(sc) -> list[dict]:
    """Each finished stage's tasks, wall seconds (submitted to completed) and seconds in its tasks
    (executorRunTime: the Python workers' time included), from Spark's REST API; [] when the UI is
    off or unreachable. For telling where a run's time went (the log, the benchmark)."""
    import json
    import urllib.request
    from datetime import datetime

    url = sc.uiWebUrl
    if not url:
        return []
    try:
        with urllib.request.urlopen(
            f"{url}/api/v1/applications/{sc.applicationId}/stages", timeout=30
        ) as r:  # the first call starts the JVM's REST server
            stages = json.load(r)
    except (OSError, ValueError):
        return []

    def at(s: str) -> float:
        return datetime.strptime(s.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()

    out = []
    for st in sorted(stages, key=lambda st: st["stageId"]):
        if st.get("status") != "COMPLETE" or "submissionTime" not in st or "completionTime" not in st:
            continue
        wall = at(st["completionTime"]) - at(st["submissionTime"])
        out.append(
            {
                "stage": st["stageId"],
                "name": st["name"].split(" at ")[0],
                "tasks": st["numTasks"],
                "wall_s": round(wall, 2),
                "run_s": round(st["executorRunTime"] / 1000, 2),
                "start": at(st["submissionTime"]),
            }
        )
    return out


def log_stages(sc) -> None:
    """Log `stage_times` at debug level (`-v`; the REST call costs up to its timeout otherwise):
    one line per stage, offsets from the first stage's start."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    stages = stage_times(sc)
    t0 = min((s["start"] for s in stages), default=0)
    for s in stages:
        log.debug(
            "spark stage %d (%s): %d tasks, +%.1f s, %.1f s wall, %.1f s in tasks",
            s["stage"], s["name"], s["tasks"], s["start"] - t0, s["wall_s"], s["run_s"],
        )  # fmt: skip


def python_error(java_message: str) -> str:
    """The Python exception inside a failed job's Java error (its last `module.Name: message` line)."""
    lines = [line.strip() for line in java_message.splitlines() if line.strip()]
    found = [
        line
        for line in lines
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception): ", line) and not line.startswith(("org.", "java.", "py4j."))
    ]
    return found[-1] if found else (lines[0] if lines else "(no message)")


def _metrics(reports: list[dict]) -> EngineMetrics:
    """The tasks' reports summed (reused shards count no time); logs how the tasks ran."""
    done = [r for r in reports if r["counts"] is not None]
    stage_us: dict[str, int] = {}
    for r in done:
        for name, us in r["stages"].items():
            stage_us[name] = stage_us.get(name, 0) + us
    loads, retried = sum(r["loads"] for r in reports), len({r["task"] for r in reports if r["attempt"] > 0})
    log.info(
        "spark: %d units in %d Python workers, %d model loads, %d embed tasks retried, torch threads %s",
        len(reports),
        len({r["pid"] for r in reports}),
        loads,
        retried,
        sorted({r["torch_threads"] for r in reports if "torch_threads" in r}),
    )
    return EngineMetrics(
        rows_read=sum(r["counts"]["read"] for r in done),
        shards_reused=len(reports) - len(done),
        unit_ms=sum(r["unit_ms"] for r in done),
        load_model_ms=sum(r["load_ms"] for r in reports),
        inference_ms=sum(r["batch_ms"] for r in reports),
        stage_us=stage_us,
    )
