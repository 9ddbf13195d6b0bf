"""The EXIF orientation PIL's getexif() gives, from the TIFF structure of an EXIF block.

`exif_orientation` answers `image.getexif().get(0x0112, 1)` for EXIF bytes found by a format's
walk (JPEG APP1, PNG eXIf), or None where PIL would fail or we cannot tell. It reads only IFD0,
as PIL's ImageFileDirectory_v2.load does, and only the tags the answer needs.
"""

from __future__ import annotations

import re
import struct

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
_TIFF_ENDIAN = {b"II*\x00": "<", b"II\x00*": "<", b"MM\x00*": ">", b"MM*\x00": ">"}  # PIL's non-BigTIFF prefixes
_WANTED = frozenset((ORIENTATION, RESOLUTION_UNIT, X_RESOLUTION))

Tags = dict[int, tuple[int, int, int]]  # tag -> (type, count, first SHORT/LONG value or 0)


def exif_orientation(data: bytes, start: int, end: int, xmp: bytes | None, read_dpi: bool) -> int | None:
    """PIL's getexif().get(0x0112, 1) for the TIFF structure in data[start:end] (leading
    "Exif\\0\\0" prefixes stripped as PIL does); None where PIL would fail or we cannot tell.

    `read_dpi`: PIL's JPEG open reads XResolution when no JFIF density was given; refuse what
    makes that raise. `xmp`: the XMP packet PIL would search when the orientation tag is absent.
    """
    tags = exif_tags(data, start, end)
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


def exif_tags(data: bytes, start: int, end: int) -> Tags | None:
    """The IFD0 tags we need from the EXIF block data[start:end], its "Exif\\0\\0" prefixes
    stripped as PIL does: {} for an empty block, None for a header PIL refuses."""
    while start < end and data.startswith(EXIF_PREFIX, start, end):
        start += 6
    if start >= end:
        return {}
    return _ifd0(data, start, end)


def _ifd0(data: bytes, start: int, end: int) -> Tags | None:
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
    tags: Tags = {}
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
            if nbytes and tag in _WANTED:  # PIL skips empty values
                value = u16(data, pos + 8)[0] if typ == TIFF_SHORT else u32(data, pos + 8)[0] if typ == TIFF_LONG else 0
                tags[tag] = (typ, count, value)
        pos += 12
    return tags
