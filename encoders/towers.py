"""Image and text towers behind one interface, and batch embedding with fusion.

Contract of every `Towers`: `encode_images` / `encode_texts` return float32 CPU tensors
[n, dim], L2-normalised, with the model's own preprocessing. The differentiable pieces
(`preprocess_images`, `tokenize`, `image_features`, `text_features`) are what fine-tuning
uses; `encode_*` are the same under `inference_mode`. `learned_fusion` is the attention
fusion saved with a fine-tuned model, or None.

Families: `ClipTowers` (a HF CLIP checkpoint, here) and `DualTowers` (torchvision CNN + HF
text encoder + projection heads, `encoders.dual`). `encoders.models.load_towers` picks one.
Each family's preprocessing (image processor, tokenizer) is a weight-free base class of its
towers, `ClipPreprocessing` / `DualPreprocessing`, which `encoders.models.load_preprocessing`
loads alone: what a --large-model worker process runs before sending tensors to the shared model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from encoders.errors import UsageError
from encoders.fusion import AttentionFusion, Fusion, l2_normalise
from encoders.images import bound_aspect
from encoders.loading import ModelLoadError, check_tokenizer_fits, fingerprint
from encoders.stages import NO_CLOCK, StageClock
from encoders.tensor_images import Recipe, recipe_of
from encoders.text import MAX_CAPTION_CHARS, has_caption
from encoders.tokens import BatchTokenizer

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Preprocessing:
    """The weight-free half of a `Towers`: the checkpoint's image preprocessing and tokenizer.

    `ClipPreprocessing` / `DualPreprocessing` (encoders.dual) hold only processor and tokenizer
    files, so a --large-model worker process can turn images and captions into the very tensors
    the shared model's own `preprocess_images` / `text_tokens` would make, without loading
    weights (`encoders.models.load_preprocessing`); `ClipTowers` / `DualTowers` extend them.
    """

    center_crop: bool = True  # whether preprocessing keeps only the central square
    # Exact shapes: every model call gets exactly this many rows (padding with blank rows) and
    # text its full context, so a row's vectors do not depend on the rows batched with it (GEMM
    # kernels and their rounding follow the shapes). None: shapes follow the batch (faster).
    fixed_rows: int | None = None
    max_text_tokens: int
    token_keys: tuple[str, ...] = ("input_ids", "attention_mask")  # what the text encoder takes
    _tokens: BatchTokenizer | None = None  # made on first use from text_tokenizer()

    def padding(self) -> bool | str:
        """The tokenizer's padding: to the longest caption, or to the full context (fixed_rows)."""
        return "max_length" if self.fixed_rows else True

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The float32 pixel batch `encode_images(images)` runs: aspect bounded, then the
        checkpoint's resize / crop / normalise (`preprocess_images`)."""
        return self.preprocess_images([bound_aspect(im, center_crop=self.center_crop) for im in images])

    def text_tokenizer(self):
        """The checkpoint's (transformers) tokenizer."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`token_keys` tensors for `texts`: each cut to MAX_CAPTION_CHARS, truncated to
        max_text_tokens, padded as `padding()` says (through the Rust backend, encoders/tokens.py)."""
        if self._tokens is None:
            self._tokens = BatchTokenizer(self.text_tokenizer(), self.max_text_tokens, self.token_keys)
        return self._tokens([t[:MAX_CAPTION_CHARS] for t in texts], self.padding())

    def text_tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The tokens `encode_texts(texts)` runs: padded with blank rows to fixed_rows, if set."""
        n = len(texts)
        return self.tokenize(list(texts) + [""] * ((self.fixed_rows or n) - n))

    def recipe(self) -> Recipe | None:
        """The preprocessing as a tensor recipe (resize short side, crop, normalise), if it is one."""
        return None


class ClipPreprocessing(Preprocessing):
    """A CLIP-like checkpoint's processor (image processor + tokenizer) and text context."""

    def __init__(self, processor, max_text_tokens: int):
        self.processor = processor
        self.center_crop = bool(getattr(processor.image_processor, "do_center_crop", False))
        self.max_text_tokens = max_text_tokens

    @classmethod
    def load(cls, model_dir: Path) -> ClipPreprocessing:
        """The processor and config files of a local checkpoint; no weights are read."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
            processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(
                f"cannot load a processor from {model_dir}: {exc}; save the model's processor next to "
                "it with processor.save_pretrained(dir)"
            ) from exc
        check_processor(processor, model_dir)
        check_tokenizer_fits(processor.tokenizer, config, str(model_dir))
        return cls(processor, context_length(config))

    def preprocess_images(self, images):
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def recipe(self) -> Recipe | None:
        return recipe_of(self.processor.image_processor)

    def text_tokenizer(self):
        return self.processor.tokenizer


def context_length(config) -> int:
    """A CLIP-like config's text context in tokens."""
    return int(getattr(getattr(config, "text_config", None), "max_position_embeddings", 77))


def check_processor(processor, model_dir: Path) -> None:
    """Refuse a processor without both halves (image processor and tokenizer)."""
    if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
        raise ModelLoadError(
            f"{model_dir} has no combined image+text processor; save one next to the model with "
            "CLIPProcessor(...).save_pretrained(dir)"
        )


class Towers(Preprocessing):
    """Common behaviour; subclasses implement the four differentiable pieces below (and, through
    their `Preprocessing` base, `preprocess_images` and `text_tokenizer`)."""

    family = "abstract"
    dim: int
    device: str
    model_dir: Path
    learned_fusion: AttentionFusion | None = None

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised [n, dim] on self.device, differentiable."""
        raise NotImplementedError

    def text_backbone(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled text encoder output before the projection head."""
        raise NotImplementedError

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projection of `text_backbone` output, normalised: text_features = text_head(text_backbone)."""
        raise NotImplementedError

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_head(self.text_backbone(tokens))

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable parts by name ('image', 'text', 'heads'); used to freeze towers."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        return fingerprint(self.model_dir)

    def describe(self) -> dict:
        """Attributes as one method call: works through Beam's MultiProcessShared proxies too."""
        return {
            "device": str(self.device),
            "dim": self.dim,
            "family": self.family,
            "learned_fusion": self.learned_fusion,
        }

    def autocast(self):
        """bf16 autocast on CUDA (set `amp_dtype = None` for fp32), a no-op elsewhere."""
        dtype = getattr(self, "amp_dtype", torch.bfloat16)
        enabled = str(self.device).startswith("cuda") and dtype is not None
        return torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=enabled)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, clock: StageClock = NO_CLOCK) -> torch.Tensor:
        """[n, dim] normalised image vectors for an already preprocessed pixel batch."""
        n = len(pixels)
        with clock("forward"):
            pixels = pad_rows(pixels, self.fixed_rows)
            with self.autocast():
                return self.image_features(pixels.to(self.device, non_blocking=True)).float().cpu()[:n]

    def encode_images(self, images: Sequence[Image.Image], clock: StageClock = NO_CLOCK) -> torch.Tensor:
        """[n, dim] normalised image vectors for PIL images (any mode; preprocessing converts)."""
        if not len(images):
            return torch.empty(0, self.dim)
        with clock("decode"):  # the processor's resize / crop / normalise
            pixels = self.pixels(images)
            if str(self.device).startswith("cuda"):
                pixels = pixels.pin_memory()
        return self.encode_pixels(pixels, clock)

    @torch.inference_mode()
    def encode_texts(
        self, texts: Sequence[str], clock: StageClock = NO_CLOCK, tokens: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """[n, dim] normalised text vectors; texts are truncated to the model's context. `tokens`:
        `text_tokens(texts)` when the caller has them already (tokenized ahead, in another thread)."""
        if not texts:
            return torch.empty(0, self.dim)
        n = len(texts)
        if tokens is None:
            with clock("tokenize"):
                tokens = self.text_tokens(texts)
        with clock("forward"):
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            with self.autocast():
                return self.text_features(tokens).float().cpu()[:n]


class ClipTowers(ClipPreprocessing, Towers):
    """A loaded CLIP-like model: `get_image_features` / `get_text_features` + its processor."""

    family = "clip"

    def __init__(self, model: torch.nn.Module, processor, device: str, model_dir: Path):
        super().__init__(processor, context_length(model.config))
        self.model = model
        self.device = device
        self.model_dir = model_dir
        self.dim = int(model.config.projection_dim)

    @classmethod
    def load(cls, model_dir: Path, *, device: str | None = None, allow_pickle: bool = False) -> ClipTowers:
        """Load from a local checkpoint directory; weights from safetensors unless allowed."""
        device = device or default_device()
        try:
            model = AutoModel.from_pretrained(model_dir, use_safetensors=not allow_pickle, trust_remote_code=False)
            processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load a model and processor from {model_dir}: {exc}") from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(
                f"{model_dir} is a {type(model).__name__} (model_type={getattr(model.config, 'model_type', '?')}), "
                "not a CLIP-like checkpoint with image and text projection heads; pass a CLIP checkpoint"
            )
        check_processor(processor, model_dir)
        check_tokenizer_fits(processor.tokenizer, model.config, str(model_dir))
        model.to(device).eval()
        return cls(model, processor, device, model_dir)

    def image_features(self, pixels):
        return l2_normalise(_projected(self.model.get_image_features(pixel_values=pixels)))

    def text_backbone(self, tokens):
        return self.model.text_model(**tokens).pooler_output

    def text_head(self, pooled):
        return l2_normalise(self.model.text_projection(pooled))

    def modules(self):
        m = self.model
        return {
            "image": m.vision_model,
            "text": m.text_model,
            "heads": torch.nn.ModuleList([m.visual_projection, m.text_projection]),
        }

    def save(self, out: Path) -> None:
        self.model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)


def _projected(out) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output is the projected vector."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


@dataclass
class EmbeddedBatch:
    """Vectors for n rows: image [n, d], text [n, d] (zeros where has_text is False), fused [n, d]."""

    image: np.ndarray
    text: np.ndarray
    fused: np.ndarray
    has_text: np.ndarray


def text_rows(captions: Sequence[str | None], fixed_rows: int | None) -> list[str]:
    """The texts `embed_pairs` gives the text tower for `captions`: the captioned ones, or with
    `fixed_rows` every row (blank where there is no caption)."""
    if fixed_rows:
        return [c if has_caption(c) else "" for c in captions]
    return [c for c in captions if has_caption(c)]


def embed_pairs(
    towers: Towers,
    fusion: Fusion,
    images: Sequence[Image.Image] | torch.Tensor,
    captions: Sequence[str | None],
    fixed_rows: int | None = None,
    clock: StageClock = NO_CLOCK,
    tokens: dict[str, torch.Tensor] | None = None,
) -> EmbeddedBatch:
    """Embed aligned images (PIL images, or a preprocessed pixel batch) and captions.

    A null/blank caption gets the image vector as its fused vector. With `fixed_rows` (the
    towers' own, passed in because a --large-model proxy answers method calls only) every call
    (image tower, text tower, fusion) sees exactly that many rows. `clock` gets the stages
    (decode, tokenize, forward, assemble); through a --large-model proxy, whose calls run in
    another process, each tower call is counted as forward. `tokens`: the text tower's tokens,
    `towers.text_tokens(text_rows(captions, fixed_rows))`, when tokenized ahead.
    """
    n = len(captions)
    with clock("assemble"):
        has_text = torch.tensor([has_caption(c) for c in captions], dtype=torch.bool)
        texts = text_rows(captions, fixed_rows)
    local = isinstance(towers, Towers)
    kw = {"clock": clock} if local else {}
    with nullcontext() if local else clock("forward"):
        encode = towers.encode_pixels if isinstance(images, torch.Tensor) else towers.encode_images
        img = encode(images, **kw)
        if tokens is not None:
            kw["tokens"] = tokens
        txt = torch.zeros_like(img)
        if fixed_rows:  # the text tower sees every row (blank where there is no caption)
            txt = torch.where(has_text[:, None], towers.encode_texts(texts, **kw), txt)
        elif texts:
            txt[has_text] = towers.encode_texts(texts, **kw)
    with clock("forward"), torch.inference_mode():
        fused = fusion(pad_rows(img, fixed_rows), pad_rows(txt, fixed_rows), pad_rows(has_text, fixed_rows)).cpu()[:n]
    with clock("assemble"):
        return EmbeddedBatch(img.numpy(), txt.numpy(), fused.numpy(), has_text.numpy())


def pad_rows(x: torch.Tensor, rows: int | None) -> torch.Tensor:
    """`x` with zero rows appended up to `rows` (unchanged when `rows` is None or already reached)."""
    if not rows or len(x) >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def embed_query(
    towers: Towers, fusion: Fusion, text: str | None = None, image: Image.Image | None = None
) -> np.ndarray:
    """[1, dim] query vector: text, image, or (both given) their fusion, as items are fused."""
    if text is None and image is None:
        raise UsageError("give a text query, an image query, or both")
    if image is None:
        return towers.encode_texts([text]).numpy()
    if text is None:
        return towers.encode_images([image]).numpy()
    return embed_pairs(towers, fusion, [image], [text]).fused
