"""The erase payload: the exact residual ``original - protected``, compressed and sealed with
AES-256-GCM, bound to the protected pixels.

Binary layout, version 1 (all integers little-endian)::

    offset size  field
         0    8  magic  b"ADVPERAS"
         8    1  format version (1)
         9    1  flags (0; reserved)
        10    1  compression: 0 none, 1 zlib, 2 lzma (xz)
        11    1  protected pixel type: 1 uint8, 2 uint16
        12    4  protected height
        16    4  protected width
        20    2  protected channels (1 for gray)
        22    1  original pixel type: 1 uint8, 2 uint16
        23    2  original channels (same height and width as the protected image)
        25    1  residual type: 1 int8, 2 int16, 3 int32
        26   32  SHA-256 of the protected pixels (canonical bytes, see pixels.pixel_hash); not secret
        58   12  AES-GCM nonce (random, 96 bits)
        70    .  ciphertext, ending with the 16-byte GCM tag

The whole 70-byte header is the GCM associated data, so the format version, the shapes and the
pixel hash are authenticated together with the residual: a payload cannot be re-labelled for other
pixels without the key. The AES key is derived from the user's 256-bit key with HKDF-SHA256 (a
fixed, versioned ``info`` label).

The plaintext is ``u32 n | n bytes of UTF-8 JSON meta | compressed residual``; the JSON holds the
caller's ``meta`` plus a 16x16 luma thumbnail of the protected image (``"fp"``), used only to check
that a re-encoded copy shows the same picture before robust erasure.

The residual is ``original - lift(protected)`` in the original's layout; ``lift`` converts the
protected pixels to the original's channel count and bit depth (identity when they match), so
``lift(protected) + residual`` gives the original back exactly.
"""

from __future__ import annotations

import base64
import json
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import PayloadFormatError, PayloadMismatchError, WrongKeyError
from .keys import KEY_BYTES
from .pixels import as_hwc, check_pixels, fingerprint, pixel_hash

MAGIC = b"ADVPERAS"
VERSION = 1
_HEADER = struct.Struct("<8sBBBBIIHBHB32s12s")
HEADER_SIZE = _HEADER.size  # 70
TAG_SIZE = 16
_HKDF_INFO = b"advprotect erase payload v1 AES-256-GCM"

COMPRESSIONS = {"none": 0, "zlib": 1, "lzma": 2}
_COMPRESSION_NAMES = {v: k for k, v in COMPRESSIONS.items()}
_PIXEL_TYPES = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16)}
_RESIDUAL_TYPES = {1: np.dtype(np.int8), 2: np.dtype(np.int16), 3: np.dtype(np.int32)}
_MAX_ELEMENTS = 1 << 33  # refuse absurd declared shapes before allocating anything


def _code(table: dict, dtype: np.dtype) -> int:
    for k, v in table.items():
        if v == dtype:
            return k
    raise ValueError(dtype)


@dataclass(frozen=True)
class PayloadHeader:
    version: int
    compression: str
    protected_dtype: np.dtype
    protected_shape: tuple[int, int, int]  # H, W, C (C=1 for gray)
    original_dtype: np.dtype
    original_channels: int
    residual_dtype: np.dtype
    pixel_hash: bytes
    nonce: bytes

    @property
    def original_shape(self) -> tuple[int, int, int]:
        h, w, _ = self.protected_shape
        return (h, w, self.original_channels)

    def describe_shape(self) -> str:
        h, w, c = self.protected_shape
        bits = 8 * self.protected_dtype.itemsize
        return f"{w}x{h}, {c} channel{'s' if c != 1 else ''}, {bits}-bit"


@dataclass
class OpenedPayload:
    header: PayloadHeader
    residual: np.ndarray  # original layout, HxWxC (C may be 1), signed integers
    meta: dict

    @property
    def fingerprint(self) -> Optional[np.ndarray]:
        fp = self.meta.get("fp")
        if not isinstance(fp, str):
            return None
        try:
            raw = base64.b64decode(fp, validate=True)
        except ValueError:
            return None
        if len(raw) != 256:
            return None
        return np.frombuffer(raw, dtype=np.uint8).reshape(16, 16)


def parse_header(payload: bytes) -> PayloadHeader:
    """Parse and validate the public header; raises :class:`PayloadFormatError`."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadFormatError("payload must be bytes")
    payload = bytes(payload[: HEADER_SIZE])
    if len(payload) < 9 or payload[:8] != MAGIC:
        raise PayloadFormatError("not an advprotect erase payload (bad magic)")
    if payload[8] != VERSION:
        raise PayloadFormatError(
            f"erase payload format version {payload[8]} is not supported (this advprotect reads version "
            f"{VERSION}); upgrade advprotect"
        )
    if len(payload) < HEADER_SIZE:
        raise PayloadFormatError("erase payload is truncated (incomplete header)")
    (_, version, flags, comp, pdt, h, w, c, odt, oc, rdt, phash, nonce) = _HEADER.unpack(payload)
    if flags != 0:
        raise PayloadFormatError(f"erase payload uses unknown flags {flags:#x}; upgrade advprotect")
    if comp not in _COMPRESSION_NAMES:
        raise PayloadFormatError(f"erase payload uses unknown compression {comp}")
    if pdt not in _PIXEL_TYPES or odt not in _PIXEL_TYPES or rdt not in _RESIDUAL_TYPES:
        raise PayloadFormatError("erase payload declares an unknown pixel or residual type")
    if not (h and w and 1 <= c <= 4 and 1 <= oc <= 4) or h * w * max(c, oc) > _MAX_ELEMENTS:
        raise PayloadFormatError("erase payload declares an invalid image shape")
    return PayloadHeader(
        version=version,
        compression=_COMPRESSION_NAMES[comp],
        protected_dtype=_PIXEL_TYPES[pdt],
        protected_shape=(h, w, c),
        original_dtype=_PIXEL_TYPES[odt],
        original_channels=oc,
        residual_dtype=_RESIDUAL_TYPES[rdt],
        pixel_hash=phash,
        nonce=nonce,
    )


def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"the erase key must be {KEY_BYTES} bytes")
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(bytes(key))
    return AESGCM(okm)


# ----------------------------------------------------------------------------------------------
# channel / bit-depth conversion shared by seal and open


def _luma_int(x: np.ndarray, maxval: int) -> np.ndarray:
    x = x.astype(np.int64)
    y = (x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114 + 500) // 1000
    return np.clip(y, 0, maxval)


def lift(protected: np.ndarray, channels: int, dtype: np.dtype) -> np.ndarray:
    """Deterministically convert protected pixels (HxWxC) to ``channels`` and ``dtype``, as int64."""
    p = as_hwc(protected).astype(np.int64)
    src_max = 255 if protected.dtype == np.uint8 else 65535
    dst_max = 255 if np.dtype(dtype) == np.uint8 else 65535
    if src_max != dst_max:
        p = p * 257 if dst_max > src_max else (p + 128) // 257
    c = p.shape[2]
    if c == channels:
        return p
    h, w = p.shape[:2]
    color = p[..., :3] if c >= 3 else np.repeat(p[..., :1], 3, axis=2)
    alpha = p[..., c - 1 : c] if c in (2, 4) else np.full((h, w, 1), dst_max, np.int64)
    gray = p[..., :1] if c <= 2 else _luma_int(p, dst_max)[..., None]
    if channels == 1:
        return gray
    if channels == 2:
        return np.concatenate([gray, alpha], axis=2)
    if channels == 3:
        return color
    return np.concatenate([color, alpha], axis=2)


def _residual_dtype(res: np.ndarray) -> np.dtype:
    lo, hi = (int(res.min()), int(res.max())) if res.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise AssertionError("unreachable")  # pragma: no cover


def _compress(raw: bytes, method: str) -> bytes:
    if method == "zlib":
        return zlib.compress(raw, 6)
    if method == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=6)
    return raw


def _decompress(data: bytes, method: str, expected: int) -> bytes:
    try:
        if method == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, expected + 1)
            if not d.eof or d.unconsumed_tail or d.unused_data:
                raise PayloadFormatError("erase payload residual is corrupt (zlib stream)")
        elif method == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = d.decompress(data, expected + 1)
            if not d.eof or d.unused_data:
                raise PayloadFormatError("erase payload residual is corrupt (xz stream)")
        else:
            out = data
    except (zlib.error, lzma.LZMAError):
        raise PayloadFormatError("erase payload residual is corrupt") from None
    if len(out) != expected:
        raise PayloadFormatError("erase payload residual has the wrong size")
    return out


# ----------------------------------------------------------------------------------------------
# public API


def residual_of(original: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """``original - lift(protected)`` as int64, HxWxC in the original's layout."""
    original = check_pixels(original, "original pixels")
    protected = check_pixels(protected, "protected pixels")
    if original.shape[:2] != protected.shape[:2]:
        raise ValueError(
            f"original is {original.shape[1]}x{original.shape[0]} but protected is "
            f"{protected.shape[1]}x{protected.shape[0]}: an erasable protection must keep the image size"
        )
    o = as_hwc(original)
    return o.astype(np.int64) - lift(protected, o.shape[2], original.dtype)


def seal(
    original: np.ndarray,
    protected: np.ndarray,
    key: bytes,
    *,
    meta: Optional[dict[str, Any]] = None,
    compression: str = "zlib",
) -> bytes:
    """Seal the exact residual ``original - protected`` for ``protected`` under ``key``.

    ``original`` and ``protected`` are uint8/uint16 arrays of the same height and width; channel
    counts and bit depths may differ (e.g. RGBA input written as RGB JPEG). ``meta`` must be
    JSON-serialisable; it is encrypted with the residual.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    aead = _aead(key)
    res = residual_of(original, protected)
    rdt = _residual_dtype(res)
    raw = np.ascontiguousarray(res, dtype=rdt.newbyteorder("<")).tobytes()
    prot = as_hwc(protected)
    h, w, c = prot.shape
    nonce = os.urandom(12)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        0,
        COMPRESSIONS[compression],
        _code(_PIXEL_TYPES, protected.dtype),
        h,
        w,
        c,
        _code(_PIXEL_TYPES, original.dtype),
        res.shape[2],
        _code(_RESIDUAL_TYPES, rdt),
        pixel_hash(protected),
        nonce,
    )
    full_meta = dict(meta or {})
    full_meta["fp"] = base64.b64encode(fingerprint(protected).tobytes()).decode("ascii")
    try:
        meta_bytes = json.dumps(full_meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from None
    plaintext = struct.pack("<I", len(meta_bytes)) + meta_bytes + _compress(raw, compression)
    return header + aead.encrypt(nonce, plaintext, header)


def unseal(
    payload: bytes,
    key: bytes,
    *,
    protected_pixels: Optional[np.ndarray] = None,
    verify_pixels: bool = True,
) -> OpenedPayload:
    """Open a payload. With ``verify_pixels`` (the default) ``protected_pixels`` must be exactly the
    pixels the payload was sealed for (checked against the public hash *before* decryption, so the
    error says so). With ``verify_pixels=False`` (robust erasure of a re-encoded copy) the pixels are
    not compared; the payload is still authenticated.

    Raises :class:`PayloadFormatError`, :class:`PayloadMismatchError` or :class:`WrongKeyError`.
    """
    header = parse_header(payload)
    if verify_pixels:
        if protected_pixels is None:
            raise ValueError("protected_pixels is required unless verify_pixels=False")
        prot = check_pixels(protected_pixels, "protected pixels")
        shape = as_hwc(prot).shape
        if shape != header.protected_shape or prot.dtype != header.protected_dtype:
            h, w, c = shape
            raise PayloadMismatchError(
                f"the erase payload was sealed for a different image ({header.describe_shape()}; this one is "
                f"{w}x{h}, {c} channel{'s' if c != 1 else ''}, {8 * prot.dtype.itemsize}-bit)"
            )
        if pixel_hash(prot) != header.pixel_hash:
            raise PayloadMismatchError(
                "the erase payload was sealed for different pixels: it was copied from another image, or "
                "this image was edited or re-encoded after protection"
            )
    aead = _aead(key)
    body = bytes(payload[HEADER_SIZE:])
    if len(body) < TAG_SIZE:
        raise PayloadFormatError("erase payload is truncated")
    try:
        plaintext = aead.decrypt(header.nonce, body, bytes(payload[:HEADER_SIZE]))
    except InvalidTag:
        raise WrongKeyError(
            "wrong key or tampered payload: the erase payload does not authenticate with this key"
        ) from None
    if len(plaintext) < 4:
        raise PayloadFormatError("erase payload is malformed")
    (n,) = struct.unpack_from("<I", plaintext, 0)
    if 4 + n > len(plaintext):
        raise PayloadFormatError("erase payload is malformed (meta)")
    try:
        meta = json.loads(plaintext[4 : 4 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PayloadFormatError("erase payload is malformed (meta)") from None
    if not isinstance(meta, dict):
        raise PayloadFormatError("erase payload is malformed (meta)")
    h, w, c = header.original_shape
    expected = h * w * c * header.residual_dtype.itemsize
    raw = _decompress(plaintext[4 + n :], header.compression, expected)
    residual = np.frombuffer(raw, dtype=header.residual_dtype.newbyteorder("<")).reshape(h, w, c)
    return OpenedPayload(header=header, residual=residual.astype(header.residual_dtype), meta=meta)


def open_payload(
    payload: bytes,
    protected_pixels: Optional[np.ndarray],
    key: bytes,
    *,
    verify_pixels: bool = True,
) -> np.ndarray:
    """The residual (HxWxC, signed ints, in the original's layout) of a payload; see :func:`unseal`."""
    return unseal(payload, key, protected_pixels=protected_pixels, verify_pixels=verify_pixels).residual


def restore_exact(protected: np.ndarray, opened: OpenedPayload) -> np.ndarray:
    """``lift(protected) + residual``: the original pixels, bit for bit (gray comes back HxW)."""
    hdr = opened.header
    out = lift(protected, hdr.original_channels, hdr.original_dtype) + opened.residual
    maxval = 255 if hdr.original_dtype == np.uint8 else 65535
    if out.size and (out.min() < 0 or out.max() > maxval):
        raise PayloadFormatError("erase payload residual does not fit these pixels")
    out = out.astype(hdr.original_dtype)
    return out[:, :, 0] if out.shape[2] == 1 else out
