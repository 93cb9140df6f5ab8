"""Real, non-differentiable image transforms a protected photo meets after it is shared.

Each transform is applied with real codecs and resamplers (Pillow's JPEG encoder and Lanczos
resampler, OpenCV's Gaussian blur) to the 8-bit image a file would hold, so what is measured is
what a face-recognition service would see after an upload, not a differentiable approximation.

Spec syntax (comma-separated, see :func:`parse_transforms`)::

    jpeg:Q        JPEG at quality Q (1-100), 4:2:0 chroma subsampling as most encoders use
    resize:F      scale both sides by F (0 < F <= 4), Lanczos; e.g. resize:0.5
    blur:S        Gaussian blur with sigma S pixels (0 < S <= 20)
    crop:F        keep the central F (0 < F <= 1) of each side; e.g. crop:0.9
    social[:L[:Q]]  what photo-sharing sites do: downscale so the longest side is at most L
                  (default 1080; smaller photos are never upscaled) then JPEG at quality Q
                  (default 80)
    none          the photo as it is

Every transform also returns the affine map from the input's pixel coordinates to the output's
(``x' = x * sx + tx``, ``y' = y * sy + ty``), so a face box found in the clean photo can be followed
into the transformed one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ALL_TRANSFORMS", "DEFAULT_TRANSFORMS", "Transform", "from_uint8", "parse_transforms", "to_uint8"]

DEFAULT_TRANSFORMS = "jpeg:75,social"
ALL_TRANSFORMS = "jpeg:90,jpeg:75,jpeg:50,jpeg:25,resize:0.5,blur:1.0,crop:0.9,social"

KINDS = ("none", "jpeg", "resize", "blur", "crop", "social")


def to_uint8(photo: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float [0, 1] -> ``(H, W, 3)`` uint8 (the bytes an 8-bit file holds)."""
    return (photo.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 [0, 1]."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255.0)


@dataclass(frozen=True)
class Transform:
    """One parsed transform: ``kind`` and its parameters; ``name`` is its canonical spec."""

    kind: str
    value: float | None = None
    quality: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "jpeg":
            return f"jpeg:{self.quality}"
        if self.kind == "social":
            return "social" if (self.value, self.quality) == (1080, 80) else f"social:{int(self.value)}:{self.quality}"
        return f"{self.kind}:{self.value:g}"

    def __str__(self) -> str:
        return self.name

    def apply(self, photo: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
        """The transformed ``(3, H', W')`` float photo and the map ``(sx, sy, tx, ty)``."""
        from PIL import Image

        arr = to_uint8(photo)
        h, w = arr.shape[:2]
        ident = (1.0, 1.0, 0.0, 0.0)
        if self.kind == "none":
            return from_uint8(arr), ident
        if self.kind == "jpeg":
            return from_uint8(_jpeg(arr, int(self.quality))), ident
        if self.kind == "resize":
            nw, nh = max(1, round(w * self.value)), max(1, round(h * self.value))
            out = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.LANCZOS))
            return from_uint8(out), (nw / w, nh / h, 0.0, 0.0)
        if self.kind == "blur":
            import cv2

            out = cv2.GaussianBlur(arr, (0, 0), sigmaX=float(self.value), sigmaY=float(self.value),
                                   borderType=cv2.BORDER_REFLECT_101)
            return from_uint8(out), ident
        if self.kind == "crop":
            cw, ch = max(1, round(w * self.value)), max(1, round(h * self.value))
            x0, y0 = (w - cw) // 2, (h - ch) // 2
            return from_uint8(arr[y0:y0 + ch, x0:x0 + cw]), (1.0, 1.0, -float(x0), -float(y0))
        if self.kind == "social":
            longest = max(h, w)
            m = ident
            if longest > self.value:
                s = self.value / longest
                nw, nh = max(1, round(w * s)), max(1, round(h * s))
                arr = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.LANCZOS))
                m = (nw / w, nh / h, 0.0, 0.0)
            return from_uint8(_jpeg(arr, int(self.quality))), m
        raise ValueError(f"unknown transform kind {self.kind!r}")  # pragma: no cover


def _jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _number(kind: str, text: str, spec: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"transform {spec!r}: {kind} needs a number, got {text!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"transform {spec!r}: {kind} needs a finite number, got {text!r}")
    return v


def _quality(text: str, spec: str) -> int:
    try:
        q = int(text)
    except ValueError:
        raise ValueError(f"transform {spec!r}: JPEG quality must be an integer 1-100, got {text!r}") from None
    if not 1 <= q <= 100:
        raise ValueError(f"transform {spec!r}: JPEG quality must be 1-100, got {q}")
    return q


def parse_transform(spec: str) -> Transform:
    """Parse one spec (see the module docstring). Raises ``ValueError`` with a clear message."""
    s = spec.strip().lower()
    if not s:
        raise ValueError("empty transform spec")
    kind, *args = [p.strip() for p in s.split(":")]
    usage = ("use none, jpeg:Q (1-100), resize:F (0-4], blur:SIGMA (0-20], crop:F (0-1], "
             "social[:LONGEST[:Q]]")
    if kind not in KINDS:
        raise ValueError(f"unknown transform {spec!r}: {usage}")
    if kind == "none":
        if args:
            raise ValueError(f"transform {spec!r}: none takes no parameter")
        return Transform("none")
    if kind == "social":
        if len(args) > 2:
            raise ValueError(f"transform {spec!r}: social takes at most LONGEST and Q (social:1080:80)")
        longest = _number("social", args[0], spec) if args and args[0] else 1080.0
        if not 16 <= longest <= 16384 or longest != int(longest):
            raise ValueError(f"transform {spec!r}: social longest side must be an integer 16-16384")
        q = _quality(args[1], spec) if len(args) > 1 else 80
        return Transform("social", float(int(longest)), q)
    if len(args) != 1 or not args[0]:
        raise ValueError(f"transform {spec!r}: {kind} needs exactly one parameter ({usage})")
    if kind == "jpeg":
        return Transform("jpeg", quality=_quality(args[0], spec))
    v = _number(kind, args[0], spec)
    limits = {"resize": (0.0, 4.0), "blur": (0.0, 20.0), "crop": (0.0, 1.0)}[kind]
    if not limits[0] < v <= limits[1]:
        raise ValueError(f"transform {spec!r}: {kind} must be in ({limits[0]:g}, {limits[1]:g}], got {v:g}")
    return Transform(kind, v)


def parse_transforms(spec: str | None) -> list[Transform]:
    """Parse a comma-separated list (``"all"`` = :data:`ALL_TRANSFORMS`; empty = none).
    Duplicates are dropped, order kept. Raises ``ValueError`` for a bad entry."""
    if spec is None:
        return []
    s = spec.strip()
    if s.lower() == "all":
        s = ALL_TRANSFORMS
    out: list[Transform] = []
    for part in s.split(","):
        if not part.strip():
            continue
        t = parse_transform(part)
        if t.kind != "none" and t not in out:
            out.append(t)
    return out


def map_box(box, m: tuple[float, float, float, float]) -> list[float]:
    """A box ``[x0, y0, x1, y1]`` under the map ``(sx, sy, tx, ty)`` of :meth:`Transform.apply`."""
    sx, sy, tx, ty = m
    return [box[0] * sx + tx, box[1] * sy + ty, box[2] * sx + tx, box[3] * sy + ty]
