"""Real encoded test images of every awkward kind (helpers for the tests, not fixtures)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from pipelines.datasets.sample import draw


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def base(size=(80, 48)) -> Image.Image:
    img = draw("triangle", (200, 40, 40), (255, 255, 255), max(size))
    return img.resize(size)


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny PNG whose header declares width x height 1-bit pixels (never fully decodable)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + width // 8) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG stored sideways with EXIF orientation 6, and the upright image it shows."""
    upright = base((48, 80))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 = rotate 270 to display
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(stored, "JPEG", quality=95, exif=exif.tobytes()), upright


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    arr = (np.add.outer(np.arange(40), np.arange(60)) * 600).astype(np.uint16)
    return save(Image.fromarray(arr), "PNG"), arr


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency() -> bytes:
    img = base().convert("P")
    return save(img, "PNG", transparency=0)


def rgba() -> bytes:
    img = base().convert("RGBA")
    img.putalpha(100)
    return save(img, "PNG")


def valid_images() -> dict[str, bytes]:
    good = base()
    return {
        "CMYK JPEG": save(good.convert("CMYK"), "JPEG"),
        "16-bit grayscale PNG": sixteen_bit_png()[0],
        "grayscale PNG": save(good.convert("L"), "PNG"),
        "palette PNG with transparency": palette_with_transparency(),
        "RGBA PNG": rgba(),
        "EXIF-rotated JPEG": exif_rotated_jpeg()[0],
        "animated GIF (first frame)": animated("GIF"),
        "animated WebP (first frame)": animated("WEBP"),
        "1x1 PNG": save(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
        "very wide PNG (4000x3)": save(good.resize((4000, 3)), "PNG"),
        "very tall JPEG (3x4000)": save(good.resize((3, 4000)), "JPEG"),
    }


def bad_images() -> dict[str, tuple[bytes, str]]:
    jpeg = save(base(), "JPEG", quality=90)
    png = save(base(), "PNG")
    return {
        "empty bytes": (b"", "empty_image"),
        "truncated JPEG": (jpeg[: len(jpeg) // 2], "corrupt_image"),
        "truncated PNG": (png[: len(png) // 2], "corrupt_image"),
        "random bytes": (np.random.default_rng(0).bytes(3000), "not_an_image"),
        "HTML error page": (b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>", "not_an_image"),
        "SVG/XML text": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            "not_an_image",
        ),
        "decompression bomb (PNG declaring 40000x40000)": (png_bomb(), "too_many_pixels"),
    }
