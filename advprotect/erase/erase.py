"""Make a protected output erasable, and erase a protection with the key.

``make_erasable`` is the hook a protecting subcommand calls right after writing an output file;
``erase_file`` turns a protected file back into the original (bit-exact when the file is intact).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .embed import can_embed, sidecar_candidates, write_sidecar
from .embed import embed as embed_payload
from .embed import extract as extract_payload
from .errors import (
    EraseError,
    ImageWriteError,
    PayloadFormatError,
    PayloadMismatchError,
    PayloadMissingError,
    WrongKeyError,
)
from .payload import OpenedPayload, parse_header, restore_exact, seal, unseal
from .pixels import (
    as_hwc,
    atomic_write,
    encode_pixels,
    fingerprint,
    fingerprint_distance,
    format_from_path,
    pixel_hash,
    read_pixels,
)
from .robust import robust_restore

#: Largest mean absolute difference (on [0, 1]) between the 16x16 luma thumbnails of the sealed
#: image and a copy for robust erasure to go ahead; JPEG q50 or a 2x resize moves it by < 0.01,
#: a different photo by ~0.1 or more.
FINGERPRINT_TOLERANCE = 0.04
#: Largest relative difference of aspect ratios (robust erasure handles resizing, not cropping).
ASPECT_TOLERANCE = 0.02


@dataclass
class ErasableInfo:
    """What ``make_erasable`` did (no secret in here)."""

    output: Path
    location: str  # "embedded" or "sidecar"
    payload_path: Path  # the image itself, or the sidecar
    payload_bytes: int
    residual_max_abs: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "location": self.location,
            "payload_path": str(self.payload_path),
            "payload_bytes": self.payload_bytes,
            "residual_max_abs": self.residual_max_abs,
            "notes": list(self.notes),
        }


@dataclass
class EraseResult:
    """A successful erasure (failures raise :class:`EraseError`)."""

    protected: Path
    output: Path
    mode: str  # "exact" or "robust"
    payload_source: str  # "embedded" or the sidecar path
    bit_exact: bool  # the written file decodes to exactly the original pixels
    method: str = "exact"  # "exact", or robust: "jpeg-dct" / "add"
    restored: Optional[np.ndarray] = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.mode == "exact":
            text = "restored bit-exact" if self.bit_exact else "restored (exact pixels, lossy output format)"
        else:
            text = (
                "restored approximately (robust erasure: this copy was re-encoded or resized after "
                f"protection; method {self.method})"
            )
        return "; ".join([text] + self.warnings)


def make_erasable(
    input_pixels: np.ndarray,
    output_path: str | os.PathLike,
    key: bytes,
    *,
    sidecar: bool = False,
    sidecar_dir: Optional[str | os.PathLike] = None,
    meta: Optional[dict[str, Any]] = None,
    compression: str = "zlib",
) -> ErasableInfo:
    """Make the protected file at ``output_path`` erasable by whoever holds ``key``.

    Decodes the written file (so JPEG/WebP loss is included), seals the exact residual
    ``input_pixels - decoded`` and embeds it into the file (pixels unchanged, checked) or, with
    ``sidecar`` (or for formats that cannot carry it, e.g. BMP), writes ``<name>.advp`` next to the
    file (or into ``sidecar_dir``). ``input_pixels`` must have the output's height and width.
    """
    output_path = Path(output_path)
    decoded = read_pixels(output_path)
    prot = decoded.pixels
    if as_hwc(input_pixels).shape[:2] != prot.shape[:2]:
        raise EraseError(
            f"{output_path}: the written image is {prot.shape[1]}x{prot.shape[0]} but the input is "
            f"{input_pixels.shape[1]}x{input_pixels.shape[0]}; cannot make a resized output erasable"
        )
    full_meta = {"format": decoded.format}
    full_meta.update(meta or {})
    payload = seal(input_pixels, prot, key, meta=full_meta, compression=compression)
    o = as_hwc(input_pixels).astype(np.int64)
    residual_max = 0
    if o.shape[2] == as_hwc(prot).shape[2] and input_pixels.dtype == prot.dtype:
        residual_max = int(np.abs(o - as_hwc(prot)).max())
    notes: list[str] = []
    if not sidecar and not can_embed(output_path):
        notes.append(f"{decoded.format} files cannot carry the payload: wrote a sidecar instead")
        sidecar = True
    if sidecar:
        where = write_sidecar(output_path, payload, sidecar_dir)
        return ErasableInfo(output_path, "sidecar", where, len(payload), residual_max, notes)
    embed_payload(output_path, payload)
    return ErasableInfo(output_path, "embedded", output_path, len(payload), residual_max, notes)


def _sidecars(protected_path: Path, sidecar_dir) -> list[Path]:
    if sidecar_dir is None:
        dirs = []
    elif isinstance(sidecar_dir, (list, tuple)):
        dirs = [Path(d) for d in sidecar_dir]
    else:
        dirs = [Path(sidecar_dir)]
    dirs.append(protected_path.parent)  # a sidecar written next to the output travels with it
    out: list[Path] = []
    for d in dirs:
        for p in sidecar_candidates(protected_path.name, d):
            if p not in out:
                out.append(p)
    return out


def _write_restored(out_path: Path, restored: np.ndarray, icc: Optional[bytes]) -> tuple[bool, list[str]]:
    fmt = format_from_path(out_path)
    if fmt is None or fmt == "GIF":
        raise ImageWriteError(
            f"{out_path}: cannot tell the output format from the extension; use .png, .tif, .webp, .bmp or .jpg"
        )
    data, warnings = encode_pixels(restored, fmt, icc_profile=icc)
    back = read_pixels(out_path, data=data).pixels
    exact = back.dtype == restored.dtype and back.shape == restored.shape and np.array_equal(back, restored)
    if fmt != "JPEG" and not exact and not warnings:
        raise ImageWriteError(f"{out_path}: the {fmt} encoder did not round-trip the pixels; nothing written")
    atomic_write(out_path, data)
    return exact, warnings


def _robust_check(copy: np.ndarray, opened: OpenedPayload) -> None:
    h0, w0, _ = opened.header.protected_shape
    h1, w1 = copy.shape[:2]
    a0, a1 = w0 / h0, w1 / h1
    if abs(a1 - a0) / a0 > ASPECT_TOLERANCE:
        raise PayloadMismatchError(
            f"the erase payload is for a {w0}x{h0} image but this one is {w1}x{h1}: a different image, or a "
            "cropped copy (robust erasure handles re-encoding and resizing, not cropping)"
        )
    fp = opened.fingerprint
    if fp is not None and fingerprint_distance(fp, fingerprint(copy)) > FINGERPRINT_TOLERANCE:
        raise PayloadMismatchError(
            "the erase payload does not belong to this image (the picture differs from the one it was sealed for)"
        )


def erase_file(
    protected_path: str | os.PathLike,
    out_path: str | os.PathLike,
    key: bytes,
    *,
    sidecar_dir: Optional[str | os.PathLike] = None,
    robust: bool = True,
    robust_from_embedded: bool = False,
    keep_pixels: bool = False,
) -> EraseResult:
    """Remove the protection from ``protected_path`` and write the result to ``out_path``.

    The payload is looked for in the file, then in ``sidecar_dir`` (a folder or a list of folders)
    and next to the file (``NAME.advp``, ``STEM.advp``, ``STEM.*.advp``). When the protected pixels
    are exactly the sealed ones the original is restored bit for bit (written bit-exact in
    PNG/TIFF/WebP/BMP). Otherwise, with ``robust`` and a sidecar (or with ``robust_from_embedded``
    and a payload that survived in the file's metadata), the residual is resampled to the copy and
    added (JPEG-aware for JPEG copies), after checking that the copy shows the same picture.

    Raises an :class:`EraseError` subclass (wrong key or tampered payload, payload of another image,
    missing or malformed payload, unwritable output); nothing is written then.
    """
    protected_path = Path(protected_path)
    out_path = Path(out_path)
    decoded = read_pixels(protected_path)
    pixels = decoded.pixels
    phash = pixel_hash(pixels)

    candidates: list[tuple[str, bytes]] = []
    embedded_error: Optional[EraseError] = None
    try:
        emb = extract_payload(protected_path)
    except PayloadFormatError as exc:
        emb, embedded_error = None, exc
    if emb is not None:
        candidates.append(("embedded", emb))
    for p in _sidecars(protected_path, sidecar_dir):
        try:
            candidates.append((str(p), p.read_bytes()))
        except OSError:
            continue
    if not candidates:
        if embedded_error is not None:
            raise embedded_error
        where = (
            " and no sidecar (.advp) was found next to it or in the sidecar folder"
            if sidecar_dir is not None
            else " and no sidecar (.advp) was found next to it (pass --sidecar-dir if it has one elsewhere)"
        )
        raise PayloadMissingError(f"the file carries no erase payload{where}")

    headers = []
    first_error: Optional[EraseError] = None
    for source, payload in candidates:
        try:
            headers.append((source, payload, parse_header(payload)))
        except PayloadFormatError as exc:
            label = "embedded payload" if source == "embedded" else source
            first_error = first_error or PayloadFormatError(f"{label}: {exc}")
    if not headers:
        raise first_error  # type: ignore[misc]

    # 1. exact: a payload sealed for exactly these pixels
    for source, payload, hdr in headers:
        if hdr.pixel_hash == phash:
            opened = unseal(payload, key, protected_pixels=pixels, verify_pixels=True)
            restored = restore_exact(pixels, opened)
            exact, warnings = _write_restored(out_path, restored, decoded.icc_profile)
            return EraseResult(
                protected_path,
                out_path,
                "exact",
                source,
                exact,
                "exact",
                restored if keep_pixels else None,
                warnings,
            )

    # 2. robust: a re-encoded / resized copy
    robust_sources = [h for h in headers if h[0] != "embedded" or robust_from_embedded]
    if not robust or not robust_sources:
        src, _, hdr = headers[0]
        hint = "" if robust else " (robust erasure is off)"
        if src == "embedded" and robust:
            hint = (
                ": it was copied from another image, or this file was edited or re-encoded after protection "
                "(for a re-encoded copy pass --sidecar-dir with the sidecar of the protected output)"
            )
        raise PayloadMismatchError(f"the erase payload was sealed for different pixels{hint}")
    last: Optional[EraseError] = None
    wrong_key = 0
    for source, payload, hdr in robust_sources:
        try:
            opened = unseal(payload, key, verify_pixels=False)
            _robust_check(pixels, opened)
        except WrongKeyError:
            wrong_key += 1
            continue
        except EraseError as exc:
            last = exc
            continue
        res_max = 255 if opened.header.original_dtype == np.uint8 else 65535
        restored, method = robust_restore(pixels, opened.residual, res_max, jpeg=decoded.jpeg)
        _, warnings = _write_restored(out_path, restored, decoded.icc_profile)
        return EraseResult(
            protected_path,
            out_path,
            "robust",
            source,
            False,
            method,
            restored if keep_pixels else None,
            warnings,
        )
    if last is None:
        raise WrongKeyError("wrong key or tampered payload: the erase payload does not authenticate with this key")
    raise last
