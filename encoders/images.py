"""Decode encoded image bytes into PIL images, with caps and stable reject reasons; the pixel
rules every preprocessing path shares (transparency on white, bounded aspect ratio).

Contract: `decode_image(data)` returns an opened, fully loaded PIL image (first frame for
animations, EXIF orientation applied, 16-bit and float samples scaled to 8 bits) or raises
`ImageRejected` whose `reason` is a short stable code. Other colour conversion (palette,
alpha, CMYK, grayscale) is left to the checkpoint's own image processor, so for ordinary
images the pipeline's pixels equal a direct `processor(images=Image.open(...))` call.
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

# Images longer than MAX_ASPECT times their short side are bounded before preprocessing: a
# processor resizing the short side of a 20000x1 strip to 224 px would allocate gigabytes.
MAX_ASPECT = 8
MAX_SQUASH_SIDE = 4096
WHITE = (255, 255, 255, 255)


class ImageRejected(ValueError):
    """An image that cannot be used; `reason` is a stable code, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_bytes(data: bytes | None, max_bytes: int) -> None:
    """Reject null, empty and over-cap encoded images."""
    if data is None:
        raise ImageRejected("missing_image", "image is null")
    if len(data) == 0:
        raise ImageRejected("empty_image", "image has 0 bytes")
    if len(data) > max_bytes:
        raise ImageRejected("image_too_large", f"image has {len(data)} bytes > cap {max_bytes}")


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Reject an image whose header declares more pixels than the cap."""
    width, height = size
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels", f"image declares {width}x{height} pixels > cap {max_pixels} (--max-image-pixels)"
        )


def decode_image(
    data: bytes | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Decode `data`; raise ImageRejected (reason code + message) when it is unusable."""
    return load_image(open_image(data, max_pixels=max_pixels, max_bytes=max_bytes), data)


def open_image(
    data: bytes | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """The first half of `decode_image`: the header read and checked, no pixel decoded yet."""
    check_bytes(data, max_bytes)
    with _pil_errors(data):
        # Image.open reads only the header; PIL's own bomb check there raises above
        # 2 x Image.MAX_IMAGE_PIXELS (see pipelines/embed/process.py).
        image = Image.open(io.BytesIO(data))
        check_pixels(image.size, max_pixels)  # known from the header, before any pixel is decoded
    return image


def load_image(image: Image.Image, data: bytes) -> Image.Image:
    """The second half of `decode_image`: `image` (from `open_image(data)`) decoded, oriented, 8-bit."""
    with _pil_errors(data):
        image.load()
    try:
        ImageOps.exif_transpose(image, in_place=True)  # no copy for the usual image without EXIF
    except Exception as exc:  # PIL raises many types on a malformed EXIF block
        raise ImageRejected("corrupt_image", f"bad EXIF orientation data: {exc}") from exc
    return to_8bit(image)


@contextmanager
def _pil_errors(data: bytes):
    """PIL's exceptions as ImageRejected with a stable reason."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:  # PIL's message names only its BytesIO object
        raise ImageRejected("not_an_image", f"not a recognised image format (starts with {data[:16]!r})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's truncated/corrupt stream errors
        raise ImageRejected("corrupt_image", f"cannot decode image: {exc}") from exc


def to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer and float grayscale to 8-bit 'L'; 'La' becomes 'LA'.

    PIL's own convert('RGB') clips such samples at 255, which turns a 16-bit PNG white.
    """
    if image.mode.startswith("I"):
        arr = np.asarray(image).astype(np.int64)
        if image.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if image.mode == "La":  # premultiplied alpha: processors' RGB conversion does not know it
        return image.convert("LA")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return image


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency (alpha, or a palette/tRNS transparent colour) composited on white.

    As CLIP's `convert_to_rgb` does, except that an RGB image carrying a transparent colour is
    flattened too (CLIP's processor leaves such images as they are).
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")


def aspect_crop_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) cutting the long side to MAX_ASPECT x the short side, or None.

    Centred, with the parity of the long side kept, so a center crop taken afterwards is the
    same as one taken from the whole image: a center-cropping processor (CLIP: resize the short
    side, crop the central square) only ever keeps the central square.
    """
    short, long_ = min(width, height), max(width, height)
    if long_ <= MAX_ASPECT * short:
        return None
    keep = MAX_ASPECT * short + (long_ - MAX_ASPECT * short) % 2
    start = (long_ - keep) // 2
    return (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)


def bound_aspect(image: Image.Image, *, center_crop: bool) -> Image.Image:
    """Bound an extreme aspect ratio without changing what the preprocessing keeps.

    Center-cropping processors: cut to `aspect_crop_box`. Processors that resize to a fixed
    shape: shrink so the long side is at most MAX_SQUASH_SIDE.
    """
    box = aspect_crop_box(*image.size)
    if box is None:
        return image
    if center_crop:
        return image.crop(box)
    w, h = image.size
    if max(w, h) > MAX_SQUASH_SIDE:
        scale = MAX_SQUASH_SIDE / max(w, h)
        return image.resize((max(1, round(w * scale)), max(1, round(h * scale))))
    return image
