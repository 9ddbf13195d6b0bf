"""Settings objects: validated once, defaults in one place, runtime resolution (no runner, no model)."""

from __future__ import annotations

import dataclasses

import pytest

from encoders.errors import SettingsError
from encoders.settings import TrainConfig
from index_builder.settings import BuildSettings
from pipelines.cli import build_parser, settings_from
from pipelines.embed.settings import (
    TENSOR_REVISION,
    EmbedSettings,
    Runtime,
    resolve_preprocess,
    resolve_runtime,
    shared_model_tag,
    small_batch_warning,
)
from pipelines.inputs import Columns
from pipelines.search.settings import SearchSettings
from pipelines.training.settings import FinetuneSettings

EMBED = dict(inputs=("in/*.parquet",), output="out", model="m")


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_flags_left_out_give_exactly_the_settings_defaults():
    """The parser takes its defaults from the settings objects: nothing is restated."""
    assert settings_from(
        EmbedSettings, parse("embed", "--input", "in/*.parquet", "--output", "out", "--model", "m")
    ) == EmbedSettings(**EMBED)
    assert settings_from(BuildSettings, parse("build-index", "--embeddings", "e", "--output", "i")) == BuildSettings(
        "e", "i"
    )
    assert settings_from(SearchSettings, parse("search", "--index", "i", "--text", "t")) == SearchSettings(
        "i", text="t"
    )
    got = settings_from(FinetuneSettings, parse("finetune", "--train", "a", "--val", "b", "--output", "o"))
    assert got == FinetuneSettings(train=("a",), val=("b",), output="o")


def test_flags_reach_nested_settings():
    e = settings_from(
        EmbedSettings,
        parse(
            "embed",
            "--input",
            "a",
            "b",
            "--output",
            "o",
            "--model",
            "m",
            "--id-column",
            "sku",
            "--image-column",
            "image",
            "--status-column",
            "",
            "--batch-size",
            "8",
        ),
    )
    assert e.inputs == ("a", "b") and e.batch_size == 8
    assert e.columns == Columns(id="sku", image="image", status=None)
    f = settings_from(
        FinetuneSettings,
        parse(
            "finetune",
            "--train",
            "a",
            "--val",
            "b",
            "--output",
            "o",
            "--freeze-image",
            "--freeze-text",
            "--epochs",
            "0",
            "--caption-column",
            "text",
        ),
    )
    assert f.trainer.freeze == {"image", "text"} and f.trainer.epochs == 0 and f.columns.caption == "text"
    assert f.columns.query == "query" and f.columns.split == "split"


BAD_EMBED = [
    (dict(batch_size=0), "--batch-size must be >= 1"),
    (dict(fusion="mean"), "--fusion must be one of weighted, attention"),
    (dict(alpha=-1.0), "--alpha"),
    (dict(alpha=0.0, beta=0.0), "not both 0"),
    (dict(preprocess="gpu"), "--preprocess must be one of auto, pil, tensor"),
    (dict(precision="int8"), "--precision must be one of"),
    (dict(decode_ahead="yes"), "--decode-ahead must be one of"),
    (dict(duplicate_ids="keep"), "--duplicate-ids must be one of reject, allow"),
    (dict(max_image_pixels=0), "--max-image-pixels must be >= 1"),
    (dict(engine="flink"), "--engine must be one of beam, spark"),
    (dict(spark_master="yarn"), "--spark-master applies to --engine spark only"),
    (dict(spark_conf=("a=b",)), "--spark-conf applies to --engine spark only"),
    (dict(engine="spark", spark_conf=("spark.executor.memory",)), "expected KEY=VALUE"),
    (dict(engine="spark", spark_conf=("=4g",)), "expected KEY=VALUE"),
    (dict(engine="spark", spark_master=" "), "--spark-master is empty"),
    (dict(engine="spark", large_model=True), "with --engine spark each Python worker loads its own"),
]


@pytest.mark.parametrize("change,message", BAD_EMBED)
def test_bad_embed_settings_name_the_flag(change, message):
    with pytest.raises(SettingsError, match=message):
        EmbedSettings(**EMBED, **change)


@pytest.mark.parametrize("make,message", [
    (lambda: BuildSettings("e", "i", vector="both"), "--vector must be one of fused, image, text"),
    (lambda: BuildSettings("e", "i", factory="IVF256,PQ16"), "polysemous"),
    (lambda: BuildSettings("e", "i", nprobe=0), "--nprobe must be >= 1"),
    (lambda: BuildSettings("e", "i", workers=0), "--workers must be >= 1"),
    (lambda: TrainConfig(batch_size=1), "--batch-size must be >= 2"),
    (lambda: TrainConfig(lr=0), "--lr must be > 0"),
    (lambda: TrainConfig(freeze={"heads"}), "--freeze must be one of image, text"),
    (lambda: FinetuneSettings(("a",), ("b",), "gs://bucket/m"), "must be a local directory"),
    (lambda: FinetuneSettings(("a",), ("b",), "o", image_backbone="vit"), "--image-backbone must be one of resnet18"),
    (lambda: SearchSettings("i"), "give --text, --image or both"),
    (lambda: SearchSettings("i", text="  "), "--text is empty"),
    (lambda: SearchSettings("i", text="x", k=0), "--k must be >= 1"),
    (lambda: SearchSettings("i", text="x", nprobe=0), "--nprobe must be >= 1"),
])  # fmt: skip
def test_bad_settings_of_the_other_commands(make, message):
    with pytest.raises(SettingsError, match=message):
        make()


def test_run_key_holds_what_changes_the_bytes_and_not_how_they_are_computed():
    base = EmbedSettings(**EMBED).keyed()
    assert base == EmbedSettings(**EMBED, decode_ahead="on", restart=True).keyed()
    spark = dict(engine="spark", spark_master="local[2]", spark_conf=("spark.executor.memory=2g",))
    assert EmbedSettings(**EMBED, **spark).keyed() == base  # both engines commit the same shards
    for runtime in (dict(device="cuda"), dict(preprocess="tensor"), dict(precision="bf16"), dict(large_model=True)):
        assert EmbedSettings(**EMBED, **runtime).keyed() == base, runtime  # decided per shard by the Runtime
    for change in (dict(batch_size=8), dict(alpha=0.7), dict(skip_bad_files=True), dict(columns=Columns(id="sku"))):
        assert EmbedSettings(**EMBED, **change).keyed() != base, change
    assert "output" not in base and "inputs" not in base  # the plan's files and their versions are keyed instead


def test_spark_flags_and_secrets_kept_out_of_manifests():
    s = settings_from(
        EmbedSettings,
        parse(
            "embed", "--input", "a", "--output", "o", "--model", "m", "--engine", "spark", "--spark-master",
            "local-cluster[2,1,1024]", "--spark-conf", "spark.a=1", "spark.hadoop.fs.s3a.secret.key=xyz",
            "--spark-conf", "spark.a=2",
        ),
    )  # fmt: skip
    assert (s.engine, s.spark_master) == ("spark", "local-cluster[2,1,1024]")
    assert s.spark_properties() == {"spark.a": "2", "spark.hadoop.fs.s3a.secret.key": "xyz"}
    assert s.as_dict()["spark_conf"] == ["spark.a=1", "spark.hadoop.fs.s3a.secret.key=***", "spark.a=2"]


def rt(**kw) -> Runtime:
    return resolve_runtime(
        EmbedSettings(**EMBED, **{k: v for k, v in kw.items() if k not in ("cuda", "recipe")}),
        cuda_available=kw.get("cuda", False),
        tensor_recipe=kw.get("recipe", True),
    )


def test_runtime_resolution():
    # auto: the tensor path wherever the checkpoint has a tensor recipe, on a CPU too (pixel parity,
    # tests/test_preprocess_parity.py); the PIL path without one and with --large-model
    assert rt() == Runtime("cpu", "tensor", "fp32", "per_process", TENSOR_REVISION)
    assert rt(cuda=True) == Runtime("cuda", "tensor", "bf16", "per_process", TENSOR_REVISION)
    assert rt(cuda=True, device="cpu") == Runtime("cpu", "tensor", "fp32", "per_process", TENSOR_REVISION)
    assert rt(recipe=False) == Runtime("cpu", "pil", "fp32", "per_process")  # e.g. SigLIP's squash
    assert rt(cuda=True, recipe=False) == Runtime("cuda", "pil", "bf16", "per_process")
    assert rt(large_model=True) == Runtime("cpu", "pil", "fp32", "per_machine")
    assert rt(cuda=True, large_model=True) == Runtime("cuda", "pil", "bf16", "per_machine")
    # asked for, the tensor path runs with --large-model too (on the workers' CPUs)
    assert rt(cuda=True, large_model=True, preprocess="tensor") == Runtime(
        "cuda", "tensor", "bf16", "per_machine", TENSOR_REVISION
    )
    assert rt(cuda=True, precision="fp16", preprocess="pil") == Runtime("cuda", "pil", "fp16", "per_process")
    assert rt(preprocess="pil") == Runtime("cpu", "pil", "fp32", "per_process")
    assert rt(precision="bf16") == rt(precision="fp32") == rt()  # autocast is CUDA-only
    assert rt(preprocess="tensor") == rt()  # asked differently, resolved the same: shards may be shared
    with pytest.raises(SettingsError, match="not resize-short-side"):
        rt(preprocess="tensor", recipe=False)
    with pytest.raises(SettingsError, match="sees no CUDA device"):
        rt(device="cuda")


def test_the_preprocessing_path_does_not_depend_on_the_device():
    """A driver whose workers are elsewhere still knows it (the nightly comparison uses it)."""
    for kw in ({}, {"preprocess": "pil"}, {"large_model": True}, {"recipe": False}):
        on = {rt(cuda=cuda, **kw).preprocess for cuda in (False, True)}
        settings = EmbedSettings(**EMBED, **{k: v for k, v in kw.items() if k != "recipe"})
        assert on == {resolve_preprocess(settings, tensor_recipe=kw.get("recipe", True))}, kw


def test_a_side_stream_for_decode_ahead_needs_the_model_on_cuda():
    """--decode-ahead stream resolves as the tensor path on CUDA; where nothing is decoded on a CUDA
    device (a CPU run, --large-model workers) it is an error that names the working setting."""
    assert rt(cuda=True, decode_ahead="stream") == rt(cuda=True)
    assert rt(cuda=True, decode_ahead="stream", preprocess="pil") == rt(cuda=True, preprocess="pil")
    with pytest.raises(SettingsError, match="device is cpu: use --decode-ahead on"):
        rt(decode_ahead="stream")
    with pytest.raises(SettingsError, match="device is cpu: use --decode-ahead on"):
        rt(cuda=True, device="cpu", decode_ahead="stream")
    with pytest.raises(SettingsError, match="--large-model the workers decode on their CPUs: use --decode-ahead on"):
        rt(cuda=True, large_model=True, decode_ahead="stream")


def test_small_batches_on_cuda_are_warned_about():
    cuda, cpu = rt(cuda=True), rt()
    assert "--batch-size 64 on cuda" in small_batch_warning(cuda, 64) and "256 or more" in small_batch_warning(cuda, 64)
    assert small_batch_warning(cuda, 256) is None and small_batch_warning(cpu, 8) is None


def test_a_shared_model_is_shared_only_by_runs_that_load_it_the_same_way():
    s = EmbedSettings(inputs=["a"], output="o", model="m")
    tag = shared_model_tag(s, "sha256:1")
    assert tag == shared_model_tag(dataclasses.replace(s, batch_size=32), "sha256:1")  # shapes follow the batch
    assert tag != shared_model_tag(s, "sha256:2")
    assert tag != shared_model_tag(dataclasses.replace(s, precision="fp32"), "sha256:1")
    exact = dataclasses.replace(s, exact_shapes=True)
    assert shared_model_tag(exact, "sha256:1") not in (
        tag,
        shared_model_tag(dataclasses.replace(exact, batch_size=32), "sha256:1"),
    )
