"""A JPEG's size and EXIF orientation, walking its markers as PIL's JpegImagePlugin opens it.

PIL reads a JPEG up to its first SOS: every segment before it is checked (a truncated header
is an error), and the EXIF resolution tags are read when no JFIF density is present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from encoders.headers.tiff import EXIF_PREFIX, exif_orientation

# What PIL's JpegImagePlugin does with the byte after an 0xFF, as one lookup (0: it fails, or we do not model it).
_FILL, _ALONE, _SKIP, _SOF, _APP, _DQT, _SOS = range(1, 8)
SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
SKIP_MARKERS = (0xC4, 0xCC, 0xDC, 0xDD, 0xDF, 0xFE)  # DHT, DAC, DNL, DRI, EXP, COM: length only
_MARKER_KIND = bytearray(256)
_MARKER_KIND[0xFF] = _FILL  # fill byte: the next one is the marker
for _m in (0x00, *range(0xD0, 0xDA)):  # stuffed 0xFF00, RSTn, SOI, EOI: no length, on to the next 0xFF
    _MARKER_KIND[_m] = _ALONE
for _m in SKIP_MARKERS:
    _MARKER_KIND[_m] = _SKIP
for _m in SOF_MARKERS:  # PIL's frame headers minus DHP (0xDE), which libjpeg does not take for one
    _MARKER_KIND[_m] = _SOF
for _m in range(0xE0, 0xF0):
    _MARKER_KIND[_m] = _APP
_MARKER_KIND[0xDB] = _DQT
_MARKER_KIND[0xDA] = _SOS
del _m
_MARKER_KIND = bytes(_MARKER_KIND)  # left at 0: TEM, reserved (PIL: "no marker found"), JPG, JPGn, DHP
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_BE32 = struct.Struct(">I").unpack_from


@dataclass(slots=True)
class _Segments:
    """What the segments before the first SOS told: (start, end) spans point into the data."""

    size: tuple[int, int] | None = None  # (width, height) from the frame header
    exif: tuple[int, int] | None = None  # the APP1 EXIF block, its prefix skipped
    xmp: tuple[int, int] | None = None  # the APP1 XMP packet
    jfif_dpi: bool = False  # a JFIF density PIL takes instead of the EXIF resolution


def read_jpeg(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, orientation) of a JPEG (data starts with SOI and an 0xFF) as PIL's
    Image.open reads them, or None where PIL fails or we do not model what it does."""
    found = _walk(data)
    if found is None or found.size is None or found.size[0] == 0 or found.size[1] == 0:
        return None  # PIL: "not identified by this driver"
    width, height = found.size
    if found.exif is None:
        return width, height, 1
    xmp = data[found.xmp[0] : found.xmp[1]] if found.xmp is not None else None
    orientation = exif_orientation(data, found.exif[0], found.exif[1], xmp, read_dpi=not found.jfif_dpi)
    if orientation is None:
        return None
    return width, height, orientation


def _walk(data: bytes) -> _Segments | None:
    """Walk the markers from SOI to the first SOS as PIL's JpegImageFile._open does: what the
    segments told, or None where PIL fails before the SOS (or does what we do not model)."""
    n = len(data)
    pos = 3  # data[2] is an 0xFF: PIL starts with it pending
    found = _Segments()
    find = data.find
    while True:
        if pos >= n:
            return None
        m = data[pos]
        kind = _MARKER_KIND[m]
        pos += 1
        if kind == _FILL:
            continue
        if kind == _ALONE:
            pos = find(b"\xff", pos)
            if pos < 0:
                return None
            pos += 1
            continue
        if not kind or pos + 2 > n:
            return None
        length = (data[pos] << 8) | data[pos + 1]
        start, end = pos + 2, pos + length
        if length < 2 or end > n:  # PIL: an odd empty read / "Truncated File Read"
            return None
        if kind == _SOS:  # PIL reads its header and stops
            return found
        if kind != _SKIP and not _segment(data, m, kind, start, end, found):
            return None
        # PIL reads one byte and, unless it is 0xFF, skips bytes up to the next 0xFF
        if end < n and data[end] == 0xFF:
            pos = end + 1
        else:
            pos = find(b"\xff", end)
            if pos < 0:
                return None
            pos += 1


def _segment(data: bytes, m: int, kind: int, start: int, end: int, found: _Segments) -> bool:
    """Read the segment data[start:end] of marker m (not a length-only one) into `found`; False
    where PIL fails on it."""
    if kind == _DQT:
        return _dqt_ok(data, start, end)
    if kind == _SOF:
        return _frame(data, start, end, found)
    return _app(data, m, start, end, found)


def _dqt_ok(data: bytes, start: int, end: int) -> bool:
    """PIL checks each quantization table's length against the segment's."""
    q = start
    while q < end:
        q += 65 if data[q] < 16 else 129
        if q > end:
            return False
    return True


def _frame(data: bytes, start: int, end: int, found: _Segments) -> bool:
    """The frame header's size; False for a second frame header or one PIL fails on."""
    length = end - start + 2
    if found.size is not None or length - 2 < 6 or (length - 8) % 3:
        return False  # a second frame header, or one PIL fails on (short, ragged components)
    if data[start] != 8 or data[start + 5] not in (1, 3, 4):
        return False  # PIL: "cannot handle N-bit layers" / "N-layer images"
    found.size = ((data[start + 3] << 8) | data[start + 4], (data[start + 1] << 8) | data[start + 2])
    return True


def _app(data: bytes, m: int, start: int, end: int, found: _Segments) -> bool:
    """An APPn segment: note EXIF, XMP and a JFIF density; False where PIL's handler fails on
    it or does what we do not model (several EXIF segments, MPO)."""
    seg = end - start
    if m == 0xE1:
        if data.startswith(EXIF_PREFIX, start, end):
            if found.exif is not None:
                return False  # PIL concatenates EXIF segments
            found.exif = (start + 6, end)
        elif data.startswith(_XMP_PREFIX, start, end):
            found.xmp = (start + len(_XMP_PREFIX), end)
    elif m == 0xE0:
        if data.startswith(b"JFIF", start, end):
            if seg < 7:
                return False  # PIL reads the version: struct.error
            if seg >= 12 and data[start + 7] in (1, 2):
                found.jfif_dpi = True
    elif m == 0xE2:
        if data.startswith(b"MPF\x00", start, end):
            return False  # PIL may open it as MPO
        if data.startswith(b"ICC_PROFILE\x00", start, end) and seg < 14:
            return False  # PIL indexes byte 13 of the first chunk
    elif m == 0xED:
        if data.startswith(b"Photoshop 3.0\x00", start, end) and not _photoshop_ok(data[start:end]):
            return False
    elif m == 0xEE:
        if data.startswith(b"Adobe", start, end) and seg < 7:
            return False  # PIL reads the version: struct.error
    return True


def _photoshop_ok(s: bytes) -> bool:
    """False where PIL's APP13 "8BIM" walk raises IndexError (it catches only struct.error)."""
    offset = 14
    n = len(s)
    while s[offset : offset + 4] == b"8BIM":
        offset += 4
        if offset + 2 > n:
            return True  # struct.error: PIL stops there
        offset += 2
        if offset >= n:
            return False  # IndexError reading the name length
        offset += 1 + s[offset]
        offset += offset & 1
        if offset + 4 > n:
            return True
        (size,) = _BE32(s, offset)
        offset += 4
        # ResolutionInfo (0x03ED) reads fields of the block; a short block is a struct.error: caught
        offset += size
        offset += offset & 1
    return True
