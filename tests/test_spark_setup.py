"""--engine spark's checks before any JVM starts: what is missing and how to get it, paths the executors can open."""

from __future__ import annotations

import os

import pytest

from encoders.errors import SettingsError
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.spark import python_error
from pipelines.embed.spark_context import absolute, executors_on_this_machine, java_missing, with_absolute_paths


def test_without_java_spark_is_refused_with_the_package_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    assert "apt-get install -y openjdk-17-jre-headless" in java_missing()
    settings = EmbedSettings(inputs=("in.parquet",), output=str(tmp_path / "out"), model="m", engine="spark")
    with pytest.raises(SettingsError, match="--engine spark needs Java 17 or later"):
        run_embed(settings)
    assert not (tmp_path / "out").exists()  # refused before the output directory is prepared


def test_local_paths_become_absolute_urls_and_hub_ids_do_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    s = EmbedSettings(inputs=("in/*.parquet", "s3://b/x.parquet"), output="out", model="model", engine="spark")
    got = with_absolute_paths(s)
    assert got.inputs == (os.path.join(tmp_path, "in/*.parquet"), "s3://b/x.parquet")
    assert (got.output, got.model) == (str(tmp_path / "out"), str(tmp_path / "model"))
    assert with_absolute_paths(EmbedSettings(**{**vars(s), "model": "openai/clip-vit-base-patch32"})).model == (
        "openai/clip-vit-base-patch32"
    )
    assert absolute("gs://b/out") == "gs://b/out"


def test_local_masters(monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    local = executors_on_this_machine
    assert local(None) and local("local[2]") and local("local-cluster[2,1,1024]")
    assert not local("yarn") and not local("spark://h:7077") and not local("k8s://https://h:443")
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")  # under spark-submit its master decides
    assert not local(None)


def test_a_failed_jobs_python_exception_is_picked_out_of_the_java_error():
    java = """An error occurred while calling o77.collect.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 2 in stage 2.0 failed 4 times
Traceback (most recent call last):
  File "/x/worker.py", line 1, in process
huggingface_hub.errors.OfflineModeIsEnabled: Cannot reach https://huggingface.co
encoders.loading.ModelLoadError: model 'clip' is not a local directory
\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala:1097)
Caused by: org.apache.spark.api.python.PythonException: Traceback"""
    assert python_error(java) == "encoders.loading.ModelLoadError: model 'clip' is not a local directory"
    assert python_error("something else\nat x") == "something else"


def test_what_spark_executors_import_holds_no_beam():
    """The executors' modules (the daemon's imports: the Spark driver, the unit worker and its
    stream, the embedder) run without Beam: the handler's Beam adapter is not among them."""
    import subprocess
    import sys

    code = (
        "import sys, pipelines.embed.spark, pipelines.embed.worker, pipelines.embed.stream, pipelines.embed.embedder; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_units_are_packed_into_two_embed_tasks_per_slot_and_deletions_keep_their_own_partition():
    from pipelines.embed.spark import _packed, embed_tasks

    assert [embed_tasks(n, 2) for n in (1, 3, 4, 16)] == [1, 3, 4, 4]
    assert embed_tasks(1000, 100) == 200 and embed_tasks(5, 0) == 2
    tasks, deleted = embed_tasks(16, 2), 16
    assert sorted({_packed(tasks, deleted, u) for u in range(16)}) == [0, 1, 2, 3]
    assert _packed(tasks, deleted, deleted) == tasks  # the one partition that sums deletions


def test_a_local_masters_jvms_start_with_our_options_unless_the_user_gave_theirs():
    from pipelines.embed.spark_context import JVM_OPTIONS, LOCAL_JVM_OPTIONS, launch_properties

    assert launch_properties({}, "local[2]") == dict.fromkeys(JVM_OPTIONS, LOCAL_JVM_OPTIONS)
    assert launch_properties({}, "local-cluster[2,1,1024]") == dict.fromkeys(JVM_OPTIONS, LOCAL_JVM_OPTIONS)
    theirs = {"spark.driver.extraJavaOptions": "-Xss4m", "spark.driver.memory": "2g"}
    assert launch_properties(theirs, "local[2]") == {"spark.executor.extraJavaOptions": LOCAL_JVM_OPTIONS, **theirs}
    assert launch_properties(theirs, "spark://host:7077") == theirs
    assert launch_properties({}, None) == {}  # spark-submit's JVM: already started, with its own options
