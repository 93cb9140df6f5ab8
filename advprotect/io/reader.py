"""Decoding one image file into an :class:`ImageRecord` (RGB float32 tensor + what is needed to
write it back faithfully), with every kind of bad input turned into one clear :class:`ImageReadError`."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .formats import READ_FORMATS, format_from_extension

DEFAULT_MAX_PIXELS = 100_000_000

_EXIF_ORIENTATION = 0x0112

# Pillow keeps its decompression-bomb limit in a module global. We check ``max_pixels`` ourselves
# from the header before decoding, so while *our* decoder runs Pillow's own limit is lifted (under
# a lock: the global is shared) - otherwise an image between Pillow's limit and ours would warn or,
# under ``-W error``, crash.
_PIL_LOCK = threading.RLock()


class ImageReadError(Exception):
    """A file could not be read as an image. ``str(err)`` is a one-line reason (no path);
    ``err.path`` is the file; ``err.line()`` is ``"path: reason"``."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        super().__init__(reason)
        self.path = None if path is None else Path(path)
        self.reason = reason

    def line(self) -> str:
        return f"{self.path}: {self.reason}" if self.path is not None else self.reason


@dataclass
class ImageRecord:
    """A decoded image plus everything needed to write it back like the original.

    ``pixels`` is always RGB float32 ``(3, H, W)`` in [0, 1] (grayscale replicated to 3 channels,
    EXIF orientation already applied); ``alpha`` is ``(H, W)`` float32 in [0, 1] or None.
    """

    source: Path  #: the input file
    rel: PurePath  #: path relative to the input root (mirrored under OUT)
    pixels: torch.Tensor  #: (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None = None  #: (H, W) float32 in [0, 1], or None
    mode: str = "RGB"  #: original Pillow mode ("RGB", "L", "I;16", "CMYK", "P", "RGBA", "RGB;16", ...)
    bit_depth: int = 8  #: bits per sample of the original (1, 8, 16 or 32)
    format: str = "PNG"  #: format of the content as decoded ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
    is_gray: bool = False  #: single-channel original: written back as grayscale
    icc_profile: bytes | None = None  #: ICC profile of ``pixels`` (kept on write)
    exif: bytes | None = None  #: raw EXIF of the original ("Exif\\0\\0" + TIFF), only written if asked
    dpi: tuple[float, float] | None = None
    orientation: int = 1  #: EXIF orientation that was applied on read
    n_frames: int = 1
    sha256: str = ""  #: hash of the input file's bytes
    file_size: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of ``pixels``."""
        return int(self.pixels.shape[2]), int(self.pixels.shape[1])

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    def __repr__(self) -> str:  # tensors make the default repr unreadable
        w, h = self.size
        return (
            f"ImageRecord({str(self.rel)!r}, {w}x{h}, mode={self.mode}, {self.bit_depth}-bit, "
            f"format={self.format}, alpha={self.has_alpha}, warnings={self.warnings})"
        )


# --------------------------------------------------------------------------- reading bytes


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, mapping OS errors to :class:`ImageReadError` with a clear reason."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ImageReadError(path, "is a directory, not an image file")
        with open(path, "rb") as fh:
            data = fh.read()
    except ImageReadError:
        raise
    except PermissionError:
        raise ImageReadError(path, "permission denied: the file cannot be read") from None
    except FileNotFoundError:
        raise ImageReadError(path, "file not found (was it moved or deleted?)") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
        raise ImageReadError(path, f"cannot read the file: {reason}") from None
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- decoding


def read_image(
    path: str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    rel: str | PurePath | None = None,
) -> ImageRecord:
    """Read and decode one image file.

    Raises :class:`ImageReadError` (never anything else for bad input) for: unreadable paths,
    empty, truncated or corrupt files, non-images, unsupported formats, and images whose header
    says more than ``max_pixels`` pixels (checked before any pixel is decoded; None = no limit).
    """
    path = Path(path)
    data = read_bytes(path)
    return decode_image(data, path, max_pixels=max_pixels, rel=rel)


def decode_image(
    data: bytes,
    source: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    rel: str | PurePath | None = None,
    sha256: str | None = None,
) -> ImageRecord:
    """Decode image file bytes ``data`` (read from ``source``) into an :class:`ImageRecord`."""
    source = Path(source)
    rel = PurePath(rel) if rel is not None else PurePath(source.name)
    if not data:
        raise ImageReadError(source, "empty file (0 bytes)")
    try:
        with _PIL_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                rec = _decode(data, source, rel, max_pixels)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(source, f"too large: {exc}") from None
    except MemoryError:
        raise ImageReadError(source, "not enough memory to decode this image") from None
    except Exception as exc:  # any decoder failure is a property of the file, never a crash
        raise ImageReadError(source, _corrupt_reason(exc)) from None
    rec.sha256 = sha256 or sha256_bytes(data)
    rec.file_size = len(data)
    return rec


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _corrupt_reason(exc: BaseException, part: str = "data") -> str:
    text = _exc_text(exc)
    if isinstance(exc, EOFError) or "truncat" in text.lower() or "end of file" in text.lower():
        return f"truncated file: the image {part} ends early ({text})"
    return f"corrupt image {part} ({text})"


def _describe_content(data: bytes) -> str:
    head = data[:512]
    if head.startswith((b"%PDF",)):
        return "looks like a PDF document"
    if head[:4] in (b"PK\x03\x04",):
        return "looks like a ZIP archive"
    if head.lstrip().startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "looks like an SVG drawing, which is not supported"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftyphevc"):
        return "looks like HEIC/AVIF, which is not supported (convert it to JPEG or PNG first)"
    try:
        head.decode("utf-8")
        if all(ch >= 32 or ch in (9, 10, 13) for ch in head):
            return "looks like a text file"
    except UnicodeDecodeError:
        pass
    return "unknown content"


def _png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26 and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def _decode(data: bytes, source: Path, rel: PurePath, max_pixels: int | None) -> ImageRecord:
    warns: list[str] = []
    try:
        im = Image.open(io.BytesIO(data), formats=list(READ_FORMATS))
    except UnidentifiedImageError:
        claimed = format_from_extension(source) or "JPEG, PNG, WebP, BMP, TIFF or GIF"
        raise ImageReadError(
            source, f"not an image: the content is not a valid {claimed} file ({_describe_content(data)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:  # header parsers raise all sorts (SyntaxError, struct.error, ...)
        raise ImageReadError(source, _corrupt_reason(exc, "header")) from None

    with im:
        fmt = im.format or "unknown"
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageReadError(source, f"invalid image size {w}x{h} in the header")
        _check_pixels(source, w, h, max_pixels)

        claimed = format_from_extension(source)
        actual = "JPEG" if fmt == "MPO" else fmt
        if claimed is not None and claimed != actual:
            warns.append(f"extension says {claimed} but the content is {actual}")

        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1 and fmt != "MPO":  # MPO extra frames are phone previews/depth maps
            kind = {"TIFF": "multi-page TIFF", "GIF": "animated GIF", "PNG": "animated PNG",
                    "WEBP": "animated WebP"}.get(fmt, f"multi-frame {fmt}")
            unit = "pages" if fmt == "TIFF" else "frames"
            warns.append(f"{kind} with {n_frames} {unit}: only the first is processed and written")

        mode = im.mode
        png_hdr = _png_header(data)
        wide_color = False
        if fmt == "PNG" and png_hdr is not None and png_hdr[0] == 16 and png_hdr[1] in (2, 4, 6):
            wide_color = True  # 16-bit RGB / RGBA / gray+alpha: Pillow would reduce it to 8 bits
        elif fmt == "TIFF":
            bits = getattr(im, "tag_v2", {}).get(258)
            bits = tuple(bits) if isinstance(bits, (tuple, list)) else ((bits,) if bits else ())
            if len(bits) >= 2 and max(bits) == 16:
                wide_color = True

        # Decode now (after the size check) so that truncation/corruption surfaces here rather than
        # inside getexif(). 16-bit colour is decoded again at full depth below; this pass validates.
        im.load()

        icc = im.info.get("icc_profile") or None
        dpi = im.info.get("dpi")
        try:
            dpi = (float(dpi[0]), float(dpi[1])) if dpi else None
        except (TypeError, ValueError, IndexError):
            dpi = None
        exif_obj = None
        try:
            exif_obj = im.getexif()
        except Exception:
            warns.append("EXIF data is corrupt and was ignored")
        orientation = 1
        exif_bytes = None
        if exif_obj:
            try:
                orientation = int(exif_obj.get(_EXIF_ORIENTATION, 1) or 1)
            except (TypeError, ValueError):
                orientation = 1
            if orientation not in range(1, 9):
                warns.append(f"invalid EXIF orientation {orientation} ignored")
                orientation = 1
            try:
                raw = im.info.get("exif")
                exif_bytes = bytes(raw) if raw else exif_obj.tobytes()
            except Exception:
                exif_bytes = None

        if wide_color:
            rgb, alpha, is_gray, mode = _decode_16bit_color(data, source, w, h)
            bit_depth = 16
        else:
            rgb, alpha, is_gray, bit_depth, icc, extra = _pil_to_arrays(im, icc)
            warns.extend(extra)

    if rgb.shape[0] * rgb.shape[1] > (max_pixels or float("inf")):  # a GIF frame can outgrow its header
        _check_pixels(source, rgb.shape[1], rgb.shape[0], max_pixels)

    if orientation != 1:
        rgb = apply_orientation(rgb, orientation)
        if alpha is not None:
            alpha = apply_orientation(alpha, orientation)

    pixels = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))
    return ImageRecord(
        source=source,
        rel=rel,
        pixels=pixels,
        alpha=alpha_t,
        mode=mode,
        bit_depth=bit_depth,
        format="JPEG" if fmt == "MPO" else fmt,
        is_gray=is_gray,
        icc_profile=icc,
        exif=exif_bytes,
        dpi=dpi,
        orientation=orientation,
        n_frames=n_frames,
        warnings=warns,
    )


def _check_pixels(source: Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageReadError(
            source,
            f"too large: {w}x{h} = {w * h / 1e6:.1f} megapixels exceeds max_pixels "
            f"({max_pixels / 1e6:g} megapixels); not decoded (possible decompression bomb)",
        )


def _pil_to_arrays(im: Image.Image, icc: bytes | None):
    """Pillow image -> (rgb HxWx3 float32, alpha HxW|None, is_gray, bit_depth, icc, warnings)."""
    warns: list[str] = []
    mode = im.mode
    alpha = None
    if mode == "L" and "transparency" in im.info:
        im, mode = im.convert("LA"), "LA"
    if mode in ("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        is_gray = True
        if mode == "1":
            gray, bit_depth = np.asarray(im.convert("L"), dtype=np.float32) / 255.0, 1
        elif mode in ("L",):
            gray, bit_depth = np.asarray(im, dtype=np.float32) / 255.0, 8
        elif mode in ("LA", "La"):
            la = np.asarray(im.convert("LA") if mode == "La" else im, dtype=np.float32) / 255.0
            gray, alpha, bit_depth = la[..., 0], la[..., 1], 8
        elif mode.startswith("I;16"):
            gray, bit_depth = np.asarray(im).astype(np.float32) / 65535.0, 16
        elif mode == "I":
            arr = np.asarray(im).astype(np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            if lo >= 0 and hi <= 65535:
                gray, bit_depth = (arr / 65535.0).astype(np.float32), 16
            else:
                gray, bit_depth = (np.clip(arr, 0, None) / max(hi, 1.0)).astype(np.float32), 32
                warns.append("32-bit integer image rescaled to [0, 1] by its maximum")
        else:  # "F"
            arr = np.asarray(im).astype(np.float64)
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
            hi = float(arr.max()) if arr.size else 0.0
            if float(arr.min()) < 0 or hi > 1:
                scale = 255.0 if hi <= 255 else max(hi, 1.0)
                warns.append(f"32-bit float image rescaled to [0, 1] (divided by {scale:g})")
                arr = np.clip(arr, 0, None) / scale
            gray, bit_depth = np.clip(arr, 0, 1).astype(np.float32), 32
        rgb = np.repeat(gray[..., None], 3, axis=2)
        return rgb, alpha, is_gray, bit_depth, icc, warns

    bit_depth = 8
    if mode == "CMYK":
        rgb_im = None
        if icc:
            try:
                from PIL import ImageCms

                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
                rgb_im = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
                icc = dst.tobytes()
            except Exception:
                rgb_im = None
        if rgb_im is None:
            rgb_im = im.convert("RGB")
            icc = None  # a CMYK profile does not describe RGB pixels
        warns.append("CMYK image converted to RGB (written back as RGB)")
        return np.asarray(rgb_im, dtype=np.float32) / 255.0, None, False, 8, icc, warns

    has_alpha = mode in ("RGBA", "RGBa", "PA", "LA") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if mode == "P" and not has_alpha:
        try:
            has_alpha = im.palette is not None and im.palette.mode == "RGBA"
        except Exception:
            has_alpha = False
    target = "RGBA" if has_alpha else "RGB"
    conv = im if mode == target else im.convert(target)
    arr = np.asarray(conv, dtype=np.float32) / 255.0
    if has_alpha:
        alpha = arr[..., 3]
        arr = arr[..., :3]
        if float(alpha.min()) >= 1.0:  # fully opaque: no need to carry an alpha channel
            alpha = None
    return arr, alpha, False, bit_depth, icc, warns


def _decode_16bit_color(data: bytes, source: Path, w: int, h: int):
    """16-bit RGB/RGBA/gray+alpha PNG or TIFF via OpenCV (Pillow reduces them to 8 bits)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(source, "corrupt image data: the 16-bit decoder could not read it")
    if arr.shape[0] != h or arr.shape[1] != w:
        raise ImageReadError(source, f"corrupt image data: decoded size differs from header {w}x{h}")
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    f = arr.astype(np.float32) / scale
    if f.ndim == 2:
        return np.repeat(f[..., None], 3, axis=2), None, True, "I;16"
    c = f.shape[2]
    if c == 2:
        gray = f[..., 0]
        return np.repeat(gray[..., None], 3, axis=2), f[..., 1], True, "LA;16"
    alpha = f[..., 3] if c == 4 else None
    rgb = np.ascontiguousarray(f[..., 2::-1])  # BGR(A) -> RGB
    if alpha is not None and float(alpha.min()) >= 1.0:
        alpha = None
    hdr = _png_header(data)
    if hdr is not None and hdr[1] == 4:  # gray+alpha PNG: OpenCV expands it to BGRA
        return rgb, alpha, True, "LA;16"
    return rgb, alpha, False, "RGBA;16" if c == 4 else "RGB;16"


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an HxW[xC] array so that EXIF ``orientation`` (1-8) becomes 1 (upright)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1, :]
    elif orientation == 5:
        a = np.swapaxes(a, 0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = np.swapaxes(a[::-1, ::-1], 0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)
