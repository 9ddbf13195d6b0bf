"""Spark on the driver for `embed --engine spark`: what is missing (Java, pyspark) and how to get it,
paths the executors can open, the SparkContext with our defaults, and the thread layout.

pyspark is imported inside the functions that start Spark, never at import.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from encoders import openmp
from encoders.errors import SettingsError
from pipelines.embed.settings import THREADS_ENV, EmbedSettings
from pipelines.threads import ThreadLayout, spark_layout

log = logging.getLogger(__name__)

JAVA_PACKAGE = "openjdk-17-jre-headless"
DEFAULT_MASTER = "local[*]"
# to local executors (the OpenMP defaults the CLI set: executors start without the CLI)
FORWARDED_ENV = ("HF_HUB_OFFLINE", THREADS_ENV, "OMP_NUM_THREADS", *openmp.USER_SETTINGS)
DAEMON_MODULE = "pipelines.embed.spark_daemon"


def java_missing() -> str | None:
    """Why Spark cannot start a JVM here (with the fix), or None when Java is found."""
    home = os.environ.get("JAVA_HOME")
    if (home and os.access(os.path.join(home, "bin", "java"), os.X_OK)) or shutil.which("java"):
        return None
    return (
        f"--engine spark needs Java 17 or later: `sudo apt-get install -y {JAVA_PACKAGE}` (Debian/Ubuntu; "
        "`make install` does it where apt and root are available), or set JAVA_HOME"
    )


def spark_missing() -> str | None:
    """Why --engine spark cannot run here (pyspark or Java absent), with the fix; None when it can."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "--engine spark needs pyspark: pip install 'fusionindex[spark]'"
    return java_missing()


def absolute(path: str) -> str:
    """A local path made absolute (executors do not run in the driver's working directory); URLs as they are."""
    return path if "://" in path else os.path.abspath(path)


def with_absolute_paths(s: EmbedSettings) -> EmbedSettings:
    """`s` with its local input, output and model paths absolute (a hub id stays a hub id)."""
    model = absolute(s.model) if os.path.exists(s.model) else s.model
    return dataclasses.replace(s, inputs=tuple(absolute(p) for p in s.inputs), output=absolute(s.output), model=model)


def executors_on_this_machine(master: str | None) -> bool:
    """Whether the executors run on this machine (local[...] and local-cluster[...] masters)."""
    if master is None:  # spark-submit (which starts the JVM first) sets the master; else local[*]
        return "PYSPARK_GATEWAY_PORT" not in os.environ
    return master.startswith("local")


_early: Future | None = None  # the context start_early began, until spark_context or discard_early takes it


def start_early(s: EmbedSettings) -> None:
    """Begin starting Spark in a thread while the driver imports torch and plans the input: the
    SparkContext (its JVM), then one tiny task per task slot, so each executor's Python daemon
    imports torch and the unit worker (spark_daemon.py) before the first unit is sent. Waiting
    on the JVM releases the GIL, and the JVM and the daemon are processes of their own, so they
    run beside the driver's imports. Where the executors share this machine, returns once the
    JVM is up: the daemons' start waits for it and the driver's imports would slow it down
    (docs/performance.md: 0.6 s of a 20 s local[2] run). `spark_context` takes the result;
    nothing is started when Spark cannot run here (the engine reports why) or a context is active."""
    global _early
    if _early is not None or spark_missing():
        return
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        return
    _early, started = Future(), threading.Event()
    threading.Thread(target=_start_and_warm, args=(s, _early, started), name="spark-start", daemon=True).start()
    if executors_on_this_machine(s.spark_master):
        started.wait()  # the JVM first: the daemons wait for it, the driver's imports do not need to


def _start_and_warm(s: EmbedSettings, future: Future, started: threading.Event) -> None:
    """start_early's thread: the context into `future` (or the error starting it raised)."""
    try:
        sc, _ = _new_context(s)
    except BaseException as exc:  # handed to the thread that takes the context
        future.set_exception(exc)
        started.set()
        return
    started.set()
    try:
        slots = sc.defaultParallelism
        sc.parallelize(range(slots), slots).foreach(_daemon_ready)
    except Exception as exc:  # the first unit's task meets (and reports) the same problem
        log.debug("spark: warming the Python daemons failed: %s", exc)
    future.set_result(sc)


def _daemon_ready(_: int) -> None:
    """A task that only makes its executor start the Python daemon (and fork a worker)."""


def discard_early() -> None:
    """Stop a context start_early began that no run took (the command failed before it ran)."""
    global _early
    early, _early = _early, None
    if early is not None and early.exception() is None:
        early.result().stop()


def spark_context(s: EmbedSettings):
    """(SparkContext, whether we started it): the one start_early began, or an active context
    (spark-submit, a notebook) as it is, or a new one."""
    problem = spark_missing()
    if problem:
        raise SettingsError(problem)
    global _early
    early, _early = _early, None
    if early is not None:
        return early.result(), True
    from pyspark import SparkContext

    active = SparkContext._active_spark_context
    if active is not None:
        if s.spark_master or s.spark_conf:
            log.warning(
                "a SparkContext is already running (master %s): --spark-master/--spark-conf ignored", active.master
            )
        return active, False
    return _new_context(s)


def _new_context(s: EmbedSettings):
    """(a new SparkContext for --spark-master, or spark-submit's; True)."""
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM, with its master and --conf
    master = s.spark_master or (None if submitted else DEFAULT_MASTER)
    local = master is not None and master.startswith("local")  # executors are this machine and environment
    with _environment(LOCAL_ENV if local else {}):  # read by the JVM we are about to start and by SparkContext
        return _start(s, master), True


LOCAL_ENV = {"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ (where not set already) while the block runs; removed afterwards."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# a local master's JVMs schedule tasks and pass bytes to the Python workers; the quick-start JIT and one
# GC thread leave the cores to those (docs/performance.md, "Engines on one machine": 1.0-1.5 s a run)
LOCAL_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
JVM_OPTIONS = ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions")


def launch_properties(properties: dict[str, str], master: str | None) -> dict[str, str]:
    """What the driver JVM is launched with (`spark-submit --conf`): --spark-conf (so driver
    settings such as spark.driver.memory take effect) and, for a local master, LOCAL_JVM_OPTIONS
    where the user gave no JVM options of their own."""
    local = {k: LOCAL_JVM_OPTIONS for k in JVM_OPTIONS} if master and master.startswith("local") else {}
    return {**local, **properties}


def _start(s: EmbedSettings, master: str | None):
    """A new SparkContext for `master` (None: spark-submit's), with our defaults and --spark-conf."""
    from pyspark import SparkConf, SparkContext

    launch = SparkConf(loadDefaults=False).setAll(list(launch_properties(s.spark_properties(), master).items()))
    SparkContext._ensure_initialized(conf=launch)  # the JVM first, so SparkConf() holds spark-submit's properties
    conf = SparkConf().setIfMissing("spark.app.name", "fusionindex embed")
    if s.spark_master or not conf.contains("spark.master"):
        conf.setMaster(master or DEFAULT_MASTER)
    for key, value in s.spark_properties().items():
        conf.set(key, value)
    conf.setIfMissing("spark.python.worker.reuse", "true")  # one model load per Python worker, not per task
    conf.setIfMissing("spark.python.daemon.module", DAEMON_MODULE)  # workers forked with torch imported
    if "spark.ui.showConsoleProgress" not in s.spark_properties():  # spark-submit sets it true for shells
        conf.set("spark.ui.showConsoleProgress", "false")  # progress bars garble the CLI's log lines
    master = conf.get("spark.master")
    if master.startswith("local"):
        for name in FORWARDED_ENV:
            if name in os.environ:
                conf.setIfMissing(f"spark.executorEnv.{name}", os.environ[name])
    log.info("starting Spark (master %s)", master)
    sc = SparkContext(conf=conf)
    sc.setLogLevel("WARN")
    return sc


def thread_layout(master: str, conf: dict[str, str]) -> ThreadLayout:
    """How this Spark run's Python workers share a machine's cores (pipelines/threads.py), from
    the master and the properties (spark.task.cpus; OMP_NUM_THREADS is the user's only when given
    to the executors: on a local master the driver forwards the user's, see FORWARDED_ENV)."""
    user_omp = "spark.executorEnv.OMP_NUM_THREADS" in conf or (
        executors_on_this_machine(master) and "OMP_NUM_THREADS" in os.environ
    )
    return spark_layout(master, task_cpus=int(conf.get("spark.task.cpus", "1")), user_omp=user_omp)
