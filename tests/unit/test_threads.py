"""The thread-share decision (pipelines/threads.py): engine layouts, usable cores, user overrides."""

from __future__ import annotations

import pytest

from pipelines import threads
from pipelines.threads import ThreadLayout, beam_layout, decide, spark_layout


def share(layout: ThreadLayout, cores: int, **env: str) -> int:
    return decide(layout, cores, env).threads


def test_one_process_takes_every_usable_core():
    s = decide(beam_layout("FnApiRunner", num_workers=None, running_mode=None), 16, {})
    assert (s.threads, s.source, s.processes, s.wait_policy) == (16, "share", 1, "GOMP_SPINCOUNT=10000")


@pytest.mark.parametrize("mode", ["multi_processing", "multi_threading"])
def test_local_beam_workers_divide_the_cores(mode):
    layout = beam_layout("FnApiRunner", num_workers=4, running_mode=mode)
    assert [share(layout, c) for c in (16, 8, 6, 2)] == [4, 2, 1, 1]
    assert share(beam_layout("FnApiRunner", num_workers=4, running_mode="in_memory"), 16) == 16


def test_dataflow_one_thread_per_sdk_process_unless_one_process():
    assert share(beam_layout("DataflowRunner", num_workers=None, running_mode=None), 16) == 1
    one = beam_layout(
        "DataflowRunner", num_workers=None, running_mode=None, experiments=["no_use_multiple_sdk_containers"]
    )
    assert share(one, 16) == 16


def test_spark_task_cpus_and_local_slots():
    assert spark_layout("local[2]") == ThreadLayout("spark", 2, 1, ("FUSIONINDEX_TORCH_THREADS",))
    assert share(spark_layout("local[2]"), 2) == 1  # the 4x: each Python worker had 2 threads
    assert share(spark_layout("local[2]", task_cpus=2), 2) == 2  # one task at a time: it gets both
    assert share(spark_layout("local[8]", task_cpus=2), 2) == 1  # 4 slots on 2 cores
    assert spark_layout("local[*]", local_cores=6).processes == 6
    assert spark_layout("local", local_cores=6).processes == 1
    assert spark_layout("local-cluster[2,1,1024]").processes == 2
    cluster = spark_layout("yarn", task_cpus=4)  # on the executor: its cores / task.cpus slots, task.cpus each
    assert (share(cluster, 16), decide(cluster, 16, {}).processes, share(cluster, 2)) == (4, 4, 2)


def test_large_model_server_gets_the_cores_and_workers_one():
    layout = beam_layout("FnApiRunner", num_workers=4, running_mode="multi_processing")
    assert share(threads.large_model_server(layout), 8) == 8
    assert share(threads.large_model_client(layout), 8) == 1


def test_sparks_own_omp_num_threads_is_not_a_users_setting():
    """PySpark sets OMP_NUM_THREADS in its Python workers to the executor's cores (SPARK-28843):
    with 16 task slots of one core each, every worker would take 16 threads."""
    assert share(spark_layout("yarn"), 16, OMP_NUM_THREADS="16") == 1
    assert share(spark_layout("yarn", user_omp=True), 16, OMP_NUM_THREADS="4") == 4
    assert share(spark_layout("yarn"), 16, FUSIONINDEX_TORCH_THREADS="4", OMP_NUM_THREADS="16") == 4


def test_a_users_setting_wins_and_is_recorded():
    layout = spark_layout("local[2]", user_omp=True)
    s = decide(layout, 2, {"FUSIONINDEX_TORCH_THREADS": "3", "OMP_NUM_THREADS": "5", "OMP_WAIT_POLICY": "ACTIVE"})
    assert (s.threads, s.source, s.wait_policy) == (3, "FUSIONINDEX_TORCH_THREADS", "ACTIVE")
    assert decide(layout, 2, {"OMP_NUM_THREADS": "5,2"}).threads == 5
    assert decide(layout, 2, {"FUSIONINDEX_TORCH_THREADS": "many", "OMP_NUM_THREADS": "0"}).source == "share"


def test_usable_cores_from_affinity_and_cgroup_quota(tmp_path):
    assert threads.usable_cores(affinity=8, quota=2.5) == 3
    assert threads.usable_cores(affinity=2, quota=16.0) == 2
    assert threads.usable_cores(affinity=0, quota=0.5) == 1
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert threads.cgroup_quota(str(v2), ("/nonexistent", "/nonexistent")) == 1.5
    v2.write_text("max 100000\n")
    assert threads.cgroup_quota(str(v2)) is None
    quota, period = tmp_path / "q", tmp_path / "p"
    quota.write_text("400000")
    period.write_text("100000")
    assert threads.cgroup_quota(str(tmp_path / "none"), (str(quota), str(period))) == 4.0
    quota.write_text("-1")
    assert threads.cgroup_quota(str(tmp_path / "none"), (str(quota), str(period))) is None


def test_apply_sets_torchs_threads():
    import torch

    before = torch.get_num_threads()
    try:
        s = threads.apply(ThreadLayout("test", 1, 1), {})
        assert s.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_beam_options_give_the_layout():
    """The driver reads the layout from the Beam options as a user writes them."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.beam_options import thread_layout

    def layout(*args: str) -> ThreadLayout:
        return thread_layout(PipelineOptions(list(args)))

    assert layout().processes == 1
    assert layout("--direct_num_workers", "4", "--direct_running_mode", "multi_processing").processes == 4
    assert layout("--runner", "DataflowRunner").processes is None  # one SDK process per vCPU
    one = layout("--runner", "DataflowRunner", "--experiments=no_use_multiple_sdk_containers", "--experiments=x")
    assert one.processes == 1
