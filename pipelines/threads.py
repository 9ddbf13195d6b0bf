"""How many torch (OpenMP) threads each process runs: one decision for every engine.

A machine's cores are divided among the processes that run the model on it at once. Each engine
says how many that is (a `ThreadLayout`, decided by its driver and carried to its workers); the
worker decides its share with the cores *it* may use (CPU affinity and the cgroup quota, not
`os.cpu_count()`, which counts the host's cores inside a container) and applies it at set-up:

    engine (driver)                              ThreadLayout                    threads per process
    one process (FnApiRunner, in-memory)         processes=1                     all usable cores
    local Beam, --direct_num_workers N           processes=N                     cores // N
    Dataflow                                     processes=None (one per vCPU)   1
    Dataflow, no_use_multiple_sdk_containers     processes=1                     all cores
    Spark, local[K] / local-cluster[n,c,m]       processes=task slots here,      min(task.cpus, cores // slots)
                                                 cap=spark.task.cpus
    Spark on a cluster                           processes=None, cap=task.cpus   spark.task.cpus
    --large-model: the model's server            processes=1                     all cores
    --large-model: each worker (preprocessing)   cap=1                           1

A user's setting wins: FUSIONINDEX_TORCH_THREADS, else OMP_NUM_THREADS, in the worker's
environment (local executors and workers inherit or are forwarded the driver's). The wait
policy (a short GOMP_SPINCOUNT, or the user's OMP_WAIT_POLICY) is set at process entry
(encoders/openmp.py) before libgomp loads; the share records the one in effect. Which threads
ran is recorded with the Runtime (the manifest's `runtime.threads`), but never decides whether
committed shards are reused.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from encoders.openmp import wait_policy

log = logging.getLogger(__name__)

THREADS_ENV = "FUSIONINDEX_TORCH_THREADS"  # a user's torch threads per process (wins over the share)
OVERRIDES = (THREADS_ENV, "OMP_NUM_THREADS")  # in this order
CGROUP_V2 = "/sys/fs/cgroup/cpu.max"
CGROUP_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


@dataclass(frozen=True)
class ThreadLayout:
    """How an engine runs the model on one machine: `processes` running it at once (None: one per
    usable core, as Dataflow starts SDK processes), each with at most `cap` threads (None: no cap).
    `overrides`: the variables that hold a user's setting there (Spark sets OMP_NUM_THREADS in its
    Python workers itself, to the executor's cores: there it is the user's only when forwarded)."""

    engine: str
    processes: int | None = 1
    cap: int | None = None
    overrides: tuple[str, ...] = OVERRIDES


@dataclass(frozen=True)
class ThreadShare:
    """The decision for one process: `threads` torch threads; `source`: "share" or the variable
    the user set; `cores` and `processes`: what was divided; `wait_policy`: how OpenMP waiters
    wait (encoders.openmp.wait_policy)."""

    threads: int
    source: str
    cores: int
    processes: int
    engine: str
    wait_policy: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        why = f"{self.cores} cores / {self.processes} processes" if self.source == "share" else self.source
        return f"{self.threads} torch threads per process ({self.engine}: {why}), OpenMP waiters {self.wait_policy}"


def cgroup_quota(v2: str = CGROUP_V2, v1: tuple[str, str] = CGROUP_V1) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 2.5), or None when there is none."""
    try:
        with open(v2) as fh:
            quota, period = fh.read().split()[:2]  # "max 100000" or "250000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(v1[0]) as q, open(v1[1]) as p:
            quota_us, period_us = int(q.read()), int(p.read())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(affinity: int | None = None, quota: float | None = None) -> int:
    """The cores this process may use: its CPU affinity, bounded by its cgroup quota (rounded up,
    at least 1). Arguments given are used as they are (tests); missing ones are read here."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    if quota is None:
        quota = cgroup_quota()
    return max(1, min(affinity, math.ceil(quota)) if quota else affinity)


def decide(layout: ThreadLayout, cores: int, environ: Mapping[str, str]) -> ThreadShare:
    """The torch threads for one process of `layout` on a machine with `cores` usable cores; a
    positive integer in one of OVERRIDES wins. Pure: no process state is read or changed."""
    processes = layout.processes or max(1, cores // (layout.cap or 1))
    policy = wait_policy(environ)
    for name in layout.overrides:
        value = environ.get(name, "").strip()
        if value:
            try:
                threads = int(value.split(",")[0])  # OMP_NUM_THREADS may list one count per nesting level
            except ValueError:
                log.warning("%s=%r is not a thread count: ignored", name, value)
                continue
            if threads >= 1:
                return ThreadShare(threads, name, cores, processes, layout.engine, policy)
    threads = max(1, cores // processes)
    if layout.cap:
        threads = min(threads, layout.cap)
    return ThreadShare(threads, "share", cores, processes, layout.engine, policy)


def apply(layout: ThreadLayout, environ: Mapping[str, str] = os.environ) -> ThreadShare:
    """Decide this process's share (with its usable cores) and set torch's thread count to it.
    For a worker's set-up: it changes the process (torch's intra-op threads), by design."""
    import torch

    share = decide(layout, usable_cores(), environ)
    if torch.get_num_threads() != share.threads:
        torch.set_num_threads(share.threads)
    log.debug("threads: %s", share)
    return share


def beam_layout(runner: str, *, num_workers: int | None, running_mode: str | None, experiments=()) -> ThreadLayout:
    """The layout of a Beam run from its options (plain values: no Beam import here). Local
    runners run `--direct_num_workers` model callers at once (processes, or threads of one
    process: each OpenMP caller has its own team); Dataflow one SDK process per vCPU unless
    the job asks for one process (`--experiments=no_use_multiple_sdk_containers`)."""
    if runner == "DataflowRunner":
        one = "no_use_multiple_sdk_containers" in (experiments or ())
        return ThreadLayout("dataflow", 1 if one else None)
    n = num_workers or 1
    if n > 1 and running_mode in ("multi_processing", "multi_threading"):
        return ThreadLayout(f"beam ({n} workers, {running_mode})", n)
    return ThreadLayout("beam", 1)


def spark_layout(
    master: str, *, task_cpus: int = 1, local_cores: int | None = None, user_omp: bool = False
) -> ThreadLayout:
    """The layout of a Spark run: each task may use spark.task.cpus cores (Spark's contract);
    on a local master the task slots on this machine (local[K]: K // task.cpus; local[*]: the
    usable cores; local-cluster[n,c,m]: n*c // task.cpus) also divide its `local_cores`.
    `user_omp`: the user gave the executors OMP_NUM_THREADS (else the one there is Spark's)."""
    task_cpus = max(1, task_cpus)
    slots = None
    if master.startswith("local-cluster["):
        n, c = (int(v) for v in master[len("local-cluster[") :].split(",")[:2])
        slots = max(1, n * c // task_cpus)
    elif master.startswith("local"):
        k = master[len("local[") : -1].split(",")[0] if master.startswith("local[") else "1"
        cores = (local_cores or usable_cores()) if k == "*" else int(k)
        slots = max(1, cores // task_cpus)
    overrides = OVERRIDES if user_omp else (THREADS_ENV,)
    return ThreadLayout("spark", slots, task_cpus, overrides)


def large_model_server(layout: ThreadLayout) -> ThreadLayout:
    """--large-model: the one process that runs the forward passes for every worker on the machine."""
    return ThreadLayout(f"{layout.engine}, large-model server", 1)


def large_model_client(layout: ThreadLayout) -> ThreadLayout:
    """--large-model: a worker process that only decodes and preprocesses (its torch work is small)."""
    return ThreadLayout(f"{layout.engine}, large-model worker", layout.processes, 1)
