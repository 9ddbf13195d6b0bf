"""A PNG's size and EXIF orientation, walking its chunks as PIL's PngImagePlugin opens it.

PIL reads a PNG up to its first IDAT, checking every chunk's CRC and its handler's rules, and
takes a missing EXIF orientation from XMP (`tiff:Orientation`) in a text chunk.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from encoders.headers.tiff import ORIENTATION, exif_orientation, exif_tags

PNG_MODES = {  # PIL's PngImagePlugin._MODES: (bit depth, colour type) -> mode
    (1, 0): "1",
    (2, 0): "L",
    (4, 0): "L",
    (8, 0): "L",
    (16, 0): "I;16",
    (8, 2): "RGB",
    (16, 2): "RGB",
    (1, 3): "P",
    (2, 3): "P",
    (4, 3): "P",
    (8, 3): "P",
    (8, 4): "LA",
    (16, 4): "RGBA",
    (8, 6): "RGBA",
    (16, 6): "RGBA",
}
_TRNS_MIN = {"1": 2, "L": 2, "I;16": 2, "RGB": 6}  # tRNS bytes PIL reads for these modes
MAX_TEXT_CHUNK = 1024 * 1024  # PIL's PngImagePlugin.MAX_TEXT_CHUNK (ImageFile.SAFEBLOCK)
MAX_TEXT_MEMORY = 64 * MAX_TEXT_CHUNK  # PIL's PngImagePlugin.MAX_TEXT_MEMORY
_IS_CID = re.compile(rb"\w\w\w\w").match  # PIL's chunk id check
_APNG = frozenset((b"acTL", b"fcTL", b"fdAT"))
_TEXT = frozenset((b"tEXt", b"zTXt", b"iTXt"))
_XMP_KEYS = frozenset((b"xmp", b"XML:com.adobe.xmp"))
_BE32 = struct.Struct(">I").unpack_from


@dataclass(slots=True)
class _Chunks:
    """What the chunks before the first IDAT told."""

    size: tuple[int, int] | None = None  # (width, height) from IHDR
    mode: str = ""  # PIL's mode for IHDR's bit depth and colour type
    exif: tuple[int, int] | None = None  # the eXIf chunk's span in the data
    xmp_key: bool = False  # a text chunk with an XMP keyword
    text_memory: int = 0  # an upper bound of what PIL counts against MAX_TEXT_MEMORY


def read_png(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, orientation) of a PNG (data starts with the signature) as PIL's
    Image.open reads them, or None where PIL fails or we do not model what it does."""
    found = _walk(data)
    if found is None or found.size is None or found.size[0] == 0 or found.size[1] == 0:
        return None
    width, height = found.size
    if found.exif is None:
        return width, height, 1
    start, end = found.exif
    orientation = exif_orientation(data, start, end, None, read_dpi=False)
    if orientation is None:
        return None
    if orientation == 1 and found.xmp_key and _lacks_orientation(data, start, end):
        return None  # PIL would search the XMP text (str or bytes, by chunk kind): ask it
    return width, height, orientation


def _walk(data: bytes) -> _Chunks | None:
    """Walk the chunks to the first IDAT (or IEND) as PIL's PngImageFile._open does: what they
    told, or None where PIL fails before (or does what we do not model)."""
    n = len(data)
    pos = 8
    view = memoryview(data)
    found = _Chunks()
    while True:
        if pos + 8 > n:
            return None
        (length,) = _BE32(data, pos)
        cid = data[pos + 4 : pos + 8]
        start = pos + 8
        if not _IS_CID(cid):
            return None  # PIL: "broken PNG file"
        if found.size is None and cid != b"IHDR":
            return None  # PIL allows other orders; not worth modelling
        if cid == b"IDAT" or cid == b"IEND":
            return found  # PIL stops here (no CRC check)
        end = start + length
        if end + 4 > n:
            return None  # truncated chunk or CRC
        if zlib.crc32(view[start:end], zlib.crc32(cid)) != _BE32(data, end)[0]:
            return None  # PIL: "bad header checksum"
        if not _chunk(data, cid, start, end, found):
            return None
        pos = end + 4


def _chunk(data: bytes, cid: bytes, start: int, end: int, found: _Chunks) -> bool:
    """Read the chunk cid, data[start:end], into `found`; False where PIL's handler fails on it
    or does what we do not model (APNG, EXIF in a text chunk)."""
    length = end - start
    if cid == b"IHDR":
        return _ihdr(data, start, length, found)
    if cid == b"eXIf":
        found.exif = (start, end)
        return True
    if cid in _TEXT:
        return _text(cid, data[start:end], found)
    if cid == b"iCCP":
        return _iccp_ok(data[start:end])
    if cid in _APNG:
        return False
    return _length_ok(cid, length, found.mode)


def _ihdr(data: bytes, start: int, length: int, found: _Chunks) -> bool:
    """The size and mode; False for a second IHDR, or one PIL fails on."""
    if found.size is not None or length < 13:
        return False
    found.mode = PNG_MODES.get((data[start + 8], data[start + 9]), "")
    if not found.mode or data[start + 11]:  # unknown mode / PIL: "unknown filter category"
        return False
    found.size = (_BE32(data, start)[0], _BE32(data, start + 4)[0])
    return True


def _length_ok(cid: bytes, length: int, mode: str) -> bool:
    """False where a chunk is shorter than PIL's handler reads (others PIL skips)."""
    if cid == b"tRNS":
        return length >= _TRNS_MIN.get(mode, 0)
    if cid == b"gAMA":
        return length >= 4
    if cid == b"cHRM":
        return not length % 4
    if cid == b"sRGB":
        return length >= 1
    if cid == b"pHYs":
        return length >= 9
    return True


def _text(cid: bytes, s: bytes, found: _Chunks) -> bool:
    """Count a text chunk as PIL does; False where its handler raises, where the text is PIL's
    EXIF, or where the texts pass MAX_TEXT_MEMORY."""
    counted = _png_text(cid, s)
    if counted is None:
        return False
    key, nbytes = counted
    if key == b"exif":
        return False  # PIL puts the text itself in info["exif"]
    found.xmp_key = found.xmp_key or key in _XMP_KEYS
    found.text_memory += nbytes
    return found.text_memory <= MAX_TEXT_MEMORY


def _iccp_ok(s: bytes) -> bool:
    """False where PIL's iCCP handler raises."""
    i = s.find(b"\x00")
    if i + 1 >= len(s) or s[i + 1] != 0:
        return False  # PIL: IndexError / "Unknown compression method"
    return _decompress(s[i + 2 :]) is not False


def _lacks_orientation(data: bytes, start: int, end: int) -> bool:
    """True where the EXIF block at data[start:end] has no orientation tag (or no IFD0 PIL reads)."""
    tags = exif_tags(data, start, end)
    return tags is None or ORIENTATION not in tags


def _png_text(cid: bytes, s: bytes) -> tuple[bytes, int] | None:
    """(keyword, an upper bound of the text length PIL counts) for a tEXt/zTXt/iTXt chunk, or
    None where PIL's handler raises. Keyword b"" when PIL stores nothing."""
    k, sep, v = s.partition(b"\x00")
    if cid == b"tEXt":
        return (k, len(v)) if k else (b"", 0)
    if cid == b"zTXt":
        if v and v[0] != 0:
            return None  # "Unknown compression method"
        text = _decompress(v[1:])
        if text is False:
            return None
        return (k, len(text or b"")) if k else (b"", 0)
    # iTXt: PIL returns early (storing nothing) on every malformation except an oversized text
    if not sep or len(v) < 2:
        return b"", 0
    cf, cm, r = v[0], v[1], v[2:]
    parts = r.split(b"\x00", 2)
    if len(parts) < 3:
        return b"", 0
    text = parts[2]
    if cf != 0:
        if cm != 0:
            return b"", 0
        text = _decompress(text)
        if text is False:
            return None
        if text is None:
            return b"", 0
    return k, len(text)


def _decompress(s: bytes) -> bytes | None | bool:
    """PIL's _safe_zlib_decompress: the text, None on a zlib error (PIL carries on), False
    where PIL raises ValueError (more than MAX_TEXT_CHUNK bytes)."""
    dobj = zlib.decompressobj()
    try:
        text = dobj.decompress(s, MAX_TEXT_CHUNK)
    except zlib.error:
        return None
    if dobj.unconsumed_tail:
        return False
    return text
