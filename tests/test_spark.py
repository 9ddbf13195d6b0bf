"""--engine spark on real Spark (a local-cluster of two executor JVMs): the Beam run's shards, byte for byte.

Skipped, with what to install, where pyspark or Java is absent (`make install` installs both)."""

from __future__ import annotations

import json
import logging
import os
import signal

import pyarrow.parquet as pq
import pytest

from index_builder.embeddings import list_shards
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.spark_context import spark_missing

MISSING = spark_missing()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.spark, pytest.mark.beam]

CLUSTER = "local-cluster[2,1,1024]"  # two executor JVMs, one core each


def files(out: str, sub: str) -> list[str]:
    path = os.path.join(out, sub)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def assert_same_output(a: str, b: str) -> None:
    """Equal shard names; per shard equal ids in the same order and byte-identical vectors; equal rejects."""
    assert files(a, "embeddings") == files(b, "embeddings")  # no temporaries, no extra copies
    assert files(a, "rejects") == files(b, "rejects")
    for name in files(a, "embeddings"):
        ta, tb = (pq.read_table(os.path.join(d, "embeddings", name)) for d in (a, b))
        assert ta.column_names == tb.column_names
        for col in ta.column_names:
            assert ta.column(col).combine_chunks() == tb.column(col).combine_chunks(), (name, col)
        ma, mb = (dict(t.schema.metadata) for t in (ta, tb))
        ra, rb = (json.loads(m.pop(b"fusionindex.runtime")) for m in (ma, mb))
        assert ma == mb, name  # counts
        assert {**ra, "threads": None} == {**rb, "threads": None}, name  # the threads differ by engine
    for name in files(a, "rejects"):
        assert pq.read_table(os.path.join(a, "rejects", name)) == pq.read_table(os.path.join(b, "rejects", name))


@pytest.fixture(scope="module")
def inputs(sample_dir, tmp_path_factory) -> list[str]:
    """The sample (6 row groups, failed rows) and a file repeating 5 of its ids (duplicates to reject)."""
    first = sorted(f for f in os.listdir(sample_dir) if f.endswith(".parquet"))[0]
    dups = tmp_path_factory.mktemp("dups") / "z-dups.parquet"
    pq.write_table(pq.read_table(os.path.join(sample_dir, first)).slice(0, 5), dups)
    return [f"{sample_dir}/*.parquet", str(dups)]


def test_spark_local_cluster_commits_the_beam_shards_once_despite_a_killed_worker(
    inputs, tiny_clip, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="pipelines.embed.spark")
    monkeypatch.chdir(tmp_path)  # a relative --output: the executors run in directories of their own
    beam = run_embed(
        EmbedSettings(inputs=inputs, output=str(tmp_path / "beam"), model=tiny_clip, batch_size=8)
    ).to_dict()
    marker = tmp_path / "killed"

    def kill_once(unit: int) -> None:  # pickled by value to the executors (defined in a function)
        """The fault: the first task to commit unit 2 marks it and kills its own Python worker (SIGKILL),
        so Spark retries the task after the shard was committed."""
        if unit == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    spark = run_embed(
        EmbedSettings(
            inputs=inputs,
            output="spark",
            model=tiny_clip,
            batch_size=8,
            engine="spark",
            spark_master=CLUSTER,
        ),
        after_commit=kill_once,
    ).to_dict()
    assert marker.exists()  # unit 2's first task committed its shard and then lost its Python worker
    assert_same_output(str(tmp_path / "beam"), str(tmp_path / "spark"))
    assert spark["counts"] == beam["counts"] and spark["counts"]["rejects_by_reason"] == {"duplicate_id": 5}
    assert spark["shards"] == beam["shards"] == len(list_shards(str(tmp_path / "spark"))) == 7
    assert (beam["engine"], beam["runner"]) == ("beam", "FnApiRunner")
    assert (spark["engine"], spark["runner"]) == ("spark", CLUSTER)
    # the executors' stage timings reach the driver's manifest as Beam's counters reach its own
    assert set(spark["timings"]["stages_s"]) == set(beam["timings"]["stages_s"])
    assert spark["timings"]["host_us_per_row"] > 0
    (summary,) = [r for r in caplog.records if r.getMessage().startswith("spark: ") and len(r.args) == 5]
    units, workers, loads, retried, torch_threads = summary.args
    assert units == 7 and retried == 1
    assert loads == workers < units  # one model load per Python worker, not per task
    # two executors of one core on this machine: each Python worker's torch runs the share, one thread,
    # not one per core of the machine (pipelines/threads.py); the manifest records the decision
    assert torch_threads == [1] and spark["runtime"]["threads"]["threads"] == 1
    assert spark["runtime"]["threads"]["source"] == "share"  # not PySpark's own OMP_NUM_THREADS
    assert spark["runtime"]["threads"]["processes"] == 2 and beam["runtime"]["threads"]["processes"] == 1


def test_spark_previous_run_comparison_equals_beam(inputs, tiny_clip, tmp_path):
    """The join against a previous run (what reindex does) on Spark: the same copied, re-embedded
    and deleted rows as Beam's join."""
    first = run_embed(
        EmbedSettings(inputs=inputs, output=str(tmp_path / "first"), model=tiny_clip, batch_size=8)
    ).to_dict()
    sample = os.path.dirname(inputs[0])
    today = [os.path.join(sample, sorted(f for f in os.listdir(sample) if f.endswith(".parquet"))[0])]  # one of two
    out = {}
    for engine in ("beam", "spark"):
        extra = {"engine": "spark", "spark_master": "local[2]"} if engine == "spark" else {}
        s = EmbedSettings(inputs=today, output=str(tmp_path / engine), model=tiny_clip, batch_size=8, **extra)
        out[engine] = run_embed(s, previous=str(tmp_path / "first")).to_dict()
    assert_same_output(str(tmp_path / "beam"), str(tmp_path / "spark"))
    c = out["spark"]["counts"]
    assert c == out["beam"]["counts"]
    assert c["unchanged"] == c["embedded"] > 0 and c["new"] == c["changed"] == 0
    assert c["deleted"] == first["counts"]["embedded"] - c["embedded"] > 0


def test_spark_without_a_join_equals_beam(inputs, tiny_clip, tmp_path):
    """--duplicate-ids allow and no previous run: nothing to join, each unit goes straight to its task."""
    out = {}
    for engine in ("beam", "spark"):
        extra = {"engine": "spark", "spark_master": "local[2]"} if engine == "spark" else {}
        s = EmbedSettings(
            inputs=inputs, output=str(tmp_path / engine), model=tiny_clip, batch_size=8, duplicate_ids="allow", **extra
        )
        out[engine] = run_embed(s).to_dict()
    assert_same_output(str(tmp_path / "beam"), str(tmp_path / "spark"))
    c = out["spark"]["counts"]
    assert c == out["beam"]["counts"] and c["embedded"] == c["read"] - c["skipped"] == 61  # the 5 repeats too
    assert "duplicate_id" not in c["rejects_by_reason"]


def test_spark_distributed_duplicate_join_equals_beam(inputs, tiny_clip, tmp_path, monkeypatch):
    """Above DRIVER_JOIN_ROWS the duplicate-id join without a previous run runs on Spark (two stages),
    not on the driver: the same shards and rejects as Beam's."""
    from pipelines.embed import spark

    monkeypatch.setattr(spark, "DRIVER_JOIN_ROWS", 0)
    out = {}
    for engine in ("beam", "spark"):
        extra = {"engine": "spark", "spark_master": "local[2]"} if engine == "spark" else {}
        s = EmbedSettings(inputs=inputs, output=str(tmp_path / engine), model=tiny_clip, batch_size=8, **extra)
        out[engine] = run_embed(s).to_dict()
    assert_same_output(str(tmp_path / "beam"), str(tmp_path / "spark"))
    assert out["spark"]["counts"] == out["beam"]["counts"]
    assert out["spark"]["counts"]["rejects_by_reason"] == {"duplicate_id": 5}


def test_the_cli_starts_spark_beside_its_imports_and_stops_it_when_the_run_fails(inputs, tiny_clip, tmp_path, caplog):
    """`fusionindex embed --engine spark`: the JVM and the executors' Python daemons start in a
    thread while the driver imports (spark_context.start_early); the run takes that context and
    stops it; a run that fails before Spark is used stops it too (no context left running)."""
    from pyspark import SparkContext

    from pipelines.cli import main

    caplog.set_level(logging.INFO, logger="pipelines.embed.spark_context")
    beam = run_embed(EmbedSettings(inputs=inputs, output=str(tmp_path / "beam"), model=tiny_clip, batch_size=8))
    common = ["--model", tiny_clip, "--batch-size", "8", "--engine", "spark", "--spark-master", "local[2]"]
    assert main(["-q", "embed", "--input", *inputs, "--output", str(tmp_path / "spark"), *common]) == 0
    (started,) = [r for r in caplog.records if r.getMessage().startswith("starting Spark")]
    assert started.threadName == "spark-start"
    assert SparkContext._active_spark_context is None  # the run stopped the context it was handed
    assert_same_output(str(tmp_path / "beam"), str(tmp_path / "spark"))
    assert beam.counts.embedded > 0

    caplog.clear()  # the model has no learned fusion: the driver refuses it (exit 2) after Spark started
    failed = ["-q", "embed", "--input", *inputs, "--output", str(tmp_path / "none"), "--fusion", "attention"]
    assert main([*failed, *common]) == 2
    assert [r.threadName for r in caplog.records if r.getMessage().startswith("starting Spark")] == ["spark-start"]
    assert SparkContext._active_spark_context is None


DRIVER_ARGS = """
import sys
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.spark_context import spark_context
s = EmbedSettings(inputs=("x",), output=".", model="m", engine="spark", spark_master="local[1]",
                  spark_conf=sys.argv[1:])
sc, owned = spark_context(s)
assert owned and sc.getConf().get("spark.ui.showConsoleProgress") == "false"
print(list(sc._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()))
sc.stop()
"""


def test_the_driver_jvm_is_launched_with_our_options_or_the_users():
    """Options a JVM takes at launch reach spark-submit: LOCAL_JVM_OPTIONS, or the user's own
    (--spark-conf spark.driver.extraJavaOptions=..., which a context's conf could not apply).
    A process launches one JVM: each case runs in a process of its own."""
    import ast
    import subprocess
    import sys

    def driver_args(*conf: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", DRIVER_ARGS, *conf], capture_output=True, text=True, check=True)
        return ast.literal_eval(out.stdout.strip().splitlines()[-1])

    ours = driver_args()
    assert "-XX:TieredStopAtLevel=1" in ours and "-XX:+UseSerialGC" in ours
    theirs = driver_args("spark.driver.extraJavaOptions=-Xss4m")
    assert "-Xss4m" in theirs and "-XX:TieredStopAtLevel=1" not in theirs
