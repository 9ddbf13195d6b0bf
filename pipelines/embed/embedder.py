"""The embedder: bytes + caption in, vectors out (no Beam: Spark executors and the unit worker use it
as it is; pipelines/embed/handler.py adapts it to Beam's RunInference `ModelHandler`).

A batch is a list of `ItemInput`; the result list is aligned with it, one `Embedded` or
`Rejected` per item. The unit worker calls it per model batch (see pipelines/embed/__init__.py
for why). Decoding happens here, per
item, so an undecodable image rejects that item and not its batch (Beam's
`with_exception_handling` would fail the whole batch). If the batched forward pass itself
fails, items are retried one by one to isolate the culprit.

With --large-model the model is a proxy to the one shared model (Beam's MultiProcessShared):
each worker process still decodes, preprocesses (`encoders.models.load_preprocessing`: the
checkpoint's processor and tokenizer, no weights) and tokenizes, and only pixel and token
tensors cross to the model's process, which runs the forward passes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from encoders.images import ImageRejected, load_image, open_image
from encoders.loading import ModelLoadError
from encoders.models import ResolvedModel, load_preprocessing, load_towers, resolve_model
from encoders.stages import NO_CLOCK, StageClock
from encoders.tensor_images import TensorPreprocessor
from encoders.towers import Preprocessing, Towers, embed_pairs, text_rows
from pipelines.embed.outcomes import Embedded, ItemInput, Outcome, Rejected
from pipelines.embed.settings import EmbedSettings, Runtime, resolve_runtime, small_batch_warning
from pipelines.threads import ThreadLayout, ThreadShare, decide, large_model_client, large_model_server, usable_cores

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def wire_dtype(runtime: Runtime) -> torch.dtype:
    """The dtype --large-model workers send pixel batches in: the forward's autocast dtype (bf16,
    fp16) on CUDA, else float32. Half the bytes, the same vectors: both families' first op on
    the pixels is a Conv2d (CLIP-like patch embedding, which first casts its input to the weights'
    float32, exactly, for a bf16/fp16 input; ResNet's conv1), and autocast casts a conv's input
    to its dtype, so rounding in the worker gives the tensor the conv would have rounded to."""
    amp = AMP_DTYPES[runtime.precision]
    return amp if amp is not None and runtime.device.startswith("cuda") else torch.float32


@dataclass
class Prepared:
    """A batch after decoding: rejects filled in, `images` (PIL list or pixel tensor) for `ok` items."""

    results: list
    ok: list[int]
    images: object
    tokens: dict | None = None  # the text tower's tokens for the `ok` items' captions (None: tokenize later)
    ready: Any = None  # --decode-ahead stream: a CUDA event recorded on the side stream after the work


class Embedder:
    """Decodes, preprocesses and runs the towers for batches of items; `load_model` loads the
    towers (the caller keeps them: once per worker process, or one per machine with --large-model).

    `model`: the --model spec resolved once by the driver (resolved here, on first use, when not
    given); `runtime`: the Runtime the driver resolved when the workers are its machine (None:
    resolved here, once, from this machine); `threads`: how the engine runs processes on a
    machine (pipelines/threads.py), which decides each one's torch threads. Process-wide set-up
    (PIL's limit, torch threads) is the worker set-up hook's (pipelines/embed/process.py).
    """

    def __init__(
        self,
        settings: EmbedSettings,
        *,
        model: ResolvedModel | None = None,
        runtime: Runtime | None = None,
        threads: ThreadLayout | None = None,
    ):
        self.settings = settings
        self._resolved = model
        self._given_runtime = runtime
        self.threads = threads or ThreadLayout("beam")
        self._runtime: Runtime | None = None
        self._tensor_cache = None
        self._described = None
        self._preprocessing: Preprocessing | None = None
        self._side_streams: dict[str, Any] = {}

    def resolved_model(self) -> ResolvedModel:
        """The resolved --model (resolved here once when the driver did not hand it over)."""
        if self._resolved is None:
            self._resolved = resolve_model(self.settings.model, allow_pickle=self.settings.allow_pickle)
        return self._resolved

    def runtime(self) -> Runtime:
        """How this machine runs the settings (the driver's when given, else resolved here once,
        without loading weights), with the thread share of the process that runs the model."""
        if self._runtime is None:
            rt = self._given_runtime
            if rt is None:
                recipe = self.resolved_model().tensor_recipe is not None
                rt = resolve_runtime(self.settings, cuda_available=torch.cuda.is_available(), tensor_recipe=recipe)
            self._runtime = replace(rt, threads=self.thread_share().as_dict())
        return self._runtime

    def model_threads(self) -> ThreadLayout:
        """The layout of the process that runs the forward passes (the --large-model server's, if shared)."""
        return large_model_server(self.threads) if self.settings.large_model else self.threads

    def worker_threads(self) -> ThreadLayout:
        """The layout of a worker process: the model's, or, with --large-model, a preprocessing client's."""
        return large_model_client(self.threads) if self.settings.large_model else self.threads

    def thread_share(self) -> ThreadShare:
        """The model process's torch threads on this machine (what the set-up hook applies there)."""
        return decide(self.model_threads(), usable_cores(), os.environ)

    @property
    def fixed_rows(self) -> int | None:
        """Rows per model call under --exact-shapes (None: as many as the batch has)."""
        return self.settings.batch_size if self.settings.exact_shapes else None

    def load_model(self) -> Towers:
        """The towers on the Runtime's device, with its autocast dtype and --exact-shapes rows."""
        rt = self.runtime()
        if warning := small_batch_warning(rt, self.settings.batch_size):
            log.warning(warning)
        towers = load_towers(self.resolved_model(), device=rt.device)
        towers.amp_dtype = AMP_DTYPES[rt.precision]
        towers.fixed_rows = self.fixed_rows
        if self.settings.fusion == "attention" and towers.learned_fusion is None:
            raise ModelLoadError(
                f"--fusion attention: {self.settings.model} has no learned attention fusion; fine-tune it with "
                "`fusionindex finetune --fusion attention`, or use --fusion weighted"
            )
        return towers

    def prepare(self, batch: Sequence[ItemInput], model: Towers, clock: StageClock = NO_CLOCK) -> Prepared:
        """Decode and preprocess (CPU threads or the GPU) and tokenize the captions; safe to run
        ahead of `complete` (with a clock of its own: a clock belongs to one thread). Through a
        --large-model proxy the PIL images become a pixel tensor here too, in this process
        (`worker_preprocessing`), so that only tensors cross to the model's process."""
        prepared = self._decoded(batch, model, clock)
        local = isinstance(model, Towers)
        pre = model if local else self.worker_preprocessing()
        if not local and prepared.ok:
            with clock("decode"):  # the processor's resize / crop / normalise, as encode_images does it
                try:
                    pixels = prepared.images
                    if not isinstance(pixels, torch.Tensor):  # PIL images (the tensor path made pixels)
                        pixels = pre.pixels(pixels)
                    prepared.images = pixels.to(wire_dtype(self.runtime()))
                except Exception as exc:  # the model's process retries it, isolating the culprit row
                    log.warning("preprocessing a batch failed (%s); retrying in the model call", exc)
        texts = text_rows([batch[i].caption for i in prepared.ok], self.fixed_rows)
        if texts:
            with clock("tokenize"):
                try:
                    prepared.tokens = pre.text_tokens(texts)
                except Exception as exc:  # complete() tokenizes again and isolates the culprit row
                    log.warning("tokenizing a batch ahead failed (%s); retrying in the model call", exc)
        return prepared

    def prepare_ahead(self, batch: Sequence[ItemInput], model: Towers, clock: StageClock = NO_CLOCK) -> Prepared:
        """`prepare` as the decode-ahead thread runs it. With --decode-ahead stream its GPU work
        (decode, resize) goes to a CUDA stream of its own, so that it can overlap the forward
        passes on the default stream instead of queueing behind them; `complete` makes its stream
        wait for that work and keeps the allocator from reusing the pixels' memory until then
        (PyTorch's documented pattern: wait_event + record_stream). Not yet measured on a GPU."""
        if self.settings.decode_ahead != "stream":
            return self.prepare(batch, model, clock)
        device = torch.device(model.device)
        side = self._side_streams.get(str(device))
        if side is None:
            side = self._side_streams[str(device)] = torch.cuda.Stream(device)
        with torch.cuda.stream(side):
            prepared = self.prepare(batch, model, clock)
            prepared.ready = torch.cuda.Event()
            prepared.ready.record(side)
        return prepared

    def worker_preprocessing(self) -> Preprocessing:
        """The checkpoint's preprocessing and tokenizer without its weights (loaded once), for
        a worker process whose model is a --large-model proxy; same fixed_rows as the model."""
        if self._preprocessing is None:
            pre = load_preprocessing(self.resolved_model())
            pre.fixed_rows = self.fixed_rows
            self._preprocessing = pre
        return self._preprocessing

    def _decoded(self, batch: Sequence[ItemInput], model: Towers, clock: StageClock) -> Prepared:
        results: list[Outcome | None] = [None] * len(batch)
        preprocessor = self._tensor_preprocessor(model)
        if preprocessor is not None:
            pixels, rejected = preprocessor([item.image for item in batch], clock)
            with clock("assemble"):
                for i, exc in enumerate(rejected):
                    if exc is not None:
                        results[i] = Rejected(exc.reason, str(exc))
                return Prepared(results, [i for i, exc in enumerate(rejected) if exc is None], pixels)
        s = self.settings
        images = []
        probe = 0.0
        with clock("decode"):
            for i, item in enumerate(batch):
                t = time.perf_counter()
                try:
                    opened = open_image(item.image, max_pixels=s.max_image_pixels, max_bytes=s.max_image_bytes)
                    probe += time.perf_counter() - t
                    images.append(load_image(opened, item.image))
                except ImageRejected as exc:
                    results[i] = Rejected(exc.reason, str(exc))
            clock.add("probe", probe)  # PIL's Image.open: the header read (a stage of its own)
        return Prepared(results, [i for i, r in enumerate(results) if r is None], images)

    def complete(
        self, prepared: Prepared, batch: Sequence[ItemInput], model: Towers, clock: StageClock = NO_CLOCK
    ) -> list[Outcome]:
        """Forward passes and fusion for the prepared items; results aligned with `batch`."""
        ok = prepared.ok
        if prepared.ready is not None:  # made on the side stream (prepare_ahead)
            current = torch.cuda.current_stream(torch.device(model.device))
            current.wait_event(prepared.ready)
            if isinstance(prepared.images, torch.Tensor) and prepared.images.is_cuda:
                prepared.images.record_stream(current)
        with clock("assemble"):
            captions, ids = [batch[i].caption for i in ok], [batch[i].id for i in ok]
        outcomes = self._embed(model, prepared.images, captions, ids, clock, prepared.tokens)
        with clock("assemble"):
            results = list(prepared.results)
            for i, res in zip(ok, outcomes):
                results[i] = res
        return results

    def _describe(self, model) -> dict:
        """model.describe(), once per model (a --large-model proxy answers method calls only)."""
        if self._described is None or self._described[0] != id(model):
            self._described = (id(model), model.describe())
        return self._described[1]

    def _tensor_preprocessor(self, model: Towers) -> TensorPreprocessor | None:
        """The tensor path where the Runtime says so: on the model's device, or, through a
        --large-model proxy, on this worker process's CPU (the pixels then cross as tensors)."""
        if self.runtime().preprocess != "tensor":
            return None
        local = isinstance(model, Towers)
        recipe = model.recipe() if local else self.worker_preprocessing().recipe()
        key = (id(model), recipe)
        if self._tensor_cache is None or self._tensor_cache[0] != key:
            s = self.settings
            device = str(model.device) if local else "cpu"
            pre = TensorPreprocessor(recipe, device, max_pixels=s.max_image_pixels, max_bytes=s.max_image_bytes)
            self._tensor_cache = (key, pre)
        return self._tensor_cache[1]

    def _embed(self, model: Towers, images, captions, ids, clock: StageClock = NO_CLOCK, tokens=None) -> list[Outcome]:
        fusion = self.settings.weighted_fusion() or self._describe(model)["learned_fusion"]
        try:
            out = embed_pairs(model, fusion, images, captions, self.fixed_rows, clock, tokens)
        except Exception as exc:  # isolate the failing item(s): retry one by one
            if len(images) <= 1:
                log.warning("item %s failed to embed: %s", ids[0] if ids else "?", exc)
                return [Rejected("embed_failed", f"{type(exc).__name__}: {exc}")] * len(images)
            log.warning("batch of %d failed (%s); retrying item by item", len(images), exc)
            return [
                r
                for j in range(len(images))
                for r in self._embed(model, images[j : j + 1], captions[j : j + 1], ids[j : j + 1], clock)
            ]
        with clock("assemble"):
            return [
                Embedded(out.image[j], out.text[j], out.fused[j], bool(out.has_text[j])) for j in range(len(images))
            ]
