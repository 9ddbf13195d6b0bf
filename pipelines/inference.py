"""The model handler (Beam's RunInference `ModelHandler` interface): bytes + caption in, vectors out.

A batch is a list of `ItemInput`; the result list is aligned with it, one `Embedded` or
`Rejected` per item. `pipelines.embed.EmbedUnit` calls it per row group (see there why), and
it works unchanged inside `RunInference(handler)` too. Decoding happens here, per item, so an undecodable image rejects that
item and not its batch (Beam's `with_exception_handling` would fail the whole batch). If the
batched forward pass itself fails, items are retried one by one to isolate the culprit.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from apache_beam.ml.inference.base import ModelHandler

from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from encoders.fusion import Fusion
from encoders.models import load_towers
from encoders.tensor_images import TensorPreprocessor
from encoders.towers import Towers, embed_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemInput:
    id: str
    caption: str | None
    image: bytes | None


@dataclass(frozen=True)
class Embedded:
    image: np.ndarray
    text: np.ndarray
    fused: np.ndarray
    has_text: bool


@dataclass(frozen=True)
class Rejected:
    reason: str
    message: str


@dataclass
class Prepared:
    """A batch after decoding: rejects filled in, `images` (PIL list or pixel tensor) for `ok` items."""

    results: list
    ok: list[int]
    images: object


# auto: tensor path (GPU decode + resize) on CUDA, PIL (exactly the checkpoint's processor) elsewhere
PREPROCESS_MODES = ("auto", "pil", "tensor")
# auto: bf16 autocast on CUDA, fp32 on CPU; fp32 / bf16 / fp16 force it on CUDA
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
THREADS_ENV = "FUSIONINDEX_TORCH_THREADS"


class EmbeddingModelHandler(ModelHandler[ItemInput, "Embedded | Rejected", Towers]):
    """Loads the towers once per worker process (RunInference shares them across threads).

    `fusion=None` means the model's own learned attention fusion.
    """

    def __init__(
        self,
        model: str,
        *,
        fusion: Fusion | None,
        batch_size: int = 64,
        device: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_pickle: bool = False,
        large_model: bool = False,
        model_copies: int | None = None,
        preprocess: str = "auto",
        precision: str = "auto",
    ):
        # max_batch_weight is left out: it crashes BatchElements in Beam 2.77.
        super().__init__(
            min_batch_size=1, max_batch_size=batch_size, large_model=large_model, model_copies=model_copies
        )
        self._model = model
        self._fusion = fusion
        self._device = device
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._allow_pickle = allow_pickle
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS_MODES)}")
        self._preprocess = preprocess
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}")
        self._precision = precision
        self._tensor_cache = None
        self._described = None

    def load_model(self) -> Towers:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        threads = os.environ.get(THREADS_ENV)
        if threads:  # set by run_embed when several worker processes share the CPUs
            torch.set_num_threads(int(threads))
        # PIL refuses images above 2 x MAX_IMAGE_PIXELS inside Image.open; never let that be
        # stricter than --max-image-pixels (raised only, so other caps in the process hold).
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, self._max_pixels)
        towers = load_towers(self._model, device=self._device, allow_pickle=self._allow_pickle)
        if self._precision != "auto":
            towers.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self._precision]
        if self._fusion is None and towers.learned_fusion is None:
            raise ValueError(f"{self._model} has no learned attention fusion; use --fusion weighted or fine-tune with --fusion attention")
        return towers

    def prepare(self, batch: Sequence[ItemInput], model: Towers) -> "Prepared":
        """Decode and preprocess (CPU threads or the GPU); safe to run ahead of `complete`."""
        results: list[Embedded | Rejected | None] = [None] * len(batch)
        preprocessor = self._tensor_preprocessor(model)
        if preprocessor is not None:
            pixels, rejected = preprocessor([item.image for item in batch])
            for i, exc in enumerate(rejected):
                if exc is not None:
                    results[i] = Rejected(exc.reason, str(exc))
            return Prepared(results, [i for i, exc in enumerate(rejected) if exc is None], pixels)
        images = []
        for i, item in enumerate(batch):
            try:
                images.append(decode_image(item.image, max_pixels=self._max_pixels, max_bytes=self._max_bytes))
            except ImageRejected as exc:
                results[i] = Rejected(exc.reason, str(exc))
        return Prepared(results, [i for i, r in enumerate(results) if r is None], images)

    def complete(self, prepared: "Prepared", batch: Sequence[ItemInput], model: Towers) -> list["Embedded | Rejected"]:
        """Forward passes and fusion for the prepared items; results aligned with `batch`."""
        ok = prepared.ok
        outcomes = self._embed(model, prepared.images, [batch[i].caption for i in ok], [batch[i].id for i in ok])
        results = list(prepared.results)
        for i, res in zip(ok, outcomes):
            results[i] = res
        return results

    def run_inference(
        self, batch: Sequence[ItemInput], model: Towers, inference_args: Optional[dict[str, Any]] = None
    ) -> Iterable["Embedded | Rejected"]:
        return self.complete(self.prepare(batch, model), batch, model)

    def _describe(self, model) -> dict:
        """model.describe(), once per model (a --large-model proxy answers method calls only)."""
        if self._described is None or self._described[0] != id(model):
            self._described = (id(model), model.describe())
        return self._described[1]

    def _tensor_preprocessor(self, model: Towers) -> TensorPreprocessor | None:
        """The tensor path when asked for (or, by default, on CUDA) and the model's recipe allows.

        Not through a --large-model proxy: worker processes decode with PIL in parallel and
        send images to the one shared model, which preprocesses them itself.
        """
        if not isinstance(model, Towers):
            return None
        use = self._preprocess == "tensor" or (self._preprocess == "auto" and str(model.device).startswith("cuda"))
        recipe = model.recipe() if use else None
        if use and recipe is None and self._preprocess == "tensor":
            raise ValueError("--preprocess tensor: this model's image processor is not resize-short-side + center-crop; use --preprocess pil")
        if recipe is None:
            return None
        key = (id(model), recipe)
        if self._tensor_cache is None or self._tensor_cache[0] != key:
            self._tensor_cache = (key, TensorPreprocessor(recipe, str(model.device), max_pixels=self._max_pixels, max_bytes=self._max_bytes))
        return self._tensor_cache[1]

    def _embed(self, model: Towers, images, captions, ids) -> list["Embedded | Rejected"]:
        try:
            out = embed_pairs(model, self._fusion or self._describe(model)["learned_fusion"], images, captions)
        except Exception as exc:  # isolate the failing item(s): retry one by one
            if len(images) <= 1:
                log.warning("item %s failed to embed: %s", ids[0] if ids else "?", exc)
                return [Rejected("embed_failed", f"{type(exc).__name__}: {exc}")] * len(images)
            log.warning("batch of %d failed (%s); retrying item by item", len(images), exc)
            return [r for j in range(len(images)) for r in self._embed(model, images[j : j + 1], captions[j : j + 1], ids[j : j + 1])]
        return [Embedded(out.image[j], out.text[j], out.fused[j], bool(out.has_text[j])) for j in range(len(images))]

    def get_metrics_namespace(self) -> str:
        return "fusionindex"
