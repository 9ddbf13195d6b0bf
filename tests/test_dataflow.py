"""The Dataflow job `embed` and the build-index add stage build (`--dry_run=True`: the whole job,
offline, nothing submitted), and the worker image's versions against pyproject.toml."""

from __future__ import annotations

import json
import os
import re
import tomllib

import pytest

from pipelines.cli import main
from pipelines.dry_run import DryRun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy", "dataflow")
IMAGE = "europe-west4-docker.pkg.dev/my-project/fusionindex/worker:0.1.0"
ACCELERATOR = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
DATAFLOW = [
    "--runner",
    "DataflowRunner",
    "--dry_run=True",
    "--project",
    "my-project",
    "--region",
    "europe-west4",
    "--temp_location",
    "gs://fusionindex-test/tmp",  # never touched: a dry run stages nothing
    "--sdk_container_image",
    IMAGE,
    f"--dataflow_service_options={ACCELERATOR}",
    "--experiments=no_use_multiple_sdk_containers",
    "--setup_file",
    os.path.join(ROOT, "pyproject.toml"),
]


def needs_dataflow():
    """The DataflowRunner's client (apache-beam[gcp], the `dataflow` extra, which `make install` installs)."""
    pytest.importorskip(
        "apache_beam.runners.dataflow.internal.apiclient",
        reason="apache-beam[gcp] is not installed: pip install -e '.[dataflow]' (make install does)",
    )
    pytest.importorskip("build", reason="Beam builds the --setup_file sdist with `build`: pip install -e '.[dataflow]'")


def job_request(runner):
    """The job's Environment as DataflowApplicationClient.create_job_description would send it
    (built from the runner's own job and options; the staged pipeline URL is a placeholder)."""
    from apache_beam.runners.dataflow.internal import apiclient

    return apiclient.Environment(
        packages=[],
        options=runner.job.options,
        environment_version="dry-run",
        proto_pipeline_staged_url="gs://fusionindex-test/staging/pipeline.pb",
        proto_pipeline=runner.job.proto_pipeline,
    ).proto


def check_job(runner, transforms: set[str]) -> None:
    """Our transforms in the graph, our image and the staged sdist in its environment, the GPU
    experiment and accelerator in the job request."""
    from apache_beam.portability.api import beam_runner_api_pb2

    graph = runner.proto_pipeline
    names = {t.unique_name for t in graph.components.transforms.values()}
    assert transforms <= names, transforms - names
    (env,) = [e for e in graph.components.environments.values() if e.urn == "beam:env:docker:v1"]
    assert beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image == IMAGE
    staged = {beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
              for d in env.dependencies}  # fmt: skip
    assert "workflow.tar.gz" in staged, staged  # this package's sdist, built from --setup_file
    request = job_request(runner)
    assert "no_use_multiple_sdk_containers" in request.experiments
    assert "use_multiple_sdk_containers" not in request.experiments
    assert ACCELERATOR in request.service_options


@pytest.mark.beam
def test_embed_builds_the_gpu_dataflow_job_and_writes_nothing(sample_dir, tiny_clip, tmp_path, capsys):
    needs_dataflow()
    from pipelines.embed.run import run_embed
    from pipelines.embed.settings import EmbedSettings

    out = tmp_path / "emb"
    with pytest.raises(DryRun) as done:
        run_embed(EmbedSettings(inputs=(sample_dir,), output=str(out), model=tiny_clip), DATAFLOW)
    check_job(done.value.runner, {"Units", "ReadKeys", "JoinById", "Decide", "JoinByUnit", "Embed"})
    assert not out.exists()  # no run key, no shards, no manifest: nothing ran
    # the CLI: one line, exit 0; previous outputs in --output are left alone
    out.mkdir()
    (out / "manifest.json").write_text('{"kept": true}')
    argv = ["embed", "--input", sample_dir, "--output", str(out), "--model", tiny_clip, *DATAFLOW]
    capsys.readouterr()
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "dry run: the embed job graph was built for DataflowRunner; nothing ran; nothing was written" in said
    assert json.loads((out / "manifest.json").read_text()) == {"kept": True} and os.listdir(out) == ["manifest.json"]


@pytest.mark.beam
def test_index_add_stage_builds_its_dataflow_job(tmp_path):
    needs_dataflow()
    from index_builder.embeddings import Shard
    from pipelines.index_add.beam_stage import beam_adder

    shards = [Shard(str(tmp_path / f"part-{i}.parquet"), 10, {}) for i in range(3)]
    add = beam_adder(DATAFLOW, workers=4)  # a runner given: --workers adds no local-runner options
    with pytest.raises(DryRun) as done:
        add(str(tmp_path / "template.faiss"), shards, [0, 10, 20], "fused", str(tmp_path / "parts"))
    assert "build-index add" in str(done.value)
    check_job(done.value.runner, {"Shards", "Spread", "AddShards"})
    assert not (tmp_path / "parts").exists()


def pins() -> dict[str, str]:
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dataflow"]
    found = dict(re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)$", d).groups() for d in deps if "==" in d)
    found["python"] = project["requires-python"].removeprefix(">=")
    return found


def test_worker_image_versions_match_pyproject():
    text = open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8").read()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    p = pins()
    assert args["PYTHON_VERSION"] == p["python"] and args["BEAM_VERSION"] == p["apache-beam"]
    assert args["TORCH_VERSION"] == p["torch"]
    # the boot program comes from the SDK image of the same Beam and Python; so does the launcher's Python
    sdk = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+) AS beam$", text, re.M)
    assert sdk and sdk.groups() == (p["python"], p["apache-beam"])
    assert f"python{p['python'].replace('.', '')}-template-launcher-base" in text
    assert re.search(r"^FROM nvidia/cuda:\S+ AS|^FROM nvidia/cuda:\S+$", text, re.M)
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    # workers start without the CLI, so the image sets the OpenMP defaults the CLI would (encoders/openmp.py)
    from encoders.openmp import DEFAULTS

    assert all(re.search(rf"^ENV {k}={v}$", text, re.M) for k, v in DEFAULTS.items())
    # the constraints the image installs with hold the same pins
    frozen = dict(
        line.split("==", 1)
        for line in open(os.path.join(DEPLOY, "constraints.txt"), encoding="utf-8").read().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for name in ("torch", "torchvision", "apache-beam", "faiss-gpu"):
        assert frozen[name] == p[name], name
    meta = json.load(open(os.path.join(DEPLOY, "metadata.json"), encoding="utf-8"))
    assert {q["name"] for q in meta["parameters"] if not q.get("isOptional")} == {"input", "output", "model"}


@pytest.mark.beam
def test_reindex_dry_run_leaves_no_run_to_resume(sample_dir, tiny_clip, tmp_path, capsys):
    needs_dataflow()
    root = tmp_path / "root"
    capsys.readouterr()
    assert main(["reindex", "--input", sample_dir, "--root", str(root), "--model", tiny_clip, *DATAFLOW]) == 0
    assert "dry run: the embed job graph was built for DataflowRunner" in capsys.readouterr().out
    assert os.listdir(root) == ["runs"] and os.listdir(root / "runs") == []  # no run.json, no lock, no LATEST
