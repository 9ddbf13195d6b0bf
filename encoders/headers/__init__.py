"""Image size and EXIF orientation from the encoded bytes' header, without PIL.

Contract: `read_header(data)` returns `(width, height, orientation)` only where it is certain
that PIL (the version pinned by the tests) says exactly that:

    image = Image.open(io.BytesIO(data))
    (width, height) == image.size
    orientation == (image.getexif().get(0x0112, 1) if "exif" in image.info else 1)

and that `Image.open` succeeds (before its own decompression-bomb check, which is the caller's).
It returns None for everything else: other formats, truncated or malformed data, odd EXIF, and
well-formed files whose PIL reading it does not model (MPO, APNG, multiple EXIF segments, ...).
None means "ask PIL"; it never raises on any input.

Only JPEG (`jpeg.py`) and PNG (`png.py`) are read; `tiff.py` reads the EXIF both may carry.
The parser follows what PIL's plugins do at open time, not just the format specs: PIL reads a
JPEG up to its first SOS (all segments before it are checked, a truncated header is an error),
reads the EXIF resolution tags when no JFIF density is present (odd values there fail
`Image.open`), reads a PNG up to its first IDAT checking every chunk's CRC and its handler's
rules, and takes a missing EXIF orientation from XMP (`tiff:Orientation`).
Orientation is returned as PIL has it, out of range values included: the caller decides.
"""

from __future__ import annotations

from encoders.headers import jpeg, png, tiff
from encoders.headers.jpeg import read_jpeg
from encoders.headers.png import read_png

# The tables tests/test_headers.py compares with PIL's own, under the names it has used.
TIFF_TYPE_SIZES = tiff.TIFF_TYPE_SIZES
MAX_TEXT_CHUNK = png.MAX_TEXT_CHUNK
MAX_TEXT_MEMORY = png.MAX_TEXT_MEMORY
_PNG_MODES = png.PNG_MODES
_SOF_MARKERS = jpeg.SOF_MARKERS
_SKIP_MARKERS = jpeg.SKIP_MARKERS


def read_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, orientation) as PIL's Image.open reads them, or None when not certain."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return read_jpeg(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return read_png(data)
    except Exception:  # a bug or an input not foreseen: never worse than asking PIL
        return None
    return None
