"""The header parser against PIL itself: on real images it must say what Image.open + getexif
say, and on anything else (truncated, mutated, junk) either the same or None ("ask PIL")."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from PIL.PngImagePlugin import PngInfo

from encoders import headers
from encoders.headers import read_header
from encoders.images import ImageRejected
from encoders.tensor_images import Header, _probe
from pipelines.datasets import catalogue
from tests import images

CLIPART = os.path.join(catalogue.OPENCLIPART_ROOT, "png")
MAX = 10**9


def pil_header(data: bytes) -> tuple[int, int, int] | None:
    """What the parser must agree with: PIL's size and _probe's orientation rule, or None if PIL
    fails (its decompression-bomb check off: that one is the caller's)."""
    bomb_cap, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        orientation = image.getexif().get(0x0112, 1) if "exif" in image.info else 1
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_cap
    return size[0], size[1], orientation


def old_probe(data: bytes, max_pixels: int = MAX) -> Header:
    """_probe as it was before the parser (PIL only), the reference for behaviour."""
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        orientation = image.getexif().get(0x0112, 1) if "exif" in image.info else 1
    except Exception:
        return Header(0, None)
    if size[0] * size[1] > max_pixels:
        return Header(-1, None)  # stands for ImageRejected("too_many_pixels")
    return Header(size[0] * size[1], orientation if orientation in range(1, 9) else None)


def new_probe(data: bytes, max_pixels: int = MAX) -> Header:
    try:
        return _probe(data, max_pixels, MAX)
    except ImageRejected as exc:
        assert exc.reason == "too_many_pixels"
        return Header(-1, None)


def exif_bytes(tags: dict[int, object], endian: str = "<") -> bytes:
    exif = Image.Exif()
    for k, v in tags.items():
        exif[k] = v
    exif.endian = endian
    return exif.tobytes()


def noise(size=(64, 40), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def insert_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """`jpeg` with a marker segment inserted right after SOI."""
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def insert_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """`png` with a chunk inserted right after IHDR."""
    return png[:33] + png_chunk(kind, body) + png[33:]


def photoshop(*blocks: tuple[int, bytes, bytes]) -> bytes:
    out = b"Photoshop 3.0\x00"
    for code, name, data in blocks:
        pascal = bytes([len(name)]) + name
        pascal += b"\x00" * (len(pascal) & 1)
        out += b"8BIM" + struct.pack(">H", code) + pascal + struct.pack(">I", len(data)) + data
        out += b"\x00" * (len(data) & 1)
    return out


def jpegs() -> dict[str, bytes]:
    good = noise()
    icc = bytes(range(256)) * 300  # 76,800 bytes: two APP2 segments
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    out = {f"orientation {o}": images.save(good, "JPEG", exif=exif_bytes({0x0112: o})) for o in range(0, 10)}
    out |= {f"big-endian orientation {o}": images.save(good, "JPEG", exif=exif_bytes({0x0112: o}, ">")) for o in (3, 6)}
    out |= {
        "orientation 65535": images.save(good, "JPEG", exif=exif_bytes({0x0112: 65535})),
        "plain": images.save(good, "JPEG"),
        "quality 20, 4:2:0": images.save(good, "JPEG", quality=20, subsampling=2),
        "progressive": images.save(good, "JPEG", progressive=True),
        "progressive with EXIF 8": images.save(good, "JPEG", progressive=True, exif=exif_bytes({0x0112: 8})),
        "optimized": images.save(good, "JPEG", optimize=True),
        "grayscale": images.save(good.convert("L"), "JPEG"),
        "CMYK (Adobe APP14)": images.save(good.convert("CMYK"), "JPEG"),
        "CMYK with EXIF 5": images.save(good.convert("CMYK"), "JPEG", exif=exif_bytes({0x0112: 5})),
        "ICC profile (2 x APP2)": images.save(good, "JPEG", icc_profile=icc),
        "ICC + EXIF 6": images.save(good, "JPEG", icc_profile=icc, exif=exif_bytes({0x0112: 6})),
        "comment": images.save(good, "JPEG", comment=b"made by a test" * 100),
        "JFIF dpi": images.save(good, "JPEG", dpi=(300, 300)),
        "JFIF dpi + EXIF 3": images.save(good, "JPEG", dpi=(300, 300), exif=exif_bytes({0x0112: 3})),
        "restart markers": images.save(good, "JPEG", restart_marker_blocks=1),
        "EXIF with resolution and strings": images.save(
            good,
            "JPEG",
            exif=exif_bytes({0x0112: 6, 0x011A: 72.0, 0x011B: 72.0, 0x0128: 2, 0x010F: "Maker", 0x0110: "Model X"}),
        ),
        "EXIF without orientation": images.save(good, "JPEG", exif=exif_bytes({0x010F: "Maker"})),
        "EXIF without orientation, XMP orientation": images.save(
            good, "JPEG", exif=exif_bytes({0x010F: "Maker"}), xmp=xmp
        ),
        "EXIF orientation 3 and XMP 6": images.save(good, "JPEG", exif=exif_bytes({0x0112: 3}), xmp=xmp),
        "XMP orientation without EXIF": images.save(good, "JPEG", xmp=xmp),
        "empty EXIF": images.save(good, "JPEG", exif=b"Exif\x00\x00"),
        "1x1": images.save(Image.new("RGB", (1, 1)), "JPEG"),
        "3x4000": images.save(good.resize((3, 4000)), "JPEG"),
        "4000x3": images.save(good.resize((4000, 3)), "JPEG"),
        "EXIF-rotated (tests.images)": images.exif_rotated_jpeg()[0],
        "CMYK (tests.images)": images.valid_images()["CMYK JPEG"],
    }
    plain = out["plain"]
    out |= {
        "Photoshop APP13": insert_segment(plain, 0xED, photoshop((0x0404, b"", b"iptc"), (0x03ED, b"res", b"x" * 16))),
        "Photoshop APP13, short ResolutionInfo": insert_segment(plain, 0xED, photoshop((0x03ED, b"", b"xy"))),
        "Photoshop APP13 cut in a name": insert_segment(plain, 0xED, b"Photoshop 3.0\x008BIM\x04\x04"),
        "Photoshop APP13 cut in a size": insert_segment(plain, 0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00"),
        "APP15 junk": insert_segment(plain, 0xEF, os.urandom(300)),
        "short JFIF": insert_segment(plain, 0xE0, b"JFIF\x00"),
        "short Adobe": insert_segment(plain, 0xEE, b"Adobe\x00"),
        "short ICC chunk": insert_segment(plain, 0xE2, b"ICC_PROFILE\x00\x01"),
        "MPF segment": insert_segment(plain, 0xE2, b"MPF\x00" + b"\x00" * 20),
        "fill bytes before a marker": plain[:2] + b"\xff\xff\xff" + plain[2:],
        "junk bytes between segments": plain[:20] + b"\x12\x34" + plain[20:],
        "stuffed 0xFF00 before a marker": plain[:2] + b"\xff\x00" + plain[2:],
        "RST and EOI before the frame": plain[:2] + b"\xff\xd0\xff\xd9" + plain[2:],
        "TEM marker": plain[:2] + b"\xff\x01" + plain[2:],
        "JPG0 marker (no length in PIL)": plain[:2] + b"\xff\xf0" + plain[2:],
        "DHP segment": insert_segment(plain, 0xDE, b"\x08\x00\x10\x00\x10\x03" + b"\x01\x11\x00" * 3),
        "12-bit frame": plain.replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1),
        "2 components": plain.replace(
            b"\xff\xc0\x00\x11\x08\x00\x28\x00\x40\x03", b"\xff\xc0\x00\x11\x08\x00\x28\x00\x40\x02"
        ),
        "zero height": plain.replace(b"\xff\xc0\x00\x11\x08\x00\x28", b"\xff\xc0\x00\x11\x08\x00\x00", 1),
        "no frame header": plain.replace(b"\xff\xc0", b"\xff\xe9", 1),
        "two EXIF segments": insert_segment(out["orientation 6"], 0xE1, b"Exif\x00\x00" + exif_bytes({0x0112: 3})[6:]),
    }
    return out


def exif_oddities() -> dict[str, bytes]:
    """Hand-made TIFF structures in an APP1 "Exif" segment: types, counts, offsets, byte orders."""
    plain = images.save(noise(), "JPEG")

    def tiff(entries: list[tuple[int, int, int, bytes]], endian="<", ifd=8, tail=b"", head=None) -> bytes:
        e = endian
        out = head if head is not None else (b"II*\x00" if e == "<" else b"MM\x00*")
        out += struct.pack(e + "I", ifd) + b"\x00" * (ifd - 8)
        out += struct.pack(e + "H", len(entries))
        for tag, typ, count, value in entries:
            out += struct.pack(e + "HHI", tag, typ, count) + value.ljust(4, b"\x00")
        return out + struct.pack(e + "I", 0) + tail

    def short(v, e="<"):
        return struct.pack(e + "H", v)

    cases = {
        "SHORT 6": tiff([(0x0112, 3, 1, short(6))]),
        "LONG 6": tiff([(0x0112, 4, 1, struct.pack("<I", 6))]),
        "BYTE 6": tiff([(0x0112, 1, 1, b"\x06")]),
        "SHORT x2": tiff([(0x0112, 3, 2, short(6) + short(3))]),
        "SHORT count 0": tiff([(0x0112, 3, 0, b"")]),
        "unknown type then SHORT": tiff([(0x0112, 3, 1, short(3)), (0x0112, 99, 1, short(6))]),
        "duplicate tag, last wins": tiff([(0x0112, 3, 1, short(3)), (0x0112, 3, 1, short(6))]),
        "RATIONAL orientation": tiff([(0x0112, 5, 1, struct.pack("<I", 26))], tail=struct.pack("<II", 6, 1)),
        "value out of range stops loading": tiff([(0x010F, 2, 50, struct.pack("<I", 5000)), (0x0112, 3, 1, short(6))]),
        "value in range": tiff([(0x010F, 2, 5, struct.pack("<I", 26)), (0x0112, 3, 1, short(6))], tail=b"Make\x00"),
        "truncated IFD": tiff([(0x0112, 3, 1, short(6))])[:-8],
        "IFD past the end": tiff([(0x0112, 3, 1, short(6))], ifd=8)[:8].replace(
            b"\x08\x00\x00\x00", b"\xff\x00\x00\x00"
        ),
        "IFD at 20": tiff([(0x0112, 3, 1, short(8))], ifd=20),
        "MM*\\0 header": tiff([(0x0112, 3, 1, short(6, ">"))], endian=">", head=b"MM*\x00"),
        "II\\0* header": tiff([(0x0112, 3, 1, short(6))], head=b"II\x00*"),
        "BigTIFF header": tiff([(0x0112, 3, 1, short(6))], head=b"II+\x00"),
        "bad header": tiff([(0x0112, 3, 1, short(6))], head=b"XX*\x00"),
        "short header": b"II*\x00\x08",
        "Exif prefix twice": b"Exif\x00\x00" + tiff([(0x0112, 3, 1, short(7))]),
        "65535 entries": tiff([(0x0112, 3, 1, short(6))]).replace(b"\x01\x00", b"\xff\xff", 1),
        "XResolution ASCII 1 char + unit": tiff([(0x0128, 3, 1, short(2)), (0x011A, 2, 1, b"7")]),
        "XResolution ASCII 2 chars + unit": tiff([(0x0128, 3, 1, short(2)), (0x011A, 2, 2, b"72")]),
        "XResolution BYTE + unit": tiff([(0x0128, 3, 1, short(2)), (0x011A, 1, 1, b"\x48")]),
        "XResolution UNDEFINED x2 + unit": tiff([(0x0128, 3, 1, short(3)), (0x011A, 7, 2, b"\x48\x00")]),
        "XResolution RATIONAL 0/0 + unit": tiff(
            [(0x0128, 3, 1, short(3)), (0x011A, 5, 1, struct.pack("<I", 38)), (0x0112, 3, 1, short(2))],
            tail=struct.pack("<II", 0, 0),
        ),
        "XResolution SHORT + unit cm": tiff(
            [(0x0128, 3, 1, short(3)), (0x011A, 3, 1, short(72)), (0x0112, 3, 1, short(4))]
        ),
        "XResolution DOUBLE + unit": tiff(
            [(0x0128, 3, 1, short(2)), (0x011A, 12, 1, struct.pack("<I", 38)), (0x0112, 3, 1, short(5))],
            tail=struct.pack("<d", float("nan")),
        ),
        "XResolution ASCII without unit": tiff([(0x011A, 2, 1, b"7"), (0x0112, 3, 1, short(8))]),
    }
    out = {}
    for name, body in cases.items():
        out[f"EXIF {name}"] = insert_segment(plain, 0xE1, b"Exif\x00\x00" + body)
        jfif_dpi = images.save(noise(), "JPEG", dpi=(96, 96))
        out[f"EXIF {name}, JFIF dpi"] = insert_segment(jfif_dpi, 0xE1, b"Exif\x00\x00" + body)
    return out


def pngs() -> dict[str, bytes]:
    good = noise((50, 30))
    info = PngInfo()
    info.add_text("Title", "a title")
    info.add_text("Comment", "compressed " * 50, zip=True)
    info.add_itxt("Description", "international ✓", lang="en", tkey="Beschreibung")
    info.add_itxt("Packed", "deflated ✓ " * 50, zip=True)
    xmp = PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta tiff:Orientation="6"/>')
    out = {
        f"mode {mode}": images.save(good.convert(mode), "PNG")
        for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I")
    }
    out |= {
        "palette with transparency": images.palette_with_transparency(),
        "RGB with transparency": images.save(good, "PNG", transparency=(1, 2, 3)),
        "L with transparency": images.save(good.convert("L"), "PNG", transparency=7),
        "16-bit grayscale": images.sixteen_bit_png()[0],
        "text chunks": images.save(good, "PNG", pnginfo=info),
        "ICC profile": images.save(good, "PNG", icc_profile=bytes(range(256)) * 20),
        "dpi": images.save(good, "PNG", dpi=(300, 300)),
        "EXIF orientation 6": images.save(good, "PNG", exif=exif_bytes({0x0112: 6})),
        "EXIF orientation 9": images.save(good, "PNG", exif=exif_bytes({0x0112: 9})),
        "EXIF without orientation": images.save(good, "PNG", exif=exif_bytes({0x010F: "Maker"})),
        "EXIF without orientation, XMP": images.save(good, "PNG", exif=exif_bytes({0x010F: "M"}), pnginfo=xmp),
        "EXIF 3, XMP": images.save(good, "PNG", exif=exif_bytes({0x0112: 3}), pnginfo=xmp),
        "animated (APNG)": images.animated("PNG"),
        "bomb header": images.png_bomb(),
        "1x1": images.save(Image.new("RGB", (1, 1)), "PNG"),
    }
    plain = out["mode RGB"]
    out |= {
        "unknown private chunk": insert_chunk(plain, b"prVt", b"private data"),
        "bad CRC": _bad_crc(plain),
        "tEXt exif": insert_chunk(plain, b"tEXt", b"exif\x00whatever"),
        "zTXt bad method": insert_chunk(plain, b"zTXt", b"key\x00\x01xx"),
        "zTXt bad stream": insert_chunk(plain, b"zTXt", b"key\x00\x00not zlib"),
        "zTXt over MAX_TEXT_CHUNK": insert_chunk(plain, b"zTXt", b"key\x00\x00" + zlib.compress(b"a" * (2 << 20))),
        "iTXt over MAX_TEXT_CHUNK": insert_chunk(
            plain, b"iTXt", b"k\x00\x01\x00\x00\x00" + zlib.compress(b"a" * (2 << 20))
        ),
        "iTXt bad utf-8": insert_chunk(plain, b"iTXt", b"k\x00\x00\x00\x00\x00\xff\xfe"),
        "iCCP no name end": insert_chunk(plain, b"iCCP", b"name"),
        "iCCP bad method": insert_chunk(plain, b"iCCP", b"name\x00\x01xx"),
        "short gAMA": insert_chunk(plain, b"gAMA", b"\x00\x01"),
        "ragged cHRM": insert_chunk(plain, b"cHRM", b"\x00" * 7),
        "empty sRGB": insert_chunk(plain, b"sRGB", b""),
        "short pHYs": insert_chunk(plain, b"pHYs", b"\x00" * 8),
        "short tRNS for RGB": insert_chunk(plain, b"tRNS", b"\x00\x01"),
        "eXIf twice": insert_chunk(out["EXIF orientation 6"], b"eXIf", exif_bytes({0x0112: 3})[6:]),
        "bad chunk id": insert_chunk(plain, b"a-b!", b""),
        "IEND before IDAT": plain[:33] + png_chunk(b"IEND", b""),
        "filter method 1": plain[:8] + png_chunk(b"IHDR", plain[16:27] + b"\x01" + plain[28:29]) + plain[33:],
        "compression method 1": plain[:8] + png_chunk(b"IHDR", plain[16:26] + b"\x01" + plain[27:29]) + plain[33:],
        "bit depth 3": plain[:8] + png_chunk(b"IHDR", plain[16:24] + b"\x03" + plain[25:29]) + plain[33:],
    }
    return out


def _bad_crc(png: bytes) -> bytes:
    with_chunk = insert_chunk(png, b"prVt", b"x")
    return with_chunk[: 33 + 9] + b"\x00\x00\x00\x00" + with_chunk[33 + 13 :]  # the new chunk's CRC zeroed


def clipart_pngs(limit: int) -> list[bytes]:
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(CLIPART) for f in fs if f.endswith(".png"))
    return [open(p, "rb").read() for p in random.Random(0).sample(paths, min(limit, len(paths)))]


CORPUS = {
    **{f"JPEG {k}": v for k, v in jpegs().items()},
    **exif_oddities(),
    **{f"PNG {k}": v for k, v in pngs().items()},
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_agrees_with_pil_or_abstains(name):
    data = CORPUS[name]
    ours, pil = read_header(data), pil_header(data)
    assert ours is None or ours == pil, f"{name}: parser {ours}, PIL {pil}"
    assert new_probe(data) == old_probe(data)
    assert new_probe(data, max_pixels=100) == old_probe(data, max_pixels=100)


# Inputs PIL opens that the parser leaves to it on purpose (rare; modelling them is not worth it).
ABSTAINS = {
    "JPEG MPF segment": "PIL may open it as an MPO",
    "JPEG JPG0 marker (no length in PIL)": "JPGn markers: PIL reads no length, libjpeg does",
    "JPEG DHP segment": "PIL takes DHP for a frame header",
    "JPEG two EXIF segments": "PIL concatenates them",
    **{
        f"EXIF {name}{variant}": why
        for name, why in {
            "BYTE 6": "PIL's orientation is bytes",
            "SHORT x2": "PIL keeps the first value, with a warning",
            "RATIONAL orientation": "PIL's orientation is a rational",
            "65535 entries": "more than MAX_IFD_ENTRIES",
        }.items()
        for variant in ("", ", JFIF dpi")
    },
    # without a JFIF density, PIL reads XResolution at open:
    "EXIF BigTIFF header": "PIL then says 1 (with a JFIF density it fails)",
    "EXIF bad header": "same",
    "EXIF short header": "same",
    "EXIF XResolution ASCII 2 chars + unit": "PIL indexes the string: a 1-character one fails Image.open",
    "EXIF XResolution UNDEFINED x2 + unit": "same, for bytes",
    "PNG EXIF without orientation, XMP": "PIL searches the XMP text chunk",
    "PNG animated (APNG)": "APNG chunks",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_where_pil_answers_the_parser_answers_too(name):
    data = CORPUS[name]
    pil = pil_header(data)
    if pil is None or name in ABSTAINS:
        assert read_header(data) is None
    else:
        assert read_header(data) == pil


def test_every_exif_orientation_and_out_of_range_values():
    for o in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 65535):
        data = CORPUS[f"JPEG orientation {o}"] if o < 10 else CORPUS["JPEG orientation 65535"]
        assert read_header(data) == (64, 40, o)
        assert _probe(data, MAX, MAX) == Header(64 * 40, o if 1 <= o <= 8 else None)


def test_xmp_orientation_is_read_where_pil_reads_it():
    assert read_header(CORPUS["JPEG EXIF without orientation, XMP orientation"])[2] == 6
    assert read_header(CORPUS["JPEG EXIF orientation 3 and XMP 6"])[2] == 3
    assert read_header(CORPUS["JPEG XMP orientation without EXIF"])[2] == 1  # _probe asks getexif only with EXIF


def test_pil_failures_are_never_answered():
    """Inputs PIL refuses: the parser must abstain (and _probe then says what PIL says)."""
    for name in (
        "JPEG 12-bit frame",
        "JPEG 2 components",
        "JPEG zero height",
        "JPEG no frame header",
        "JPEG TEM marker",
    ):
        assert pil_header(CORPUS[name]) is None and read_header(CORPUS[name]) is None, name
    for name in ("PNG bad CRC", "PNG zTXt over MAX_TEXT_CHUNK", "PNG short gAMA", "PNG filter method 1"):
        assert pil_header(CORPUS[name]) is None and read_header(CORPUS[name]) is None, name


@pytest.mark.skipif(not os.path.isdir(CLIPART), reason="needs openclipart-png (apt-get install -y openclipart-png)")
def test_openclipart_pngs_and_their_jpeg_versions():
    for data in clipart_pngs(300):
        assert read_header(data) == pil_header(data) is not None
        jpeg = images.save(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG")
        assert read_header(jpeg) == pil_header(jpeg) is not None


def test_truncations_junk_and_empty():
    for name, data in CORPUS.items():
        for cut in list(range(0, min(len(data), 700))) + [len(data) // 2, len(data) - 1]:
            ours = read_header(data[:cut])
            assert ours is None or ours == pil_header(data[:cut]), (name, cut)
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 3, 10, 100, 3000):
        junk = rng.bytes(n)
        assert read_header(junk) is None
        assert read_header(b"\xff\xd8\xff" + junk) in (None, pil_header(b"\xff\xd8\xff" + junk))
        assert read_header(b"\x89PNG\r\n\x1a\n" + junk) in (None, pil_header(b"\x89PNG\r\n\x1a\n" + junk))
    assert read_header(b"") is None


def mutate(data: bytes, rng: random.Random, span: int) -> bytes:
    """One to four random edits within the first `span` bytes: set, flip, insert, delete, cut."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            break
        i = rng.randrange(min(span, len(b)))
        op = rng.randrange(6)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            b[i] = rng.choice((0x00, 0xFF, 0x01, 0x7F, 0x80))
        elif op == 3:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        elif op == 4:
            del b[i : i + rng.randint(1, 3)]
        else:
            del b[rng.randrange(i, len(b)) :]
    return bytes(b)


def fuzz(rounds: int, seed: int) -> list[str]:
    """Mutated headers on which the parser answers something PIL does not say (must be none)."""
    rng = random.Random(seed)
    names = sorted(CORPUS)
    wrong = []
    for _ in range(rounds):
        name = rng.choice(names)
        data = CORPUS[name]
        span = len(data) if data.startswith(b"\x89PNG") else min(len(data), 1200)
        mutated = mutate(data, rng, span)
        ours = read_header(mutated)  # must not raise
        if ours is not None and ours != pil_header(mutated):
            wrong.append(f"{name}: {mutated[:64]!r}... parser {ours}, PIL {pil_header(mutated)}")
    return wrong


def test_fuzzed_headers_never_raise_and_never_disagree():
    assert fuzz(int(os.environ.get("HEADER_FUZZ_ROUNDS", "3000")), seed=1) == []


def test_model_of_pil_matches_the_installed_pil():
    """The parser models PIL's plugins; a PIL upgrade that changes what it models fails here."""
    assert {(k, m) for k, (m, _) in PngImagePlugin._MODES.items()} == set(headers._PNG_MODES.items())
    assert PngImagePlugin.MAX_TEXT_CHUNK == headers.MAX_TEXT_CHUNK
    assert PngImagePlugin.MAX_TEXT_MEMORY == headers.MAX_TEXT_MEMORY
    handlers = {n[6:] for n in dir(PngImagePlugin.PngStream) if n.startswith("chunk_")}
    assert handlers == {"iCCP", "IHDR", "IDAT", "IEND", "PLTE", "tRNS", "gAMA", "cHRM", "sRGB", "pHYs"} | {
        "tEXt",
        "zTXt",
        "iTXt",
        "eXIf",
        "acTL",
        "fcTL",
        "fdAT",
    }
    kinds = {
        JpegImagePlugin.SOF: set(headers._SOF_MARKERS) | {0xDE},
        JpegImagePlugin.Skip: set(headers._SKIP_MARKERS) - {0xFE} | {0xDA},
        JpegImagePlugin.APP: set(range(0xE0, 0xF0)),
        JpegImagePlugin.DQT: {0xDB},
        JpegImagePlugin.COM: {0xFE},
        None: set(range(0xD0, 0xDA)) | {0xC8} | set(range(0xF0, 0xFE)),
    }
    for handler, markers in kinds.items():
        assert {m & 0xFF for m, (_, _, h) in JpegImagePlugin.MARKER.items() if h is handler} == markers
    sizes = {t: size for t, (size, _) in TiffImagePlugin.ImageFileDirectory_v2._load_dispatch.items()}
    assert sizes == headers.TIFF_TYPE_SIZES
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_header_probe_benchmark_runs(capsys):
    from benchmarks import header_probe

    assert header_probe.main(["--images", "12", "--size", "64", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "JPEG" in out and "PNG" in out


def ifd_jpeg(entries: list[tuple[int, int, int, bytes]], dpi: bool, tail: bytes = b"") -> bytes:
    """A JPEG whose APP1 EXIF holds one little-endian IFD0 with these entries (value bytes inline
    when they fit, else at an offset into `tail`)."""
    body = struct.pack("<H", len(entries))
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    for tag, typ, count, value in entries:
        if len(value) > 4:
            body += struct.pack("<HHII", tag, typ, count, ifd_end + len(tail))
            tail += value
        else:
            body += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\x00")
    tiff = b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0) + tail
    base = images.save(noise((16, 8)), "JPEG", **({"dpi": (96, 96)} if dpi else {}))
    return insert_segment(base, 0xE1, b"Exif\x00\x00" + tiff)


def test_every_tiff_type_and_count_for_the_tags_pil_reads():
    """Orientation, ResolutionUnit and XResolution in every TIFF type (known and not) and a few
    counts, with and without a JFIF density: the parser agrees with PIL or abstains, and answers
    the ordinary SHORT/LONG orientation itself."""
    rng = random.Random(3)
    for typ in range(0, 19):
        for count in (0, 1, 2, 3, 9):
            value = bytes(rng.randrange(1, 9) for _ in range(count * headers.TIFF_TYPE_SIZES.get(typ, 1)))
            for dpi in (False, True):
                cases = [
                    [(0x0112, typ, count, value)],
                    [(0x0128, 3, 1, b"\x02\x00"), (0x011A, typ, count, value), (0x0112, 3, 1, b"\x06\x00")],
                    [
                        (0x0128, typ, count, value),
                        (0x011A, 5, 1, struct.pack("<II", 72, 1)),
                        (0x0112, 3, 1, b"\x03\x00"),
                    ],
                ]
                for entries in cases:
                    data = ifd_jpeg(entries, dpi)
                    ours, pil = read_header(data), pil_header(data)
                    assert ours is None or ours == pil, (typ, count, dpi, entries, ours, pil)
                    if typ in (3, 4) and count == 1 and entries[0][0] == 0x0112:
                        assert ours == pil is not None


def test_last_xmp_packet_counts():
    xmp = b"http://ns.adobe.com/xap/1.0/\x00"
    data = images.save(noise(), "JPEG", exif=exif_bytes({0x010F: "Maker"}))
    data = insert_segment(data, 0xE1, xmp + b'<x tiff:Orientation="3"/>')
    data = insert_segment(data, 0xE1, xmp + b"<x tiff:Orientation>7</x>")  # inserted first: PIL keeps the later one
    assert read_header(data) == pil_header(data) == (64, 40, 3)
