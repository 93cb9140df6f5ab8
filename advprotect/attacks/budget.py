"""Human-sensitivity budget maps: where can the perturbation be larger without being seen?

Pixel Privacy (Shen et al., MediaEval 2020) weights the perturbation with a learned human
sensitivity map; that network is not available offline, so we use a classical pixel-domain
just-noticeable-difference (JND) model instead:

* luminance adaptation (Chou & Li, "A perceptually tuned subband image coder based on the measure
  of just-noticeable-distortion profile", IEEE TCSVT 1995): the visibility threshold of a change
  is high in dark regions, lowest around mid grey and rises again slowly towards white. With the
  local background luminance ``bg`` in [0, 255]::

      T_l = 17 * (1 - sqrt(bg / 127)) + 3     if bg <= 127
      T_l = 3 / 128 * (bg - 127) + 3          otherwise

* texture (contrast) masking: busy regions hide changes. ``T_t = eta * G`` where ``G`` is the
  local mean of the luminance gradient magnitude (a smooth stand-in for Chou & Li's maximal
  weighted average of directional luminance differences), ``eta = 0.117`` (Yang et al. 2005);
* the two are combined with the nonlinear additivity model for masking (NAMM, Yang et al.,
  "Just noticeable distortion model and its applications in video coding", 2005)::

      JND = T_l + T_t - C * min(T_l, T_t),   C = 0.3

  then smoothed with a Gaussian and divided by its per-image maximum.

Everything is built from differentiable torch/kornia ops and runs on the input's device.
"""

from __future__ import annotations

import torch
from kornia.filters import box_blur, gaussian_blur2d, spatial_gradient
from torch import Tensor

from .base import check_int, check_range

__all__ = ["BUDGET_MODES", "budget_map", "jnd_map"]

BUDGET_MODES = ("jnd", "none")

_LUMA = (0.299, 0.587, 0.114)


def _luma255(x: Tensor) -> Tensor:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 3, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x * 255.0
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True) * 255.0


def jnd_map(
    x: Tensor,
    *,
    window: int = 5,
    eta: float = 0.117,
    overlap: float = 0.3,
    smooth_sigma: float = 1.5,
) -> Tensor:
    """Relative just-noticeable-difference map of images ``x`` ``(B, 3|1, H, W)`` in [0, 1].

    Args:
        window: odd size of the local windows for background luminance and texture energy.
        eta: texture-masking gain.
        overlap: NAMM overlap constant ``C`` in [0, 1].
        smooth_sigma: Gaussian smoothing of the final map in pixels (0 disables).

    Returns:
        ``(B, 1, H, W)`` with values in (0, 1] and per-image maximum 1: high where a change is
        hard to see (texture, very dark or bright areas), low on flat mid-tones (skin, sky).
    """
    window = check_int("window", window, 3)
    if window % 2 == 0:
        raise ValueError(f"window must be odd, got {window}")
    eta = check_range("eta", eta, 0.0)
    overlap = check_range("overlap", overlap, 0.0, 1.0)
    smooth_sigma = check_range("smooth_sigma", smooth_sigma, 0.0)
    y = _luma255(x)
    h, w = y.shape[-2:]
    win = max(3, min(window, 2 * (min(h, w) // 2) - 1))  # reflect padding must fit tiny images
    bg = box_blur(y, win) if min(h, w) > 2 else y
    # luminance adaptation (Chou & Li 1995); the +1e-6 keeps sqrt differentiable at black
    dark = 17.0 * (1.0 - torch.sqrt(bg / 127.0 + 1e-6)) + 3.0
    bright = 3.0 / 128.0 * (bg - 127.0) + 3.0
    t_lum = torch.where(bg <= 127.0, dark, bright)
    # texture masking: local mean of gradient magnitude (sobel / 4: differences over 2 pixels)
    if min(h, w) > 2:
        g = spatial_gradient(y, mode="sobel", normalized=False).div_(4.0)  # (B, 1, 2, H, W)
        mag = torch.sqrt(g.pow(2).sum(dim=2) + 1e-6)
        t_tex = eta * box_blur(mag, win)
    else:
        t_tex = torch.zeros_like(t_lum)
    jnd = t_lum + t_tex - overlap * torch.minimum(t_lum, t_tex)
    if smooth_sigma > 0 and min(h, w) > 2:
        k = 2 * int(3 * smooth_sigma + 0.5) + 1
        k = max(3, min(k, 2 * (min(h, w) - 1) + 1))
        jnd = gaussian_blur2d(jnd, (k, k), (smooth_sigma, smooth_sigma))
    jnd = jnd.clamp_min(1e-6)
    return jnd / jnd.amax(dim=(1, 2, 3), keepdim=True)


def budget_map(x: Tensor, eps: float, mode: str = "jnd", floor: float = 0.25) -> Tensor:
    """Per-pixel L-inf budget ``(B, 1, H, W)`` for images ``x`` ``(B, 3|1, H, W)`` in [0, 1].

    ``mode="jnd"``: ``eps * (floor + (1 - floor) * jnd_map(x))``, values in
    ``[floor * eps, eps]``: textured, very dark and very bright regions keep (nearly) the full
    budget, flat mid-tone regions (skin, sky) get less. ``mode="none"``: ``eps`` everywhere.
    The result broadcasts against ``(B, C, H, W)`` and can be passed as ``eps_map`` to any attack.
    """
    eps = check_range("eps", eps, 0.0, 1.0, lo_open=True)
    floor = check_range("floor", floor, 0.0, 1.0)
    if not isinstance(mode, str) or mode.strip().lower() not in BUDGET_MODES:
        raise ValueError(f"budget mode must be one of {', '.join(BUDGET_MODES)}, got {mode!r}")
    mode = mode.strip().lower()
    b, _, h, w = x.shape
    if mode == "none":
        return torch.full((b, 1, h, w), eps, device=x.device, dtype=x.dtype)
    rel = jnd_map(x)
    return (eps * (floor + (1.0 - floor) * rel)).clamp_(floor * eps, eps)
