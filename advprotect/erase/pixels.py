"""Pixel arrays for the erase subsystem: one deterministic decoder, canonical hashing, lossless writing.

``make_erasable`` and ``erase_file`` must see exactly the same pixels for the same file, so both
decode through :func:`read_pixels` and nothing else. Arrays are ``uint8`` or ``uint16``, ``HxW``
(grayscale) or ``HxWxC`` with C in 2 (gray+alpha), 3 (RGB) or 4 (RGBA). The raw pixel grid is used:
EXIF orientation is *not* applied.

Pillow decodes 16-bit colour PNG/TIFF to 8 bits, so those are decoded with OpenCV instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .errors import ImageReadError, ImageWriteError

#: Formats read by the erase subsystem (first frame only).
READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # MPO opens through JPEG
#: Lossless output formats (bit-exact); JPEG is accepted but lossy.
LOSSLESS_WRITE = ("PNG", "TIFF", "WEBP", "BMP")

EXT_FORMAT = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".gif": "GIF",
}


@dataclass
class Decoded:
    pixels: np.ndarray
    format: str  # Pillow format name of the file ("PNG", "JPEG", ...)
    icc_profile: Optional[bytes] = None
    jpeg: Optional[dict] = field(default=None, repr=False)  # quantization tables + component layout


def format_from_path(path: str | os.PathLike) -> Optional[str]:
    return EXT_FORMAT.get(Path(path).suffix.lower())


def _rawmode(im: Image.Image) -> str:
    try:
        args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    except (IndexError, AttributeError, TypeError):
        return ""
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _read_cv2(data: bytes, path: Path) -> np.ndarray:
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency
        raise ImageReadError(f"{path}: 16-bit colour images need opencv-python-headless") from None
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"{path}: cannot decode 16-bit image")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(arr)


def _jpeg_info(im: Image.Image) -> Optional[dict]:
    q = getattr(im, "quantization", None)
    layer = getattr(im, "layer", None)
    if not q or not layer:
        return None
    adobe = im.info.get("adobe_transform")
    if im.mode == "RGB" and len(layer) == 3 and adobe is not None and adobe == 0:
        return None  # components are RGB, not YCbCr
    if not ((im.mode == "L" and len(layer) == 1) or (im.mode == "RGB" and len(layer) == 3)):
        return None
    try:
        tables = {int(k): np.asarray(list(v), dtype=np.float64).reshape(8, 8) for k, v in q.items()}
        comps = [(int(l[1]), int(l[2]), int(l[3])) for l in layer]
    except (ValueError, TypeError, IndexError):
        return None
    if any(t not in tables for _, _, t in comps):
        return None
    return {"tables": tables, "components": comps}


def read_pixels(path: str | os.PathLike, *, data: Optional[bytes] = None) -> Decoded:
    """Decode the first frame of an image file (or of ``data``, its bytes) into a numpy array."""
    path = Path(path)
    src = io.BytesIO(data) if data is not None else path
    Image.init()  # register every plugin so that the ``formats`` filter knows them all
    try:
        with Image.open(src, formats=READ_FORMATS) as im:
            fmt = im.format or ""
            icc = im.info.get("icc_profile")
            mode = im.mode
            jpeg = _jpeg_info(im) if fmt in ("JPEG", "MPO") else None  # noqa: E501
            if mode in ("RGB", "RGBA", "LA") and "16" in _rawmode(im):
                arr = _read_cv2(data if data is not None else path.read_bytes(), path)
                return Decoded(arr, fmt, icc, jpeg)
            im.seek(0)
            if mode == "1":
                im = im.convert("L")
            elif mode in ("P", "PA"):
                im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode in ("La",):
                im = im.convert("LA")
            elif mode in ("RGBa", "RGBX"):
                im = im.convert("RGBA" if mode == "RGBa" else "RGB")
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from None
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 1:
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(f"{path}: 32-bit integer images are not supported")
        arr = arr.astype(np.uint16)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype} (mode {mode})")
    return Decoded(np.ascontiguousarray(arr), fmt, icc, jpeg)


# ----------------------------------------------------------------------------------------------
# canonical hashing and a coarse fingerprint


def as_hwc(arr: np.ndarray) -> np.ndarray:
    return arr[:, :, None] if arr.ndim == 2 else arr


def check_pixels(arr: np.ndarray, what: str = "pixels") -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} must be a numpy array")
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{what} must be uint8 or uint16, not {arr.dtype}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and not 1 <= arr.shape[2] <= 4) or 0 in arr.shape:
        raise TypeError(f"{what} must be HxW or HxWxC with 1 to 4 channels, not shape {arr.shape}")
    return arr


def pixel_hash(arr: np.ndarray) -> bytes:
    """SHA-256 of the canonical bytes of a pixel array: a domain tag, dtype, H, W, C, then the
    pixels in C order, little-endian. ``HxW`` and ``HxWx1`` hash alike."""
    arr = as_hwc(check_pixels(arr))
    h, w, c = arr.shape
    tag = b"u1" if arr.dtype == np.uint8 else b"u2"
    d = hashlib.sha256(b"advprotect-pixels-v1\x00" + tag + struct.pack("<III", h, w, c))
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    d.update(memoryview(le).cast("B"))
    return d.digest()


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 65535.0)


def luma(arr_hwc: np.ndarray) -> np.ndarray:
    """Luma (BT.601) of an HxWxC float array; gray and gray+alpha use channel 0."""
    c = arr_hwc.shape[2]
    if c >= 3:
        return arr_hwc[..., 0] * 0.299 + arr_hwc[..., 1] * 0.587 + arr_hwc[..., 2] * 0.114
    return arr_hwc[..., 0]


def resize_plane(plane: np.ndarray, size_wh: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """Resize one float32 plane with Pillow (its BILINEAR widens the filter when shrinking)."""
    if (plane.shape[1], plane.shape[0]) == tuple(size_wh):
        return plane.astype(np.float32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(im.resize(tuple(size_wh), resample), dtype=np.float32)


FINGERPRINT_SIZE = 16


def fingerprint(arr: np.ndarray) -> np.ndarray:
    """16x16 luma thumbnail in [0, 255] (uint8): used to check that a re-encoded copy shows the
    same picture as the one a payload was sealed for."""
    y = luma(to_unit_float(as_hwc(arr)))
    t = resize_plane(y, (FINGERPRINT_SIZE, FINGERPRINT_SIZE), Image.BOX)
    return np.clip(np.rint(t * 255.0), 0, 255).astype(np.uint8)


def fingerprint_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two fingerprints, in [0, 1]."""
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))) / 255.0)


# ----------------------------------------------------------------------------------------------
# writing


def encode_pixels(arr: np.ndarray, fmt: str, *, icc_profile: Optional[bytes] = None) -> tuple[bytes, list[str]]:
    """Encode an array in ``fmt``; returns (file bytes, warnings). PNG, TIFF, WebP (lossless) and BMP
    are bit-exact where the format can hold the array; JPEG is written at quality 100 (not exact)."""
    arr = check_pixels(arr, "restored pixels")
    warnings: list[str] = []
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    c = 1 if arr.ndim == 2 else arr.shape[2]
    wide = arr.dtype == np.uint16
    extra = {}
    if icc_profile and fmt in ("PNG", "TIFF", "WEBP", "JPEG"):
        extra["icc_profile"] = icc_profile

    if wide and fmt in ("PNG", "TIFF") and c in (3, 4):
        import cv2

        bgr = arr[..., ::-1] if c == 3 else arr[..., [2, 1, 0, 3]]
        ext = ".png" if fmt == "PNG" else ".tif"
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr))
        if not ok:
            raise ImageWriteError(f"cannot encode a 16-bit {fmt}")
        return buf.tobytes(), warnings
    if wide and c == 2:
        raise ImageWriteError("16-bit gray+alpha images cannot be written; nothing was written")
    if wide and fmt in ("PNG", "TIFF") and c == 1:
        im = Image.fromarray(np.ascontiguousarray(arr.reshape(arr.shape[:2]), dtype="<u2"))  # mode I;16
    else:
        if wide:
            warnings.append(f"{fmt} cannot hold 16 bits per channel: written with 8 (not bit-exact)")
            arr = (arr >> 8).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        im = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    if fmt == "PNG":
        im.save(buf, "PNG", **extra)
    elif fmt == "TIFF":
        im.save(buf, "TIFF", compression="tiff_adobe_deflate", **extra)
    elif fmt == "WEBP":
        if im.mode not in ("RGB", "RGBA"):
            if im.mode == "L":
                warnings.append("WebP has no grayscale mode: written as RGB")
                im = im.convert("RGB")
            elif im.mode == "LA":
                warnings.append("WebP has no grayscale mode: written as RGBA")
                im = im.convert("RGBA")
        im.save(buf, "WEBP", lossless=True, quality=100, method=4, exact=True, **extra)
    elif fmt == "BMP":
        if im.mode == "LA":
            warnings.append("BMP has no gray+alpha mode: written as RGBA")
            im = im.convert("RGBA")
        im.save(buf, "BMP")
    elif fmt == "JPEG":
        if im.mode in ("RGBA", "LA"):
            warnings.append("JPEG has no alpha channel: alpha dropped")
            im = im.convert("RGB" if im.mode == "RGBA" else "L")
        warnings.append("JPEG is lossy: the restored file is not bit-exact (use .png for an exact copy)")
        im.save(buf, "JPEG", quality=100, subsampling=0, **extra)
    else:
        raise ImageWriteError(f"cannot write {fmt} files; use .png, .tif, .webp, .bmp or .jpg")
    return buf.getvalue(), warnings


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically (the project's one atomic writer)."""
    from ..io.writer import atomic_write_bytes

    atomic_write_bytes(path, data, mode=mode)
