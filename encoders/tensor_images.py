"""Batched image preprocessing on tensors: JPEG decoded on the model's device (nvJPEG on CUDA),
resized / cropped / normalised there, with a PIL fallback per item.

The recipe is the checkpoint's: resize the short side (its filter, antialiased), center crop
(the offset rounded as its processor rounds it), normalise as (x - 255 mean) / (255 std).
transformers 5's CLIPImageProcessor runs the same torchvision kernels on PIL's decoded pixels,
and libjpeg-turbo decodes a JPEG to the same pixels in PIL and in torchvision on a CPU, so on a
CPU the two paths' pixels agree to float rounding (tests/test_preprocess_parity.py states the
bound), which is why `--preprocess auto` picks this path on a CPU too. nvJPEG on CUDA may
round differently from libjpeg-turbo: not yet compared with the PIL path on a GPU.

Bump TENSOR_REVISION (pipelines/embed/settings.py) with any change to these pixels: shards and
previous runs recorded with another revision are then recomputed, not mixed in.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch
from PIL import Image, ImageFile
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from encoders.headers import read_header
from encoders.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    aspect_crop_box,
    check_bytes,
    check_pixels,
    decode_image,
    flatten_on_white,
)
from encoders.stages import NO_CLOCK, StageClock

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"

# torch warns (once a process) that a tensor over immutable bytes could be written through;
# `byte_view` hands such tensors only to decode_jpeg, which reads them.
warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning, __name__)


def byte_view(data: bytes) -> torch.Tensor:
    """`data` as a 1-d uint8 tensor sharing its memory (it keeps `data` alive), for decode_jpeg,
    which only reads its input. Contract: nothing may write to the result. Copying into a
    bytearray first, the usual way to silence torch's warning, costs a memcpy of every JPEG
    while holding the GIL, on the thread that feeds the GPU (docs/performance.md)."""
    return torch.frombuffer(data, dtype=torch.uint8)


# PIL resample codes (a processor's `resample`) the tensor path reproduces
INTERPOLATIONS = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Recipe:
    """Resize the short side (antialiased `interpolation`), center crop, scale, normalise.

    `crop_offset`: how a half-pixel crop margin is cut, as the reference path does it: "floor"
    (transformers' processors) or "round" (torchvision's center_crop, half to even)."""

    shortest_edge: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_offset: str = "floor"


def recipe_of(image_processor) -> Recipe | None:
    """The processor's preprocessing as a Recipe when it is resize-short-side + center-crop
    (CLIP's) with a bicubic or bilinear filter, else None (e.g. SigLIP's fixed-size squash: only
    the processor's own path fits)."""
    ip = image_processor
    size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    edge = getattr(size, "shortest_edge", None) or (size.get("shortest_edge") if isinstance(size, dict) else None)
    resample = getattr(ip, "resample", None)
    interpolation = INTERPOLATIONS.get(3 if resample is None else int(resample))
    if not (edge and crop and interpolation and getattr(ip, "do_center_crop", False)):
        return None
    crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop.height, crop.width)
    hw = tuple(int(v) for v in crop_hw)
    return Recipe(int(edge), hw, tuple(ip.image_mean), tuple(ip.image_std), interpolation)


EXIF_ORIENTATION = 0x0112
# Decoded pixels held on the device at once. Originals are decoded, resized and freed chunk by
# chunk, so memory follows this budget and not batch size x --max-image-pixels.
DEFAULT_CHUNK_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class Header:
    """What the header says: pixel count (0 when unknown) and EXIF orientation (None: PIL decides)."""

    pixels: int
    orientation: int | None


def _probe(data: bytes | None, max_pixels: int, max_bytes: int) -> Header:
    """Raise ImageRejected for what decode_image would refuse without decoding pixels; return
    the header's pixel count and EXIF orientation (1 = none; None where only PIL can tell: junk,
    bad EXIF).

    The header parser answers for ordinary JPEGs and PNGs (a few us; it says only what PIL would
    say); PIL's Image.open (~35 us) for the rest, and where PIL's own decompression-bomb check
    (warning or error) would speak."""
    check_bytes(data, max_bytes)
    fast = None if ImageFile.LOAD_TRUNCATED_IMAGES else read_header(data)
    bomb_cap = Image.MAX_IMAGE_PIXELS
    if fast is not None and (bomb_cap is None or fast[0] * fast[1] <= bomb_cap):
        size, orientation = (fast[0], fast[1]), fast[2]
    else:
        try:
            image = Image.open(io.BytesIO(data))  # header only
            size = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if "exif" in image.info else 1
        except Exception:  # PIL raises many types on junk; the decoders will say what is wrong
            return Header(0, None)
    check_pixels(size, max_pixels)
    return Header(size[0] * size[1], orientation if orientation in range(1, 9) else None)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[..., H, W] as displayed for EXIF `orientation` 1-8, as PIL's exif_transpose does it.

    Needed because torchvision's CUDA decode_jpeg ignores apply_exif_orientation (0.29: the
    flag is passed to the CPU decoder only), so the GPU path rotates the decoded tensor itself.
    """
    hw = (-2, -1)
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(hw)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, hw)
    if orientation == 7:
        return image.transpose(-2, -1).flip(hw)
    if orientation == 8:
        return torch.rot90(image, 1, hw)
    return image


def center_crop(image: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """The central `crop` (h, w) of [..., H, W] as transformers' CLIP processor cuts it: zero padding
    first where the image is smaller, then the offset rounded down. torchvision's own center_crop
    rounds half offsets to even (5.5 -> 6), a one-pixel shift from the reference for such sizes."""
    (ch, cw), (h, w) = crop, image.shape[-2:]
    if ch > h or cw > w:
        pad_w, pad_h = max(cw - w, 0), max(ch - h, 0)
        image = F.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=0)
        h, w = image.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[..., top : top + ch, left : left + cw]


def _pil_to_tensor(data: bytes, max_pixels: int, max_bytes: int) -> torch.Tensor:
    return F.pil_to_tensor(flatten_on_white(decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)))


class TensorPreprocessor:
    """bytes -> normalised pixel batch on `device`; per-item ImageRejected for bad inputs.

    At most `chunk_pixels` decoded pixels are held at once (one image may exceed it alone).
    """

    def __init__(
        self,
        recipe: Recipe,
        device: str,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
    ):
        self.recipe, self.device = recipe, torch.device(device)
        self.max_pixels, self.max_bytes, self.chunk_pixels = max_pixels, max_bytes, chunk_pixels
        # on the 0-255 scale: (x - 255 mean) / (255 std), the processor's fused rescale + normalise
        self.mean = torch.tensor(recipe.mean, device=self.device).view(3, 1, 1) * 255.0
        self.std = torch.tensor(recipe.std, device=self.device).view(3, 1, 1) * 255.0

    def headers(self, datas: list[bytes | None]) -> list[Header | ImageRejected]:
        out: list[Header | ImageRejected] = []
        for data in datas:
            try:
                out.append(_probe(data, self.max_pixels, self.max_bytes))
            except ImageRejected as exc:
                out.append(exc)
        return out

    def decode(
        self, datas: list[bytes | None], headers: list[Header | ImageRejected] | None = None
    ) -> list[torch.Tensor | ImageRejected]:
        """uint8 [3, H, W] tensors on the device (JPEGs batched there), or the rejection."""
        headers = self.headers(datas) if headers is None else headers
        out: list[torch.Tensor | ImageRejected | None] = [h if isinstance(h, ImageRejected) else None for h in headers]
        # libjpeg pads a truncated JPEG with grey where PIL rejects it, and odd EXIF is PIL's call too
        jpegs = [
            i
            for i, (data, h) in enumerate(zip(datas, headers))
            if isinstance(h, Header)
            and h.orientation is not None
            and data[:3] == JPEG_MAGIC
            and data.rstrip(b"\x00")[-2:] == JPEG_END
        ]
        if jpegs:
            raw = [byte_view(datas[i]) for i in jpegs]
            # Orientation is applied below on every device (the CUDA decoder ignores the flag).
            try:
                decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=False)
            except RuntimeError:  # one bad JPEG fails the batch call: go one by one
                decoded = []
                for r in raw:
                    try:
                        decoded.append(
                            decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=False)
                        )
                    except RuntimeError:
                        decoded.append(None)
            for i, t in zip(jpegs, decoded):
                out[i] = None if t is None else orient(t, headers[i].orientation)
        for i, data in enumerate(datas):
            if out[i] is None:  # not a JPEG, or nvJPEG/libjpeg refused it: PIL decides
                try:
                    out[i] = _pil_to_tensor(data, self.max_pixels, self.max_bytes).to(self.device, non_blocking=True)
                except ImageRejected as exc:
                    out[i] = exc
        return out

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> normalised float [..., 3, crop_h, crop_w] (bounded aspect first)."""
        r = self.recipe
        box = aspect_crop_box(image.shape[-1], image.shape[-2])
        if box is not None:  # only the central square survives the crop
            left, top, right, bottom = box
            image = image[..., top:bottom, left:right]
        image = F.resize(image, r.shortest_edge, interpolation=F.InterpolationMode(r.interpolation), antialias=True)
        image = center_crop(image, r.crop) if r.crop_offset == "floor" else F.center_crop(image, list(r.crop))
        return image.float().sub_(self.mean).div_(self.std)  # one new tensor, normalised in place

    def transform_all(self, images: list[torch.Tensor]) -> torch.Tensor:
        """`transform` of each image, stacked in order. Same-size images are resized as one batch:
        a few kernel launches per size instead of per image (catalogues share a few sizes)."""
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for j, t in enumerate(images):
            by_shape[tuple(t.shape)].append(j)
        if len(by_shape) == 1:  # one size (a catalogue of one size): no copy into a batch
            return self.transform(torch.stack(images))
        pixels = torch.empty(len(images), 3, *self.recipe.crop, device=self.device)
        for rows in by_shape.values():
            pixels[rows] = self.transform(torch.stack([images[j] for j in rows]))
        return pixels

    def chunks(self, headers: list[Header | ImageRejected]) -> list[list[int]]:
        """Consecutive item indices whose header pixel counts fit `chunk_pixels` together."""
        out: list[list[int]] = [[]]
        held = 0
        for i, h in enumerate(headers):
            n = h.pixels if isinstance(h, Header) else 0
            if out[-1] and held + n > self.chunk_pixels:
                out.append([])
                held = 0
            out[-1].append(i)
            held += n
        return out

    def __call__(
        self, datas: list[bytes | None], clock: StageClock = NO_CLOCK
    ) -> tuple[torch.Tensor, list[ImageRejected | None]]:
        """(pixel batch of the good items, in order; per item None or its rejection). `clock` gets
        the header probe and the decode (resize and normalise included) as stages."""
        with clock("probe"):
            headers = self.headers(datas)
        rejected: list[ImageRejected | None] = [None] * len(datas)
        parts = []
        with clock("decode"):
            for chunk in self.chunks(headers):
                decoded = self.decode([datas[i] for i in chunk], [headers[i] for i in chunk])
                good = [t for t in decoded if isinstance(t, torch.Tensor)]
                for i, t in zip(chunk, decoded):
                    if isinstance(t, ImageRejected):
                        rejected[i] = t
                if good:
                    parts.append(self.transform_all(good))
                del decoded, good  # the originals go before the next chunk is decoded
            pixels = torch.cat(parts) if parts else torch.empty(0, 3, *self.recipe.crop, device=self.device)
        return pixels, rejected
