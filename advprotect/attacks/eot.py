"""Expectation over transformation (EOT; Athalye et al., "Synthesizing robust adversarial
examples", ICML 2018): differentiable random image transforms that model what an image goes
through after it is protected (re-encoding, resizing by a platform, smoothing, sensor noise).

Averaging the attack gradient over random draws of these transforms makes the perturbation
survive them. All transforms take and return ``(B, C, H, W)`` float images in ``[0, 1]``, keep
the shape, are differentiable with respect to the image, and run on the image's device.

Functional forms take explicit parameters (deterministic); the ``Random*`` modules draw them
per call (per sample where the op allows it) from a range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

from .base import check_int, check_range

__all__ = [
    "EOT",
    "TRANSFORMS",
    "Identity",
    "RandomBlur",
    "RandomJPEG",
    "RandomNoise",
    "RandomResize",
    "blur",
    "gaussian_noise",
    "jpeg",
    "parse_robust",
    "resize",
]


# --------------------------------------------------------------------------------------------
# functional forms
# --------------------------------------------------------------------------------------------
def _per_sample(value, b: int, ref: Tensor) -> Tensor:
    t = torch.as_tensor(value, device=ref.device, dtype=ref.dtype).flatten()
    if t.numel() == 1:
        return t.expand(b)
    if t.numel() != b:
        raise ValueError(f"expected a scalar or {b} per-sample values, got {t.numel()}")
    return t


def jpeg(x: Tensor, quality) -> Tensor:
    """Differentiable JPEG encode/decode (kornia, Reich et al. 2024) at ``quality`` in [1, 100]
    (scalar or per-sample ``(B,)``). Colour images go through the standard YCbCr codec, grey
    ``(B, 1, H, W)`` images are replicated to RGB and averaged back. Any ``H, W`` works: kornia
    pads to the 16-pixel MCU grid and crops back itself."""
    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f"jpeg needs 1 or 3 channels, got {c}")
    if not isinstance(quality, Tensor):  # tensors are trusted: no host sync in the attack loop
        check_range("jpeg quality", quality, 1.0, 100.0)
    q = _per_sample(quality, x.shape[0], x)
    rgb = x.expand(-1, 3, -1, -1) if c == 1 else x
    out = jpeg_codec_differentiable(rgb, q).clamp(0, 1)
    return out.mean(dim=1, keepdim=True) if c == 1 else out


def resize(x: Tensor, scale: float) -> Tensor:
    """Downscale by ``scale`` in (0, 1] (bilinear, antialiased) and upscale back to the input
    size (bilinear): the detail loss of a platform's resize."""
    scale = check_range("scale", scale, 0.0, 1.0, lo_open=True)
    h, w = x.shape[-2:]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    if (sh, sw) == (h, w):
        return x
    small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def blur(x: Tensor, sigma, max_sigma: float | None = None) -> Tensor:
    """Gaussian blur with standard deviation ``sigma`` > 0 pixels (scalar or per-sample ``(B,)``),
    reflect padding, kernel covering +-3 ``max_sigma`` (default: the largest sigma)."""
    if not isinstance(sigma, Tensor):
        check_range("blur sigma", sigma, 0.0, lo_open=True)
    s = _per_sample(sigma, x.shape[0], x)
    if max_sigma is None:
        max_sigma = float(s.max())
    k = 2 * math.ceil(3 * max_sigma) + 1
    k = max(3, min(k, 2 * (min(x.shape[-2:]) - 1) + 1))  # reflect padding must fit the image
    return gaussian_blur2d(x, (k, k), torch.stack([s, s], dim=1))


def gaussian_noise(x: Tensor, std, noise: Tensor | None = None) -> Tensor:
    """Additive Gaussian noise of standard deviation ``std`` >= 0 (scalar or per-sample),
    clipped to [0, 1]. ``noise`` (standard normal, shape of ``x``) can be given for determinism."""
    if not isinstance(std, Tensor):
        check_range("noise std", std, 0.0)
    s = _per_sample(std, x.shape[0], x)
    if noise is None:
        noise = torch.randn_like(x)
    return (x + s.view(-1, 1, 1, 1) * noise).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# random module forms
# --------------------------------------------------------------------------------------------
def _check_interval(name: str, rng: Sequence[float], lo: float, hi: float, lo_open=False) -> tuple[float, float]:
    if not isinstance(rng, (tuple, list)) or len(rng) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {rng!r}")
    a = check_range(f"{name}[0]", rng[0], lo, hi, lo_open=lo_open)
    b = check_range(f"{name}[1]", rng[1], lo, hi, lo_open=lo_open)
    if a > b:
        raise ValueError(f"{name} must satisfy low <= high, got {rng!r}")
    return a, b


def _uniform(lo: float, hi: float, n: int, ref: Tensor) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, device=ref.device, dtype=ref.dtype)


class RandomJPEG(nn.Module):
    """JPEG round trip with a per-sample quality drawn uniformly from ``quality`` (default 50..95)."""

    def __init__(self, quality: tuple[float, float] = (50.0, 95.0)) -> None:
        super().__init__()
        self.quality = _check_interval("quality", quality, 1.0, 100.0)

    def forward(self, x: Tensor) -> Tensor:
        return jpeg(x, _uniform(*self.quality, x.shape[0], x))


class RandomResize(nn.Module):
    """Down/up resize with a scale drawn uniformly from ``scale`` (default 0.5..0.9), one per call."""

    def __init__(self, scale: tuple[float, float] = (0.5, 0.9)) -> None:
        super().__init__()
        self.scale = _check_interval("scale", scale, 0.0, 1.0, lo_open=True)

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self.scale
        return resize(x, lo + (hi - lo) * torch.rand(()).item())


class RandomBlur(nn.Module):
    """Gaussian blur with a per-sample sigma drawn uniformly from ``sigma`` (default 0.3..1.2 px)."""

    def __init__(self, sigma: tuple[float, float] = (0.3, 1.2)) -> None:
        super().__init__()
        self.sigma = _check_interval("sigma", sigma, 0.0, 20.0, lo_open=True)

    def forward(self, x: Tensor) -> Tensor:
        return blur(x, _uniform(*self.sigma, x.shape[0], x), max_sigma=self.sigma[1])


class RandomNoise(nn.Module):
    """Gaussian noise with a per-sample std drawn uniformly from ``std`` (default 0.002..0.02)."""

    def __init__(self, std: tuple[float, float] = (0.002, 0.02)) -> None:
        super().__init__()
        self.std = _check_interval("std", std, 0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return gaussian_noise(x, _uniform(*self.std, x.shape[0], x))


class Identity(nn.Module):
    """No transform (lets an EOT mix include untouched draws)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


TRANSFORMS: dict[str, type[nn.Module]] = {
    "jpeg": RandomJPEG,
    "resize": RandomResize,
    "blur": RandomBlur,
    "noise": RandomNoise,
    "identity": Identity,
}


def parse_robust(spec: str | Sequence[str] | None) -> list[str]:
    """Parse a transform list such as ``"jpeg,resize,blur,noise"`` (or a list of names).

    Names are case-insensitive, whitespace and duplicates are dropped; ``""``, ``"none"`` and
    None give ``[]``. Unknown names raise ``ValueError`` listing the valid ones.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        parts = spec.split(",")
    elif isinstance(spec, (list, tuple)):
        parts = list(spec)
    else:
        raise ValueError(f"robust transforms must be a comma-separated string, got {spec!r}")
    names: list[str] = []
    for p in parts:
        if not isinstance(p, str):
            raise ValueError(f"transform names must be strings, got {p!r}")
        n = p.strip().lower()
        if not n or n == "none":
            continue
        if n not in TRANSFORMS:
            raise ValueError(
                f"unknown robustness transform {p.strip()!r}; valid names: {', '.join(TRANSFORMS)}"
            )
        if n not in names:
            names.append(n)
    return names


class EOT(nn.Module):
    """Random transform for expectation over transformation.

    Each call picks one of ``names`` uniformly at random and applies it with freshly drawn
    parameters. ``samples`` is the number of draws an attack averages its gradient over per step
    (read by :class:`~advprotect.attacks.base.Attack`).

    Args:
        names: ``"jpeg,resize,blur,noise"``-style string or list (see :func:`parse_robust`);
            must name at least one transform.
        samples: gradient draws per attack step, ``>= 1`` (default 1).
        **options: range overrides forwarded to the transforms: ``quality`` (JPEG), ``scale``
            (resize), ``sigma`` (blur), ``std`` (noise).
    """

    _OPTION_OF: ClassVar[dict[str, str]] = {"jpeg": "quality", "resize": "scale", "blur": "sigma", "noise": "std"}

    def __init__(self, names: str | Sequence[str] = "jpeg,resize,blur,noise", samples: int = 1, **options) -> None:
        super().__init__()
        self.names = parse_robust(names)
        if not self.names:
            raise ValueError(f"EOT needs at least one transform; valid names: {', '.join(TRANSFORMS)}")
        self.samples = check_int("samples", samples, 1)
        unknown = set(options) - set(self._OPTION_OF.values())
        if unknown:
            raise ValueError(
                f"unknown EOT option(s) {sorted(unknown)}; valid: {sorted(self._OPTION_OF.values())}"
            )
        mods = {}
        for n in self.names:
            opt = self._OPTION_OF.get(n)
            kw = {opt: options[opt]} if opt in options else {}
            mods[n] = TRANSFORMS[n](**kw)
        self.transforms = nn.ModuleDict(mods)

    def forward(self, x: Tensor) -> Tensor:
        i = int(torch.randint(len(self.names), ()).item()) if len(self.names) > 1 else 0
        return self.transforms[self.names[i]](x)

    def extra_repr(self) -> str:
        return f"names={self.names}, samples={self.samples}"
