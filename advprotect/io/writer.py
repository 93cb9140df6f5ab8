"""Encoding pixels back to an image file like the original, written atomically."""

from __future__ import annotations

import io
import os
import secrets
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .formats import FALLBACK_WRITE_FORMAT, WRITE_FORMATS, format_from_extension, normalize_format
from .reader import ImageRecord

#: Temporary files are named ``.<name><TMP_MARKER><pid>-<random>`` next to their target: hidden
#: (never mistaken for an output or picked up as input) and removable on the next start.
TMP_MARKER = ".advprotect-tmp-"

DEFAULT_QUALITY = 95

# EXIF tags kept with keep_metadata=True. Structural TIFF tags (strip offsets, sample layout, ...)
# describe the *old* file and the thumbnail IFD holds an unprotected copy of the photo, so only
# descriptive tags are carried over.
_KEEP_IFD0 = (
    0x010E,  # ImageDescription
    0x010F,  # Make
    0x0110,  # Model
    0x011A,  # XResolution
    0x011B,  # YResolution
    0x0128,  # ResolutionUnit
    0x0131,  # Software
    0x0132,  # DateTime
    0x013B,  # Artist
    0x013C,  # HostComputer
    0x8298,  # Copyright
)
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# dropped from the Exif sub-IFD: MakerNote (opaque, may embed a full preview of the original),
# Interop pointer (an offset into the old file), pixel dimensions (re-set below).
_DROP_EXIF_SUB = (0x927C, 0xA005, 0xA002, 0xA003)


class ImageWriteError(Exception):
    """The pixels could not be encoded or the file could not be written."""


# --------------------------------------------------------------------------- atomic file writing


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``,
    fsync of the folder. A reader (or a crash) sees either the old file or the complete new one.
    ``mode``: permission bits to give the file before it appears under its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name[:120]}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARKER in name


def clean_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete temp files left under ``root`` by an interrupted run; returns what was removed."""
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if is_temp_name(name):
                p = Path(dirpath) / name
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


# --------------------------------------------------------------------------- pixels -> arrays


def _to_hwc(pixels) -> np.ndarray:
    """(3,H,W) / (1,H,W) / (H,W) tensor or array -> float32 HxWx3 (or HxW) clipped to [0, 1]."""
    if isinstance(pixels, torch.Tensor):
        arr = pixels.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    elif arr.ndim != 2:
        raise ImageWriteError(f"pixels must have shape (3, H, W), (1, H, W) or (H, W), got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ImageWriteError("pixels contain NaN or infinite values")
    return np.clip(arr, 0.0, 1.0)


def _alpha_for(record: ImageRecord | None, h: int, w: int) -> np.ndarray | None:
    if record is None or record.alpha is None:
        return None
    a = record.alpha.detach().to("cpu", torch.float32)
    if tuple(a.shape) != (h, w):
        a = torch.nn.functional.interpolate(a[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return np.clip(a.numpy(), 0.0, 1.0)


def _gray(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return rgb
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return r
    return np.clip(0.299 * r + 0.587 * g + 0.114 * b, 0.0, 1.0)


def _quant(x: np.ndarray, bits: int) -> np.ndarray:
    if bits == 16:
        return np.rint(x * 65535.0).astype(np.uint16)
    return np.rint(x * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- metadata


def clean_exif(raw: bytes | None, size: tuple[int, int] | None = None) -> bytes | None:
    """EXIF to keep on a protected copy: descriptive IFD0 tags, the Exif and GPS sub-IFDs, the
    orientation reset to 1 (pixels are already upright); no thumbnail, MakerNote or layout tags."""
    if not raw:
        return None
    try:
        src = Image.Exif()
        src.load(bytes(raw))
        out = Image.Exif()
        for tag in _KEEP_IFD0:
            if tag in src:
                out[tag] = src[tag]
        out[0x0112] = 1
        sub = {k: v for k, v in src.get_ifd(_EXIF_IFD).items() if k not in _DROP_EXIF_SUB}
        if size is not None and sub:
            sub[0xA002], sub[0xA003] = int(size[0]), int(size[1])
        if sub:
            out.get_ifd(_EXIF_IFD).update(sub)
        gps = dict(src.get_ifd(_GPS_IFD))
        if gps:
            out.get_ifd(_GPS_IFD).update(gps)
        return out.tobytes()
    except Exception:
        return None


# --------------------------------------------------------------------------- the public writer


def write_image(
    path: str | os.PathLike,
    pixels,
    record: ImageRecord | None = None,
    *,
    fmt: str | None = None,
    quality: int = DEFAULT_QUALITY,
    keep_metadata: bool = False,
    warnings_out: list[str] | None = None,
) -> Path:
    """Encode ``pixels`` ((3,H,W) float in [0,1], tensor or array) like ``record``'s original and
    write it atomically to ``path``. Returns ``path``.

    - format: ``fmt`` (png/jpeg/webp/tiff/bmp) if given, else from ``path``'s extension;
    - alpha from ``record`` is restored (JPEG/BMP: composited on white, with a warning);
      grayscale originals are written as grayscale (luma), 16-bit PNG/TIFF originals as 16-bit;
    - the ICC profile is kept; EXIF (GPS included) is dropped unless ``keep_metadata``, which keeps
      it with the orientation reset to 1;
    - ``quality`` (1-100) is used for JPEG (4:4:4 chroma) and WebP (100 = lossless WebP).

    Notes that the caller should report (lost alpha, reduced bit depth...) are appended to
    ``warnings_out`` when given. Raises :class:`ImageWriteError` or ``OSError``.
    """
    path = Path(path)
    fmt = normalize_format(fmt) or format_from_extension(path)
    if fmt is None:
        own = record.format if record is not None else "PNG"
        fmt = FALLBACK_WRITE_FORMAT.get(own, own)
    if fmt not in WRITE_FORMATS:
        raise ImageWriteError(f"cannot write {fmt} files; use one of png, jpeg, webp, tiff, bmp")
    if not 1 <= int(quality) <= 100:
        raise ImageWriteError(f"quality must be between 1 and 100, got {quality}")
    data = encode_image(
        pixels, record, fmt=fmt, quality=int(quality), keep_metadata=keep_metadata, warnings_out=warnings_out
    )
    return atomic_write_bytes(path, data)


def encode_image(
    pixels,
    record: ImageRecord | None = None,
    *,
    fmt: str = "PNG",
    quality: int = DEFAULT_QUALITY,
    keep_metadata: bool = False,
    warnings_out: list[str] | None = None,
) -> bytes:
    """Like :func:`write_image` but returns the encoded file bytes."""
    fmt = normalize_format(fmt) or "PNG"
    notes: list[str] = warnings_out if warnings_out is not None else []
    arr = _to_hwc(pixels)
    h, w = arr.shape[:2]
    alpha = _alpha_for(record, h, w)
    gray = bool(record.is_gray) if record is not None else arr.ndim == 2
    if arr.ndim == 2 and not gray:
        arr = np.repeat(arr[..., None], 3, axis=2)
    bits = 16 if record is not None and record.bit_depth >= 16 else 8
    icc = record.icc_profile if record is not None else None
    dpi = record.dpi if record is not None else None
    exif = clean_exif(record.exif, (w, h)) if (keep_metadata and record is not None) else None

    if fmt in ("JPEG", "BMP") and alpha is not None:
        notes.append(f"{fmt} cannot store transparency: transparent areas were composited on white")
        a = alpha if arr.ndim == 2 else alpha[..., None]
        arr = arr * a + (1.0 - a)
        alpha = None
    if fmt == "WEBP" and gray:
        gray = False  # WebP has no grayscale mode: equal R=G=B
    if bits == 16 and fmt not in ("PNG", "TIFF"):
        notes.append(f"16-bit image written as 8-bit ({fmt} has no 16-bit mode)")
        bits = 8

    chan = _gray(arr) if gray else (np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr)

    if fmt == "TIFF" and record is not None and record.mode == "F" and alpha is None:
        im = Image.fromarray(np.ascontiguousarray(_gray(chan), dtype=np.float32), mode="F")
        return _pil_save(im, fmt, quality, icc, exif, dpi, notes)

    if bits == 16:
        if gray and alpha is None and fmt in ("PNG", "TIFF"):
            im = Image.fromarray(_quant(chan, 16))  # mode I;16
            return _pil_save(im, fmt, quality, icc, exif, dpi, notes)
        planes = chan[..., None] if chan.ndim == 2 else chan
        if fmt == "TIFF" and planes.shape[2] == 1:  # gray+alpha 16-bit TIFF is poorly supported
            planes = np.repeat(planes, 3, axis=2)
        if alpha is not None:
            planes = np.concatenate([planes, alpha[..., None]], axis=2)
        q = _quant(planes, 16)
        if fmt == "PNG":
            return encode_png16(q, icc=icc, exif=exif, dpi=dpi)
        if exif:
            notes.append("EXIF cannot be kept in a 16-bit colour TIFF; it was dropped")
        return encode_tiff16(q, icc=icc, dpi=dpi)

    if chan.ndim == 2:
        if alpha is not None:
            im = Image.fromarray(_quant(np.stack([chan, alpha], axis=2), 8), mode="LA")
            if fmt == "WEBP":
                im = im.convert("RGBA")
        else:
            im = Image.fromarray(_quant(chan, 8), mode="L")
    else:
        if alpha is not None:
            im = Image.fromarray(_quant(np.concatenate([chan, alpha[..., None]], axis=2), 8), mode="RGBA")
        else:
            im = Image.fromarray(_quant(chan, 8), mode="RGB")
    return _pil_save(im, fmt, quality, icc, exif, dpi, notes)


def _pil_save(im, fmt, quality, icc, exif, dpi, notes) -> bytes:
    kw: dict = {}
    if icc:
        if fmt == "BMP":
            notes.append("BMP output cannot carry the ICC colour profile; it was dropped")
        else:
            kw["icc_profile"] = icc
    if exif:
        if fmt == "BMP":
            notes.append("BMP output cannot carry EXIF; it was dropped")
        else:
            kw["exif"] = exif
    if dpi and fmt in ("JPEG", "PNG", "TIFF", "BMP"):
        kw["dpi"] = tuple(float(d) for d in dpi)
    if fmt == "JPEG":
        kw.update(quality=quality, subsampling=0, optimize=False)
    elif fmt == "WEBP":
        kw.update(quality=quality, lossless=quality >= 100, method=4)
        if im.mode == "RGBA":
            kw["exact"] = True
    elif fmt == "TIFF":
        kw["compression"] = "tiff_adobe_deflate"
    elif fmt == "PNG":
        kw["compress_level"] = 6
    buf = io.BytesIO()
    try:
        im.save(buf, fmt, **kw)
    except (OSError, KeyError) as exc:
        if fmt != "TIFF" or "compression" not in kw:
            raise ImageWriteError(f"{fmt} encoder failed: {exc}") from exc
        kw.pop("compression")  # Pillow built without libtiff: write uncompressed
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- 16-bit encoders
# Pillow cannot write 16-bit colour, so these small encoders do it (with the ICC profile kept).


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png16(q: np.ndarray, *, icc: bytes | None = None, exif: bytes | None = None, dpi=None) -> bytes:
    """16-bit PNG from uint16 HxW, HxWx2 (gray+alpha), HxWx3 (RGB) or HxWx4 (RGBA)."""
    if q.ndim == 2:
        q = q[..., None]
    h, w, c = q.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = np.ascontiguousarray(q.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    filtered = raw.copy()
    filtered[1:] -= raw[:-1]  # "Up" filter (uint8 wrap-around is what PNG specifies)
    rows = np.concatenate([np.full((h, 1), 2, np.uint8), filtered], axis=1)
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))]
    if icc:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if dpi:
        ppm = [max(1, round(float(d) / 0.0254)) for d in dpi]
        out.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    if exif:
        body = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        out.append(_png_chunk(b"eXIf", body))
    out.append(_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def encode_tiff16(q: np.ndarray, *, icc: bytes | None = None, dpi=None) -> bytes:
    """16-bit little-endian TIFF (one deflate strip, horizontal predictor) from uint16 HxW[xC]."""
    if q.ndim == 2:
        q = q[..., None]
    h, w, c = q.shape
    pred = q.astype(np.uint16).copy()
    pred[:, 1:, :] -= q[:, :-1, :]  # predictor 2: horizontal differencing, per sample, wraps
    strip = zlib.compress(np.ascontiguousarray(pred.astype("<u2")).tobytes(), 6)
    photometric = 1 if c <= 2 else 2
    entries: list[tuple[int, int, int, bytes]] = []  # (tag, type, count, value bytes)

    def short(tag, *vals):
        entries.append((tag, 3, len(vals), struct.pack(f"<{len(vals)}H", *vals)))

    def long(tag, *vals):
        entries.append((tag, 4, len(vals), struct.pack(f"<{len(vals)}I", *vals)))

    long(256, w)
    long(257, h)
    short(258, *([16] * c))
    short(259, 8)  # Adobe deflate
    short(262, photometric)
    long(273, 0)  # strip offset, patched below
    short(277, c)
    long(278, h)
    long(279, len(strip))
    if dpi:
        for tag, d in ((282, dpi[0]), (283, dpi[1])):
            entries.append((tag, 5, 1, struct.pack("<II", max(1, round(float(d) * 100)), 100)))
    short(284, 1)
    if dpi:
        short(296, 2)
    short(317, 2)
    if c in (2, 4):
        short(338, 2)  # unassociated alpha
    short(339, *([1] * c))
    if icc:
        entries.append((34675, 7, len(icc), bytes(icc)))
    entries.sort(key=lambda e: e[0])

    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    extra_offset = ifd_offset + ifd_size
    extra = bytearray()
    offsets = {}
    for tag, _t, _n, val in entries:
        if len(val) > 4:
            if (extra_offset + len(extra)) % 2:
                extra += b"\x00"
            offsets[tag] = extra_offset + len(extra)
            extra += val
    strip_offset = extra_offset + len(extra)
    strip_offset += strip_offset % 2
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, typ, count, val in entries:
        if tag == 273:
            val = struct.pack("<I", strip_offset)
        field = struct.pack("<I", offsets[tag]) if tag in offsets else val.ljust(4, b"\x00")
        ifd += struct.pack("<HHI", tag, typ, count) + field
    ifd += struct.pack("<I", 0)
    head = b"II*\x00" + struct.pack("<I", ifd_offset)
    body = head + bytes(ifd) + bytes(extra)
    body += b"\x00" * (strip_offset - len(body))
    return body + strip
