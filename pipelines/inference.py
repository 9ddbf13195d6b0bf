"""The model handler (Beam's RunInference `ModelHandler` interface): bytes + caption in, vectors out.

A batch is a list of `ItemInput`; the result list is aligned with it, one `Embedded` or
`Rejected` per item. `pipelines.embed.EmbedUnit` calls it per row group (see there why), and
it works unchanged inside `RunInference(handler)` too. Decoding happens here, per item, so an undecodable image rejects that
item and not its batch (Beam's `with_exception_handling` would fail the whole batch). If the
batched forward pass itself fails, items are retried one by one to isolate the culprit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from PIL import Image
from apache_beam.ml.inference.base import ModelHandler

from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from encoders.fusion import Fusion
from encoders.models import load_towers
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

    def load_model(self) -> Towers:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # PIL refuses images above 2 x MAX_IMAGE_PIXELS inside Image.open; never let that be
        # stricter than --max-image-pixels (raised only, so other caps in the process hold).
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, self._max_pixels)
        towers = load_towers(self._model, device=self._device, allow_pickle=self._allow_pickle)
        if self._fusion is None and towers.learned_fusion is None:
            raise ValueError(f"{self._model} has no learned attention fusion; use --fusion weighted or fine-tune with --fusion attention")
        return towers

    def run_inference(
        self, batch: Sequence[ItemInput], model: Towers, inference_args: Optional[dict[str, Any]] = None
    ) -> Iterable["Embedded | Rejected"]:
        results: list[Embedded | Rejected | None] = [None] * len(batch)
        ok: list[int] = []
        images = []
        for i, item in enumerate(batch):
            try:
                images.append(decode_image(item.image, max_pixels=self._max_pixels, max_bytes=self._max_bytes))
                ok.append(i)
            except ImageRejected as exc:
                results[i] = Rejected(exc.reason, str(exc))
        for i, res in zip(ok, self._embed(model, images, [batch[i].caption for i in ok], [batch[i].id for i in ok])):
            results[i] = res
        return results

    def _embed(self, model: Towers, images, captions, ids) -> list["Embedded | Rejected"]:
        try:
            out = embed_pairs(model, self._fusion or model.learned_fusion, images, captions)
        except Exception as exc:  # isolate the failing item(s): retry one by one
            if len(images) <= 1:
                log.warning("item %s failed to embed: %s", ids[0] if ids else "?", exc)
                return [Rejected("embed_failed", f"{type(exc).__name__}: {exc}")] * len(images)
            log.warning("batch of %d failed (%s); retrying item by item", len(images), exc)
            return [r for j in range(len(images)) for r in self._embed(model, images[j : j + 1], captions[j : j + 1], ids[j : j + 1])]
        return [Embedded(out.image[j], out.text[j], out.fused[j], bool(out.has_text[j])) for j in range(len(images))]

    def get_metrics_namespace(self) -> str:
        return "fusionindex"
