"""--large-model: worker processes preprocess and tokenize without the weights, and send tensors
to the one shared model (a real Beam MultiProcessShared server here), for both model families."""

from __future__ import annotations

import logging
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.multi_process_shared import MultiProcessShared
from PIL import Image

from encoders.dual import DualTowers
from encoders.loading import ModelLoadError
from encoders.models import load_preprocessing, load_towers, save_model
from encoders.random_models import make_random_bert
from encoders.text import MAX_CAPTION_CHARS
from encoders.towers import Preprocessing, Towers
from pipelines.datasets.img2dataset import encode
from pipelines.datasets.sample import draw
from pipelines.embed.beam import model_copies_warning, warn_model_copies
from pipelines.embed.handler import EmbeddingModelHandler, wire_dtype
from pipelines.embed.outcomes import Embedded, ItemInput, Rejected
from pipelines.embed.settings import EmbedSettings, Runtime

CAPTIONS = ["a red circle", "", "word " * 400, "x" * (MAX_CAPTION_CHARS + 50) + " tail"]


@pytest.fixture(scope="module")
def tiny_dual(tmp_path_factory) -> str:
    bert = make_random_bert(tmp_path_factory.mktemp("bert"))
    towers = DualTowers.create(str(bert), projection_dim=16, image_size=32, device="cpu")
    return str(save_model(towers, tmp_path_factory.mktemp("dual") / "m"))


def images() -> list[Image.Image]:
    """Different sizes, modes and aspects (bound_aspect crops the 6:1 one)."""
    return [
        draw("circle", (200, 0, 0), (255, 255, 255), 48),
        draw("square", (0, 0, 200), (255, 255, 255), 40).convert("RGBA"),
        draw("triangle", (0, 150, 0), (255, 255, 255), 64).convert("L"),
        Image.new("RGB", (300, 50), (30, 60, 90)),
    ]


@pytest.mark.parametrize("family", ["clip", "dual"])
@pytest.mark.parametrize("fixed_rows", [None, 6])
def test_preprocessing_without_weights_gives_the_towers_own_tensors(family, fixed_rows, request):
    spec = request.getfixturevalue("tiny_clip" if family == "clip" else "tiny_dual")
    towers = load_towers(spec, device="cpu")
    pre = load_preprocessing(spec)
    assert not isinstance(pre, Towers) and isinstance(pre, Preprocessing)
    towers.fixed_rows = pre.fixed_rows = fixed_rows
    pixels = pre.pixels(images())
    assert pixels.dtype == torch.float32
    assert torch.equal(pixels, towers.pixels(images()))
    # and the forward on those pixels is encode_images' own result
    assert torch.equal(towers.encode_pixels(pixels), towers.encode_images(images()))
    ours, theirs = pre.text_tokens(CAPTIONS), towers.text_tokens(CAPTIONS)
    assert ours.keys() == theirs.keys() == set(towers.token_keys)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert len(ours["input_ids"]) == (fixed_rows or len(CAPTIONS))
    assert torch.equal(towers.encode_texts(CAPTIONS, tokens=ours), towers.encode_texts(CAPTIONS))


@pytest.mark.parametrize("family", ["clip", "dual"])
def test_preprocessing_reads_no_weights(family, request, tmp_path):
    """Weight files overwritten with junk: the towers no longer load, the preprocessing still does."""
    spec = request.getfixturevalue("tiny_clip" if family == "clip" else "tiny_dual")
    broken = shutil.copytree(spec, tmp_path / "broken")
    for f in broken.rglob("*.safetensors"):
        f.write_bytes(b"not weights")
    with pytest.raises(Exception):  # noqa: B017 (safetensors and transformers raise several types)
        load_towers(str(broken), device="cpu")
    pre = load_preprocessing(str(broken))
    assert torch.equal(pre.pixels(images()), load_preprocessing(spec).pixels(images()))


def test_preprocessing_of_a_directory_without_a_processor_says_how_to_fix_it(tiny_clip, tmp_path):
    bare = shutil.copytree(tiny_clip, tmp_path / "bare")
    for f in ("preprocessor_config.json", "processor_config.json"):
        (bare / f).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="save"):
        load_preprocessing(str(bare))


def test_pixels_cross_in_the_forward_precision_on_cuda_else_float32():
    rt = lambda device, precision: Runtime(device, "pil", precision, "per_machine")  # noqa: E731
    assert wire_dtype(rt("cuda", "bf16")) == torch.bfloat16
    assert wire_dtype(rt("cuda:1", "fp16")) == torch.float16
    assert wire_dtype(rt("cuda", "fp32")) == torch.float32
    assert wire_dtype(rt("cpu", "fp32")) == torch.float32


@pytest.mark.parametrize("family", ["clip", "dual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_pixel_batch_gives_the_same_vectors_under_autocast(family, dtype, request):
    """wire_dtype's claim: the first op (a conv) casts its input to the autocast dtype anyway.
    Checked with CPU autocast, whose cast policy for conv2d is CUDA's (no GPU here)."""
    spec = request.getfixturevalue("tiny_clip" if family == "clip" else "tiny_dual")
    towers = load_towers(spec, device="cpu")
    pixels = towers.pixels(images())
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        full, half = towers.image_features(pixels), towers.image_features(pixels.to(dtype))
    assert not torch.equal(pixels, pixels.to(dtype).float())  # the cast did round
    assert torch.equal(full, half)


def items() -> list[ItemInput]:
    return [
        ItemInput("a", "red circle", encode(draw("circle", (200, 0, 0), (255, 255, 255), 40), "jpg")),
        ItemInput("b", None, encode(draw("square", (0, 0, 200), (255, 255, 255), 40), "png")),
        ItemInput("c", "junk", b"not an image"),
        ItemInput("d", "a green triangle " * 50, encode(draw("triangle", (0, 150, 0), (255, 255, 255), 56), "jpg")),
    ]


@pytest.mark.parametrize("exact_shapes", [False, True])
def test_through_the_shared_model_only_tensors_cross_and_vectors_are_the_local_ones(tiny_clip, exact_shapes):
    settings = EmbedSettings(inputs=(), output="", model=tiny_clip, batch_size=4, exact_shapes=exact_shapes)
    handler = EmbeddingModelHandler(settings)
    shared = MultiProcessShared(handler.load_model, tag=f"test-{uuid.uuid4().hex}", always_proxy=True)
    proxy = shared.acquire()
    try:
        assert not isinstance(proxy, Towers)
        batch = items()
        prepared = handler.prepare(batch, proxy)
        # what will cross: a float32 pixel tensor (fp32 on a CPU) and the tokens, made here
        assert isinstance(prepared.images, torch.Tensor) and prepared.images.dtype == torch.float32
        assert prepared.ok == [0, 1, 3] and isinstance(prepared.results[2], Rejected)
        assert set(prepared.tokens) == {"input_ids", "attention_mask"}
        got = handler.complete(prepared, batch, proxy)
        # torch's ForkingPickler reductions carry tensors through the proxy's connection as
        # shared memory (a received tensor's storage is shared), not as pickled bytes
        assert proxy.encode_pixels(prepared.images).is_shared()
    finally:
        shared.release(proxy)
    local = handler.load_model()
    want = handler.complete(handler.prepare(batch, local), batch, local)
    for g, w in zip(got, want):
        assert type(g) is type(w)
        if isinstance(g, Embedded):
            assert torch.equal(torch.from_numpy(g.fused), torch.from_numpy(w.fused)) and g.has_text == w.has_text


def test_several_processes_on_one_gpu_without_large_model_are_warned_about(caplog):
    warn = model_copies_warning
    assert "add --large-model" in warn(8, "multi_processing", "cuda", large_model=False)
    assert warn(8, "multi_processing", "cuda", large_model=True) is None
    assert warn(8, "multi_processing", "cpu", large_model=False) is None  # cores, not one device
    assert warn(8, "multi_threading", "cuda", large_model=False) is None  # one process, one model
    assert warn(1, "multi_processing", "cuda:0", large_model=False) is None
    assert warn(None, None, "cuda", large_model=False) is None
    # PipelineOptions, not pipeline_options: that one sets worker thread counts in os.environ
    options = PipelineOptions(["--direct_num_workers", "4", "--direct_running_mode", "multi_processing"])
    with caplog.at_level(logging.WARNING):
        warn_model_copies(options, "cuda", False)
        warn_model_copies(options, "cpu", False)
    assert [r.getMessage().count("4 worker processes") for r in caplog.records] == [1]


@pytest.mark.beam
def test_the_tensor_path_runs_on_the_workers_with_a_shared_model(tmp_path, tiny_clip, sample_dir):
    """--preprocess tensor --large-model: the tensor preprocessing runs in the worker process (its
    CPU) and sends pixels; the vectors are the in-process tensor path's on this CPU."""
    from index_builder.embeddings import arrow_to_vectors, list_shards
    from pipelines.embed.run import run_embed

    def run(name: str, **kw) -> tuple[dict, pa.Table]:
        s = EmbedSettings(inputs=[f"{sample_dir}/*.parquet"], output=str(tmp_path / name), model=tiny_clip, **kw)
        m = run_embed(s).to_dict()
        return m, pa.concat_tables([pq.read_table(p.path) for p in list_shards(s.output)])

    shared, a = run("shared", preprocess="tensor", large_model=True)
    local, b = run("local", preprocess="tensor")
    assert shared["runtime"]["preprocess"] == "tensor" and shared["runtime"]["model_sharing"] == "per_machine"
    assert shared["counts"] == local["counts"] and a.column("id").equals(b.column("id"))
    assert {"decode", "tokenize"} <= set(shared["timings"]["stages_s"])
    for column in ("image_embedding", "fused_embedding"):
        assert np.allclose(arrow_to_vectors(a.column(column))[0], arrow_to_vectors(b.column(column))[0], atol=1e-6)
