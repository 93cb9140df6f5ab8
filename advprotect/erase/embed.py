"""Carry an erase payload inside the image file, without touching its pixels, or in a sidecar.

Where the payload goes (the payload is binary; nothing is base64-inflated):

* PNG: a private ancillary chunk ``apER`` placed just before ``IEND``. Its name says ancillary
  (ignored by decoders), private, and *not safe to copy*: an editor that changes the pixels must
  drop it, which is right since the payload is bound to the pixels.
* JPEG: APP11 segments, each ``b"advprotect-erase\\0"`` + sequence number (u16 BE) + count (u16 BE)
  + up to 65,512 payload bytes, inserted after the leading APP0 (JFIF) / APP1 (Exif) segments and
  before any other segment (so MPF offsets in APP2 stay valid). Payloads over 64 KB span several
  segments.
* WebP: a RIFF chunk ``ADVP`` appended after the image data. Simple (``VP8 ``/``VP8L``) files are
  first turned into the extended format (a ``VP8X`` header chunk), which allows unknown chunks.
* TIFF (classic, not BigTIFF): private tag 44517 (type UNDEFINED) added to the first IFD. The payload
  and a rewritten first IFD are appended to the file and the header is pointed at the new IFD; the
  image data is not moved.
* anything else (BMP, GIF, ...): no embedding; use a sidecar.

A sidecar is the payload file itself, named ``<output file name>.advp`` (``photo.jpg.advp``).

Every embedding is checked by decoding the file before and after: if the pixels differ, nothing is
written. Files are replaced atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import EmbedError, ImageReadError, PayloadFormatError
from .pixels import atomic_write, read_pixels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHUNK = b"apER"
JPEG_APP = 0xEB  # APP11
JPEG_ID = b"advprotect-erase\x00"
_JPEG_MAX_DATA = 0xFFFF - 2 - len(JPEG_ID) - 4
WEBP_CHUNK = b"ADVP"
TIFF_TAG = 44517
SIDECAR_SUFFIX = ".advp"

EMBED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")


def sniff_format(data: bytes) -> Optional[str]:
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        return "BIGTIFF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


# ----------------------------------------------------------------------------------------------
# PNG


def _png_chunks(data: bytes):
    if not data.startswith(PNG_SIGNATURE):
        raise EmbedError("not a PNG file")
    pos = len(PNG_SIGNATURE)
    n = len(data)
    while pos + 12 <= n:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            raise EmbedError("PNG file is truncated")
        yield pos, ctype, data[pos + 8 : pos + 8 + length], end
        pos = end
        if ctype == b"IEND":
            return
    raise EmbedError("PNG file has no IEND chunk")


def _png_embed(data: bytes, payload: bytes) -> bytes:
    if len(payload) > 0x7FFFFFFF:
        raise EmbedError("payload too large for a PNG chunk; use a sidecar")
    out = [data[: len(PNG_SIGNATURE)]]
    chunk = struct.pack(">I", len(payload)) + PNG_CHUNK + payload
    chunk += struct.pack(">I", zlib.crc32(PNG_CHUNK + payload) & 0xFFFFFFFF)
    for pos, ctype, _body, end in _png_chunks(data):
        if ctype == PNG_CHUNK:
            continue
        if ctype == b"IEND":
            out.append(chunk)
        out.append(data[pos:end])
    return b"".join(out) + data[end:]


def _png_extract(data: bytes) -> Optional[bytes]:
    for _pos, ctype, body, _end in _png_chunks(data):
        if ctype == PNG_CHUNK:
            return body
    return None


# ----------------------------------------------------------------------------------------------
# JPEG


def _jpeg_segments(data: bytes):
    """Yield (start, marker, end) of the marker segments before the first SOS (exclusive)."""
    if not data.startswith(b"\xff\xd8"):
        raise EmbedError("not a JPEG file")
    pos = 2
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            raise EmbedError("JPEG file is malformed (expected a marker)")
        start = pos
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xDA or marker == 0xD9:  # SOS / EOI: header part ends
            yield start, marker, None
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            yield start, marker, pos
            continue
        if pos + 2 > n:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > n:
            raise EmbedError("JPEG file is malformed (segment length)")
        pos += length
        yield start, marker, pos
    raise EmbedError("JPEG file is truncated (no image data)")


def _is_ours(data: bytes, start: int, marker: int, end: int) -> bool:
    if marker != JPEG_APP:
        return False
    body_start = _jpeg_body_start(data, start)
    return data[body_start : body_start + len(JPEG_ID)] == JPEG_ID and end - body_start >= len(JPEG_ID) + 4


def _jpeg_body_start(data: bytes, start: int) -> int:
    pos = start
    while data[pos] == 0xFF:
        pos += 1
    return pos + 3  # marker byte + 2 length bytes


def _jpeg_embed(data: bytes, payload: bytes) -> bytes:
    pieces = [payload[i : i + _JPEG_MAX_DATA] for i in range(0, len(payload), _JPEG_MAX_DATA)] or [b""]
    if len(pieces) > 0xFFFF:
        raise EmbedError("payload too large for JPEG APP11 segments; use a sidecar")
    segs = []
    for i, piece in enumerate(pieces):
        body = JPEG_ID + struct.pack(">HH", i, len(pieces)) + piece
        segs.append(bytes([0xFF, JPEG_APP]) + struct.pack(">H", len(body) + 2) + body)
    new_segments = b"".join(segs)

    out = [data[:2]]
    inserted = False
    tail_start = None
    for start, marker, end in _jpeg_segments(data):
        if end is None:  # SOS or EOI: copy everything from here verbatim
            tail_start = start
            break
        if _is_ours(data, start, marker, end):
            continue
        if not inserted and marker not in (0xE0, 0xE1):
            out.append(new_segments)
            inserted = True
        out.append(data[start:end])
    if not inserted:
        out.append(new_segments)
    out.append(data[tail_start:])
    return b"".join(out)


def _jpeg_extract(data: bytes) -> Optional[bytes]:
    parts: dict[int, bytes] = {}
    total = None
    for start, marker, end in _jpeg_segments(data):
        if end is None:
            break
        if not _is_ours(data, start, marker, end):
            continue
        b = _jpeg_body_start(data, start) + len(JPEG_ID)
        seq, count = struct.unpack(">HH", data[b : b + 4])
        if total is None:
            total = count
        if count != total or seq >= count or seq in parts:
            raise PayloadFormatError("the JPEG's erase payload segments are inconsistent (file was edited?)")
        parts[seq] = data[b + 4 : end]
    if total is None:
        return None
    if len(parts) != total:
        raise PayloadFormatError(
            f"the JPEG's erase payload is incomplete ({len(parts)} of {total} segments); the file was edited"
        )
    return b"".join(parts[i] for i in range(total))


# ----------------------------------------------------------------------------------------------
# WebP


def _riff_chunks(data: bytes):
    if not (len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise EmbedError("not a WebP file")
    (riff_size,) = struct.unpack("<I", data[4:8])
    n = min(len(data), 8 + riff_size)
    pos = 12
    while pos + 8 <= n:
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > n:
            raise EmbedError("WebP file is truncated")
        yield fourcc, pos, data[pos + 8 : pos + 8 + size], min(end, n)
        pos = end


def _riff_chunk(fourcc: bytes, body: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _webp_canvas(chunks) -> tuple[int, int, bool]:
    for fourcc, _pos, body, _end in chunks:
        if fourcc == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
            (bits,) = struct.unpack("<I", body[1:5])
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
        if fourcc == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", body[6:10])
            return w & 0x3FFF, h & 0x3FFF, False
    raise EmbedError("WebP file has no image data")


def _webp_embed(data: bytes, payload: bytes) -> bytes:
    chunks = list(_riff_chunks(data))
    kept = [c for c in chunks if c[0] != WEBP_CHUNK]
    body = []
    if not kept or kept[0][0] != b"VP8X":
        w, h, alpha = _webp_canvas(kept)
        flags = 0x10 if alpha else 0
        vp8x = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
        body.append(_riff_chunk(b"VP8X", vp8x))
    for fourcc, pos, _b, end in kept:
        body.append(data[pos:end])
        if (end - pos) & 1:  # keep chunks even-aligned (a file truncated at its last pad byte)
            body.append(b"\x00")
    body.append(_riff_chunk(WEBP_CHUNK, payload))
    content = b"WEBP" + b"".join(body)
    if len(content) > 0xFFFFFFFF - 8:
        raise EmbedError("payload too large for a WebP file; use a sidecar")
    return b"RIFF" + struct.pack("<I", len(content)) + content


def _webp_extract(data: bytes) -> Optional[bytes]:
    for fourcc, _pos, body, _end in _riff_chunks(data):
        if fourcc == WEBP_CHUNK:
            return body
    return None


# ----------------------------------------------------------------------------------------------
# TIFF (classic)

_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def _tiff_ifd0(data: bytes):
    if data[:4] == b"II*\x00":
        e = "<"
    elif data[:4] == b"MM\x00*":
        e = ">"
    elif data[:4] in (b"II+\x00", b"MM\x00+"):
        raise EmbedError("BigTIFF files cannot carry an embedded payload; use a sidecar")
    else:
        raise EmbedError("not a TIFF file")
    (off,) = struct.unpack(e + "I", data[4:8])
    if off + 2 > len(data):
        raise EmbedError("TIFF file is malformed (IFD offset)")
    (count,) = struct.unpack(e + "H", data[off : off + 2])
    end = off + 2 + 12 * count + 4
    if end > len(data):
        raise EmbedError("TIFF file is malformed (IFD)")
    entries = []
    for i in range(count):
        p = off + 2 + 12 * i
        tag, typ, cnt = struct.unpack(e + "HHI", data[p : p + 8])
        entries.append((tag, typ, cnt, data[p + 8 : p + 12]))
    (next_ifd,) = struct.unpack(e + "I", data[end - 4 : end])
    return e, off, entries, next_ifd, end


def _tiff_embed(data: bytes, payload: bytes) -> bytes:
    e, off, entries, next_ifd, ifd_end = _tiff_ifd0(data)
    base = data
    old = [x for x in entries if x[0] == TIFF_TAG]
    if old:
        # Our previous embedding appended [payload][pad][IFD] at the end: drop it instead of leaving
        # garbage behind, when that is exactly the file's tail.
        _, _, cnt, val = old[0]
        (poff,) = struct.unpack(e + "I", val)
        if ifd_end == len(data) and poff < off and poff + cnt <= off and off - (poff + cnt) <= 1:
            base = data[:poff]
    entries = [x for x in entries if x[0] != TIFF_TAG]
    start = len(base) + (len(base) & 1)
    payload_off = start
    ifd_off = payload_off + len(payload) + (len(payload) & 1)
    entries.append((TIFF_TAG, 7, len(payload), struct.pack(e + "I", payload_off)))
    entries.sort(key=lambda x: x[0])
    ifd_size = 2 + 12 * len(entries) + 4
    if ifd_off + ifd_size > 0xFFFFFFFF:
        raise EmbedError("payload too large for a classic TIFF; use a sidecar")
    ifd = [struct.pack(e + "H", len(entries))]
    for tag, typ, cnt, val in entries:
        ifd.append(struct.pack(e + "HHI", tag, typ, cnt) + val)
    ifd.append(struct.pack(e + "I", next_ifd))
    header = data[:4] + struct.pack(e + "I", ifd_off)
    out = (
        header
        + base[8:]
        + (b"\x00" if len(base) & 1 else b"")
        + payload
        + (b"\x00" if len(payload) & 1 else b"")
        + b"".join(ifd)
    )
    return out


def _tiff_extract(data: bytes) -> Optional[bytes]:
    e, _off, entries, _next, _end = _tiff_ifd0(data)
    for tag, typ, cnt, val in entries:
        if tag == TIFF_TAG:
            if typ not in (1, 7):
                raise PayloadFormatError("the TIFF's erase payload tag has the wrong type")
            if cnt <= 4:
                return val[:cnt]
            (poff,) = struct.unpack(e + "I", val)
            if poff + cnt > len(data):
                raise PayloadFormatError("the TIFF's erase payload is truncated")
            return data[poff : poff + cnt]
    return None


# ----------------------------------------------------------------------------------------------
# public API

_EMBED = {"PNG": _png_embed, "JPEG": _jpeg_embed, "WEBP": _webp_embed, "TIFF": _tiff_embed}
_EXTRACT = {"PNG": _png_extract, "JPEG": _jpeg_extract, "WEBP": _webp_extract, "TIFF": _tiff_extract}


def can_embed(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return sniff_format(head) in EMBED_FORMATS


def embed_bytes(data: bytes, payload: bytes) -> bytes:
    """Return the file bytes ``data`` with ``payload`` embedded (replacing any earlier payload)."""
    fmt = sniff_format(data)
    if fmt not in _EMBED:
        what = {"BIGTIFF": "BigTIFF", None: "this file type"}.get(fmt, fmt)
        raise EmbedError(f"{what} files cannot carry an embedded erase payload; use a sidecar (--sidecar)")
    return _EMBED[fmt](data, payload)


def extract_bytes(data: bytes) -> Optional[bytes]:
    """The payload embedded in file bytes ``data``, or None. Raises PayloadFormatError when a payload
    is present but damaged (e.g. missing JPEG segments)."""
    fmt = sniff_format(data)
    if fmt not in _EXTRACT:
        return None
    try:
        return _EXTRACT[fmt](data)
    except EmbedError as exc:
        raise PayloadFormatError(f"cannot parse the file's metadata: {exc}") from None


def embed(path: str | os.PathLike, payload: bytes) -> None:
    """Embed ``payload`` into the image file at ``path`` in place, atomically, after checking that the
    decoded pixels are unchanged. Raises :class:`EmbedError` (the file is then untouched)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EmbedError(f"cannot read {path}: {exc.strerror or exc}") from None
    new = embed_bytes(data, payload)
    try:
        before = read_pixels(path, data=data).pixels
        after = read_pixels(path, data=new).pixels
    except ImageReadError as exc:
        raise EmbedError(f"{path}: the file no longer decodes after embedding ({exc}); nothing written") from None
    if before.shape != after.shape or before.dtype != after.dtype or not np.array_equal(before, after):
        raise EmbedError(f"{path}: embedding would change the decoded pixels; nothing written")
    if extract_bytes(new) != payload:
        raise EmbedError(f"{path}: the embedded payload does not read back; nothing written")
    try:
        mode = os.stat(path).st_mode & 0o7777
        atomic_write(path, new, mode=mode)
    except OSError as exc:
        raise EmbedError(f"cannot write {path}: {exc.strerror or exc}") from None


def extract(path: str | os.PathLike) -> Optional[bytes]:
    """The payload embedded in the image file at ``path``, or None if it has none."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from None
    return extract_bytes(data)


def sidecar_path(image_path: str | os.PathLike, directory: Optional[str | os.PathLike] = None) -> Path:
    """``<dir>/<image file name>.advp`` (``dir`` defaults to the image's folder)."""
    image_path = Path(image_path)
    d = Path(directory) if directory is not None else image_path.parent
    return d / (image_path.name + SIDECAR_SUFFIX)


def write_sidecar(image_path: str | os.PathLike, payload: bytes, directory: Optional[str | os.PathLike] = None) -> Path:
    p = sidecar_path(image_path, directory)
    atomic_write(p, payload, mode=0o644)
    return p


def sidecar_candidates(image_name: str, directory: str | os.PathLike) -> list[Path]:
    """Sidecars that may belong to an image called ``image_name`` in ``directory``, best first:
    ``NAME.advp``, then ``STEM.advp`` and ``STEM.<other ext>.advp`` (the copy may have been converted,
    e.g. ``photo.png`` re-encoded as ``photo.jpg``)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    stem = Path(image_name).stem
    out: list[Path] = []
    first = d / (image_name + SIDECAR_SUFFIX)
    if first.is_file():
        out.append(first)
    second = d / (stem + SIDECAR_SUFFIX)
    if second.is_file() and second not in out:
        out.append(second)
    try:
        others = sorted(
            p
            for p in d.iterdir()
            if p.name.endswith(SIDECAR_SUFFIX) and Path(p.name[: -len(SIDECAR_SUFFIX)]).stem == stem
        )
    except OSError:
        others = []
    for p in others:
        if p not in out and p.is_file():
            out.append(p)
    return out
