"""Image-quality measures of a perturbation: SSIM and PSNR (kornia), L-inf and L2."""

from __future__ import annotations

import torch
from kornia.metrics import psnr, ssim


def image_quality(clean: torch.Tensor, protected: torch.Tensor, *, window: int = 11) -> dict[str, float]:
    """SSIM, PSNR (dB), L-inf and L2 (per-pixel RMS x sqrt(N)) of ``protected`` vs ``clean``.

    Both are ``(C, H, W)`` or ``(B, C, H, W)`` floats in [0, 1] of the same shape. PSNR of two
    identical images is reported as ``inf``. Images smaller than the SSIM window use a smaller
    odd window.
    """
    if clean.shape != protected.shape:
        raise ValueError(f"shapes differ: {tuple(clean.shape)} vs {tuple(protected.shape)}")
    a = clean[None] if clean.ndim == 3 else clean
    b = protected[None] if protected.ndim == 3 else protected
    a, b = a.float(), b.float().to(a.device)
    win = min(window, *a.shape[-2:])
    win = win if win % 2 == 1 else win - 1
    diff = b - a
    linf = float(diff.abs().max()) if diff.numel() else 0.0
    same = linf == 0.0
    return {
        "ssim": round(float(ssim(a, b, max(win, 1)).mean()), 5) if win >= 3 else (1.0 if same else float("nan")),
        "psnr": float("inf") if same else round(float(psnr(a, b, 1.0)), 3),
        "linf": round(linf, 6),
        "linf_255": round(linf * 255, 3),
        "l2": round(float(diff.pow(2).sum().sqrt()), 5),
    }
