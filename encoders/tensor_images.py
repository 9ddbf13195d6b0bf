"""Batched image preprocessing on tensors: JPEG decoded on the model's device (nvJPEG on CUDA),
resized / cropped / normalised there, with a PIL fallback per item.

The recipe is the checkpoint's: resize the short side (bicubic, antialiased), center crop,
scale to [0, 1], normalise with its mean/std. torchvision's bicubic differs from PIL's by
rounding, so vectors match the PIL path to cosine >= 0.99, not bit for bit; that is why the
CPU default stays the PIL path (exact equality with a direct processor call) and this one is
the default on CUDA, where CPU decoding and resizing is the bottleneck (clip-retrieval's
published 2,500 img/s on an A100 is CPU-bound).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected, check_bytes, check_pixels, decode_image

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
MAX_ASPECT = 8


@dataclass(frozen=True)
class Recipe:
    shortest_edge: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _probe(data: bytes | None, max_pixels: int, max_bytes: int) -> None:
    """Raise ImageRejected for what decode_image would refuse without decoding pixels."""
    check_bytes(data, max_bytes)
    try:
        size = Image.open(io.BytesIO(data)).size  # header only
    except Exception:  # PIL raises many types on junk; the decoders will say what is wrong
        return
    check_pixels(size, max_pixels)


def _pil_to_tensor(data: bytes, max_pixels: int, max_bytes: int) -> torch.Tensor:
    img = decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    if img.mode != "RGB":  # transparency on white, as CLIP's convert_to_rgb does
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return F.pil_to_tensor(img)


class TensorPreprocessor:
    """bytes -> normalised pixel batch on `device`; per-item ImageRejected for bad inputs."""

    def __init__(self, recipe: Recipe, device: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.recipe, self.device = recipe, torch.device(device)
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.mean = torch.tensor(recipe.mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(recipe.std, device=self.device).view(3, 1, 1)

    def decode(self, datas: list[bytes | None]) -> list[torch.Tensor | ImageRejected]:
        """uint8 [3, H, W] tensors on the device (JPEGs batched there), or the rejection."""
        out: list[torch.Tensor | ImageRejected | None] = [None] * len(datas)
        jpegs = []
        for i, data in enumerate(datas):
            try:
                _probe(data, self.max_pixels, self.max_bytes)
            except ImageRejected as exc:
                out[i] = exc
                continue
            if data[:3] == JPEG_MAGIC and data.rstrip(b"\x00")[-2:] == JPEG_END:
                jpegs.append(i)  # libjpeg pads a truncated JPEG with grey; PIL rejects it: let PIL decide
        if jpegs:
            raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs]
            try:
                decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
            except RuntimeError:  # one bad JPEG fails the batch call: go one by one
                decoded = []
                for r in raw:
                    try:
                        decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True))
                    except RuntimeError:
                        decoded.append(None)
            for i, t in zip(jpegs, decoded):
                out[i] = t
        for i, data in enumerate(datas):
            if out[i] is None:  # not a JPEG, or nvJPEG/libjpeg refused it: PIL decides
                try:
                    out[i] = _pil_to_tensor(data, self.max_pixels, self.max_bytes).to(self.device, non_blocking=True)
                except ImageRejected as exc:
                    out[i] = exc
        return out

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> normalised float [3, crop_h, crop_w] (bounded aspect first)."""
        r = self.recipe
        _, h, w = image.shape
        if max(h, w) > MAX_ASPECT * min(h, w):  # only the central square survives the crop
            keep = MAX_ASPECT * min(h, w)
            keep += (max(h, w) - keep) % 2
            image = F.center_crop(image, [h, keep] if w > h else [keep, w])
        image = F.resize(image, r.shortest_edge, interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        image = F.center_crop(image, list(r.crop))
        return (image.float() / 255.0 - self.mean) / self.std

    def __call__(self, datas: list[bytes | None]) -> tuple[torch.Tensor, list[ImageRejected | None]]:
        """(pixel batch of the good items, in order; per item None or its rejection)."""
        decoded = self.decode(datas)
        good = [self.transform(t) for t in decoded if isinstance(t, torch.Tensor)]
        pixels = torch.stack(good) if good else torch.empty(0, 3, *self.recipe.crop, device=self.device)
        return pixels, [t if isinstance(t, ImageRejected) else None for t in decoded]
