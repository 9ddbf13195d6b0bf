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

Only JPEG and PNG are read. The parser follows what PIL's plugins do at open time, not just
the format specs: PIL reads a JPEG up to its first SOS (all segments before it are checked, a
truncated header is an error), reads the EXIF resolution tags when no JFIF density is present
(odd values there fail `Image.open`), reads a PNG up to its first IDAT checking every chunk's CRC
and its handler's rules, and takes a missing EXIF orientation from XMP (`tiff:Orientation`).
Orientation is returned as PIL has it, out of range values included: the caller decides.
"""

from __future__ import annotations

import re
import struct
import zlib

ORIENTATION = 0x0112
RESOLUTION_UNIT = 0x0128
X_RESOLUTION = 0x011A

# TIFF field type -> size of one value, for the types PIL's ImageFileDirectory_v2 loads (others it skips).
TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}
TIFF_SHORT, TIFF_LONG = 3, 4
# XResolution types for which PIL's _read_dpi_from_exif cannot raise an exception it does not catch
# (BYTE, ASCII and UNDEFINED values are indexed there: a 1-byte value makes Image.open fail).
SAFE_RESOLUTION_TYPES = frozenset(TIFF_TYPE_SIZES) - {1, 2, 7}
MAX_IFD_ENTRIES = 1000  # more: leave it to PIL (it reads them all; so could we, slowly)

XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # as PIL's Image.getexif
EXIF_PREFIX = b"Exif\x00\x00"

_U16 = {"<": struct.Struct("<H").unpack_from, ">": struct.Struct(">H").unpack_from}
_U32 = {"<": struct.Struct("<I").unpack_from, ">": struct.Struct(">I").unpack_from}
_ENTRY = {"<": struct.Struct("<HHI").unpack_from, ">": struct.Struct(">HHI").unpack_from}
_BE32 = struct.Struct(">I").unpack_from
_TIFF_ENDIAN = {b"II*\x00": "<", b"II\x00*": "<", b"MM\x00*": ">", b"MM*\x00": ">"}  # PIL's non-BigTIFF prefixes


def read_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, orientation) as PIL's Image.open reads them, or None when not certain."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png(data)
    except Exception:  # a bug or an input not foreseen: never worse than asking PIL
        return None
    return None


# ---------------------------------------------------------------------------------------------- EXIF


def _exif_orientation(data: bytes, start: int, end: int, xmp: bytes | None, read_dpi: bool) -> int | None:
    """PIL's getexif().get(0x0112, 1) for the TIFF structure in data[start:end] (leading
    "Exif\\0\\0" prefixes stripped as PIL does); None where PIL would fail or we cannot tell.

    `read_dpi`: PIL's JPEG open reads XResolution when no JFIF density was given; refuse what
    makes that raise. `xmp`: the XMP packet PIL would search when the orientation tag is absent.
    """
    while start < end and data.startswith(EXIF_PREFIX, start, end):
        start += 6
    if start >= end:
        tags = {}
    else:
        tags = _ifd0(data, start, end)
        if tags is None:
            return None
    if read_dpi and RESOLUTION_UNIT in tags and X_RESOLUTION in tags:
        if tags[X_RESOLUTION][0] not in SAFE_RESOLUTION_TYPES:
            return None
    entry = tags.get(ORIENTATION)
    if entry is None:
        if xmp is not None:
            match = XMP_ORIENTATION.search(xmp)
            if match:
                return int(match[2])
        return 1
    typ, count, value = entry
    if typ not in (TIFF_SHORT, TIFF_LONG) or count != 1:  # PIL would give bytes, a float, a warning...: ask it
        return None
    return value


def _ifd0(data: bytes, start: int, end: int) -> dict[int, tuple[int, int, int]] | None:
    """The IFD0 entries PIL's ImageFileDirectory_v2.load keeps, for the tags we need:
    tag -> (type, count, first SHORT value or 0). None: a header PIL refuses (or BigTIFF)."""
    size = end - start
    if size < 8:
        return None
    endian = _TIFF_ENDIAN.get(data[start : start + 4])
    if endian is None:
        return None
    u16, u32, entry = _U16[endian], _U32[endian], _ENTRY[endian]
    (ifd,) = u32(data, start + 4)
    tags: dict[int, tuple[int, int, int]] = {}
    if ifd + 2 > size:  # PIL: "Corrupt EXIF data", no tags
        return tags
    (n,) = u16(data, start + ifd)
    if n > MAX_IFD_ENTRIES:
        return None
    pos = start + ifd + 2
    for _ in range(n):
        if pos + 12 > end:  # PIL stops loading, keeping the tags read so far
            break
        tag, typ, count = entry(data, pos)
        unit = TIFF_TYPE_SIZES.get(typ)
        if unit is not None:  # PIL skips unsupported types
            nbytes = count * unit
            if nbytes > 4:
                (offset,) = u32(data, pos + 8)
                if offset + nbytes > size:  # PIL's read of the value fails: it stops loading
                    break
            if nbytes:  # PIL skips empty values
                if tag == ORIENTATION or tag == RESOLUTION_UNIT or tag == X_RESOLUTION:
                    value = (
                        u16(data, pos + 8)[0] if typ == TIFF_SHORT else u32(data, pos + 8)[0] if typ == TIFF_LONG else 0
                    )
                    tags[tag] = (typ, count, value)
        pos += 12
    return tags


# ---------------------------------------------------------------------------------------------- JPEG

# What PIL's JpegImagePlugin does with the byte after an 0xFF, as one lookup (0: it fails, or we do not model it).
_FILL, _ALONE, _SKIP, _SOF, _APP, _DQT, _SOS = range(1, 8)
_SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_SKIP_MARKERS = (0xC4, 0xCC, 0xDC, 0xDD, 0xDF, 0xFE)  # DHT, DAC, DNL, DRI, EXP, COM: length only
_MARKER_KIND = bytearray(256)
_MARKER_KIND[0xFF] = _FILL  # fill byte: the next one is the marker
for _m in (0x00, *range(0xD0, 0xDA)):  # stuffed 0xFF00, RSTn, SOI, EOI: no length, on to the next 0xFF
    _MARKER_KIND[_m] = _ALONE
for _m in _SKIP_MARKERS:
    _MARKER_KIND[_m] = _SKIP
for _m in _SOF_MARKERS:  # PIL's frame headers minus DHP (0xDE), which libjpeg does not take for one
    _MARKER_KIND[_m] = _SOF
for _m in range(0xE0, 0xF0):
    _MARKER_KIND[_m] = _APP
_MARKER_KIND[0xDB] = _DQT
_MARKER_KIND[0xDA] = _SOS
del _m
_MARKER_KIND = bytes(_MARKER_KIND)  # left at 0: TEM, reserved (PIL: "no marker found"), JPG, JPGn, DHP
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg(data: bytes) -> tuple[int, int, int] | None:
    """Walk the markers from SOI to the first SOS as PIL's JpegImageFile._open does."""
    n = len(data)
    pos = 3  # data[2] is an 0xFF: PIL starts with it pending
    size: tuple[int, int] | None = None
    exif: tuple[int, int] | None = None
    xmp: tuple[int, int] | None = None
    jfif_dpi = False
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
        if kind == _SKIP:
            pass
        elif kind == _DQT:  # PIL checks each table's length
            q = start
            while q < end:
                q += 65 if data[q] < 16 else 129
                if q > end:
                    return None
        elif kind == _SOF:
            if size is not None or length - 2 < 6 or (length - 8) % 3:
                return None  # a second frame header, or one PIL fails on (short, ragged components)
            if data[start] != 8 or data[start + 5] not in (1, 3, 4):
                return None  # PIL: "cannot handle N-bit layers" / "N-layer images"
            size = ((data[start + 3] << 8) | data[start + 4], (data[start + 1] << 8) | data[start + 2])
        elif kind == _APP:
            seg = length - 2
            if m == 0xE1:
                if data.startswith(EXIF_PREFIX, start, end):
                    if exif is not None:
                        return None  # PIL concatenates EXIF segments
                    exif = (start + 6, end)
                elif data.startswith(_XMP_PREFIX, start, end):
                    xmp = (start + len(_XMP_PREFIX), end)
            elif m == 0xE0:
                if data.startswith(b"JFIF", start, end):
                    if seg < 7:
                        return None  # PIL reads the version: struct.error
                    if seg >= 12 and data[start + 7] in (1, 2):
                        jfif_dpi = True
            elif m == 0xE2:
                if data.startswith(b"MPF\x00", start, end):
                    return None  # PIL may open it as MPO
                if data.startswith(b"ICC_PROFILE\x00", start, end) and seg < 14:
                    return None  # PIL indexes byte 13 of the first chunk
            elif m == 0xED:
                if data.startswith(b"Photoshop 3.0\x00", start, end) and not _photoshop_ok(data[start:end]):
                    return None
            elif m == 0xEE:
                if data.startswith(b"Adobe", start, end) and seg < 7:
                    return None  # PIL reads the version: struct.error
        else:  # SOS: PIL reads its header and stops
            break
        # PIL reads one byte and, unless it is 0xFF, skips bytes up to the next 0xFF
        if end < n and data[end] == 0xFF:
            pos = end + 1
        else:
            pos = find(b"\xff", end)
            if pos < 0:
                return None
            pos += 1
    if size is None or size[0] == 0 or size[1] == 0:
        return None  # PIL: "not identified by this driver"
    if exif is None:
        return size[0], size[1], 1
    xmp_packet = data[xmp[0] : xmp[1]] if xmp is not None else None
    orientation = _exif_orientation(data, exif[0], exif[1], xmp_packet, read_dpi=not jfif_dpi)
    if orientation is None:
        return None
    return size[0], size[1], orientation


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


# ---------------------------------------------------------------------------------------------- PNG

_PNG_MODES = {  # PIL's PngImagePlugin._MODES: (bit depth, colour type) -> mode
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
_XMP_KEYS = frozenset((b"xmp", b"XML:com.adobe.xmp"))


def _png(data: bytes) -> tuple[int, int, int] | None:
    """Walk the chunks to the first IDAT (or IEND) as PIL's PngImageFile._open does."""
    n = len(data)
    pos = 8
    view = memoryview(data)
    size: tuple[int, int] | None = None
    mode = ""
    exif: tuple[int, int] | None = None
    xmp_key = False
    text_memory = 0  # an upper bound of what PIL counts against MAX_TEXT_MEMORY
    while True:
        if pos + 8 > n:
            return None
        (length,) = _BE32(data, pos)
        cid = data[pos + 4 : pos + 8]
        start = pos + 8
        if not _IS_CID(cid):
            return None  # PIL: "broken PNG file"
        if size is None and cid != b"IHDR":
            return None  # PIL allows other orders; not worth modelling
        if cid == b"IDAT" or cid == b"IEND":
            break  # PIL stops here (no CRC check)
        end = start + length
        if end + 4 > n:
            return None  # truncated chunk or CRC
        if zlib.crc32(view[start:end], zlib.crc32(cid)) != _BE32(data, end)[0]:
            return None  # PIL: "bad header checksum"
        if cid == b"IHDR":
            if size is not None or length < 13:
                return None
            mode = _PNG_MODES.get((data[start + 8], data[start + 9]), "")
            if not mode or data[start + 11]:  # unknown mode / PIL: "unknown filter category"
                return None
            size = (_BE32(data, start)[0], _BE32(data, start + 4)[0])
        elif cid == b"tRNS":
            if length < _TRNS_MIN.get(mode, 0):
                return None
        elif cid == b"gAMA":
            if length < 4:
                return None
        elif cid == b"cHRM":
            if length % 4:
                return None
        elif cid == b"sRGB":
            if length < 1:
                return None
        elif cid == b"pHYs":
            if length < 9:
                return None
        elif cid == b"eXIf":
            exif = (start, end)
        elif cid == b"tEXt" or cid == b"zTXt" or cid == b"iTXt":
            counted = _png_text(cid, data[start:end])
            if counted is None:
                return None
            key, nbytes = counted
            if key == b"exif":
                return None  # PIL puts the text itself in info["exif"]
            xmp_key = xmp_key or key in _XMP_KEYS
            text_memory += nbytes
            if text_memory > MAX_TEXT_MEMORY:
                return None
        elif cid == b"iCCP":
            s = data[start:end]
            i = s.find(b"\x00")
            if i + 1 >= len(s) or s[i + 1] != 0:
                return None  # PIL: IndexError / "Unknown compression method"
            if _decompress(s[i + 2 :]) is False:
                return None
        elif cid in _APNG:
            return None
        pos = end + 4
    if size is None or size[0] == 0 or size[1] == 0:
        return None
    if exif is None:
        return size[0], size[1], 1
    orientation = _exif_orientation(data, exif[0], exif[1], None, read_dpi=False)
    if orientation is None:
        return None
    if orientation == 1 and xmp_key and _ifd_lacks_orientation(data, exif[0], exif[1]):
        return None  # PIL would search the XMP text (str or bytes, by chunk kind): ask it
    return size[0], size[1], orientation


def _ifd_lacks_orientation(data: bytes, start: int, end: int) -> bool:
    while start < end and data.startswith(EXIF_PREFIX, start, end):
        start += 6
    tags = _ifd0(data, start, end) if start < end else {}
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
