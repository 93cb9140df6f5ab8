"""Differentiable approximations of what CAPTCHA solvers do to an image before reading it.

Robust CAPTCHAs (paper 000, section 3.1.3) must survive the clean-up a solver runs first:
"differentiable approximation" of that preprocessing inside the attack, so the perturbation is
optimised *through* it rather than destroyed by it. Each function takes and returns
``(B, 3, H, W)`` float images in ``[0, 1]`` (grey results are replicated to three channels so the
shape never changes) and is differentiable with respect to the image:

* :func:`grayscale`: ITU-R BT.601 luma (Pillow's ``convert("L")``);
* :func:`soft_binarize`: Otsu's threshold (computed without gradient) and a steep sigmoid
  ``sigmoid(k * (grey - t))`` in place of the hard step;
* :func:`median3`: 3x3 median filter; the median is an order statistic, so the gradient flows to
  the selected pixel of each window (a straight-through subgradient, exact almost everywhere);
* :func:`gaussian` (kornia's Gaussian blur), :func:`down_up` (bilinear resize down and back);
* :func:`lanczos_resize`: Pillow's ``Image.resize(..., LANCZOS)`` as two matrix products (what
  ddddocr does to every image first);
* JPEG: kornia's differentiable JPEG (:func:`advprotect.attacks.eot.jpeg`).

:class:`SolverPreprocess` draws a random chain of them per call (JPEG -> resize -> median ->
blur -> binarise, each with probability ``p``); it has a ``samples`` attribute and is passed as
the ``eot=`` transform of the shared attack engine (:class:`advprotect.attacks.base.Attack`), which
averages the gradient over ``samples`` draws per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

from ..attacks.base import check_int, check_range
from ..attacks.eot import jpeg

__all__ = [
    "OPS",
    "VIEWS",
    "SolverPreprocess",
    "down_up",
    "gaussian",
    "grayscale",
    "lanczos_resize",
    "luma",
    "median3",
    "otsu_threshold",
    "parse_views",
    "soft_binarize",
]


def _check(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 3 or 1, H, W), got {getattr(x, 'shape', type(x).__name__)}")


def _luma(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def luma(x: Tensor) -> Tensor:
    """Grey ``(B, 1, H, W)`` of ``(B, 3|1, H, W)`` images (ITU-R BT.601 luma, as Pillow's
    ``convert("L")``; a grey input is returned as it is). ``ValueError`` for another shape."""
    _check(x)
    return _luma(x)


def grayscale(x: Tensor) -> Tensor:
    """Luma of ``x`` replicated to 3 channels, ``(B, 3, H, W)``."""
    _check(x)
    return _luma(x).expand(-1, 3, -1, -1)


@torch.no_grad()
def otsu_threshold(x: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold (Otsu 1979) of the luma of each image, ``(B,)`` in [0, 1], no gradient:
    the grey level that maximises the between-class variance of the histogram (the middle of
    the range when several levels tie)."""
    _check(x)
    g = _luma(x).flatten(1).clamp(0, 1)
    b = g.shape[0]
    idx = (g * (bins - 1)).round().long()
    hist = torch.zeros(b, bins, device=x.device, dtype=torch.float64)
    hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    p = hist / hist.sum(1, keepdim=True)
    levels = torch.arange(bins, device=x.device, dtype=torch.float64) / (bins - 1)
    w0 = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    mu_t = mu[:, -1:]
    between = (mu_t * w0 - mu).pow(2) / (w0 * (1 - w0)).clamp_min(1e-12)
    # the middle of the plateau of maxima (a two-level image has a whole range of best levels)
    near = between >= between.amax(1, keepdim=True) * (1 - 1e-9)
    first = near.to(torch.int8).argmax(1)
    last = bins - 1 - near.flip(1).to(torch.int8).argmax(1)
    return ((levels[first] + levels[last]) / 2 + 0.5 / (bins - 1)).to(x.dtype)


def soft_binarize(x: Tensor, steepness: float = 40.0, threshold: Tensor | float | None = None) -> Tensor:
    """Steep-sigmoid binarisation ``sigmoid(k * (luma - t))`` replicated to 3 channels.

    ``threshold`` ``t``: a float, a ``(B,)`` tensor, or None for Otsu's threshold of each image;
    ``steepness`` ``k > 0`` (large k approaches the hard step a solver uses)."""
    _check(x)
    k = check_range("steepness", steepness, 0.0, lo_open=True)
    if threshold is None:
        t = otsu_threshold(x)
    elif isinstance(threshold, Tensor):
        t = threshold.to(device=x.device, dtype=x.dtype).flatten()
    else:
        t = torch.tensor([check_range("threshold", threshold, 0.0, 1.0)], device=x.device, dtype=x.dtype)
    t = t.expand(x.shape[0]).view(-1, 1, 1, 1)
    return torch.sigmoid(k * (_luma(x) - t)).expand(-1, 3, -1, -1)


def median3(x: Tensor) -> Tensor:
    """3x3 median filter per channel (replicate padding); subgradient to the median pixel."""
    _check(x)
    b, c, h, w = x.shape
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(p, 3).view(b, c, 9, h, w)
    return patches.median(dim=2).values


def gaussian(x: Tensor, sigma: float = 0.8) -> Tensor:
    """Gaussian blur with standard deviation ``sigma`` > 0 pixels (reflect padding)."""
    _check(x)
    s = check_range("sigma", sigma, 0.0, lo_open=True)
    k = max(3, 2 * int(3 * s + 0.5) + 1)
    return gaussian_blur2d(x, (k, k), (s, s))


def down_up(x: Tensor, scale: float = 0.75) -> Tensor:
    """Resize by ``scale`` in (0, 1] (bilinear, antialiased) and back to the input size."""
    _check(x)
    s = check_range("scale", scale, 0.0, 1.0, lo_open=True)
    h, w = x.shape[-2:]
    sh, sw = max(8, round(h * s)), max(8, round(w * s))
    small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _lanczos3(t: Tensor) -> Tensor:
    """Lanczos window with a = 3: ``sinc(t) * sinc(t / 3)`` on ``|t| < 3``, 0 elsewhere."""
    return torch.where(t.abs() < 3, torch.sinc(t) * torch.sinc(t / 3), torch.zeros_like(t))


def _lanczos_matrix(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` resampling weights of a Lanczos-3 resize, float64.

    The convention of Pillow's resampler: output sample ``i`` is centred at input coordinate
    ``(i + 0.5) * s`` with ``s = n_in / n_out``; when shrinking the kernel is stretched by ``s``
    (antialiasing); input pixels within the support ``3 * max(s, 1)`` of the centre (clipped to
    the image) get ``lanczos3((j - centre + 0.5) / max(s, 1))``, and each row is normalised to
    sum 1 (so the borders renormalise instead of padding)."""
    s = n_in / n_out
    fs = max(s, 1.0)
    support = 3.0 * fs
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        c = (i + 0.5) * s
        lo = max(int(c - support + 0.5), 0)
        hi = min(int(c + support + 0.5), n_in)
        j = torch.arange(lo, hi, dtype=torch.float64)
        w = _lanczos3((j - c + 0.5) / fs)
        m[i, lo:hi] = w / w.sum()
    return m


#: resampling matrices by (input size, output size, device, dtype): built once, not per call
_LANCZOS_CACHE: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}


def _lanczos_cached(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    key = (n_in, n_out, device, dtype)
    if key not in _LANCZOS_CACHE:
        _LANCZOS_CACHE[key] = _lanczos_matrix(n_in, n_out).to(device=device, dtype=dtype)
    return _LANCZOS_CACHE[key]


def lanczos_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``(B, C, H, W)`` images in [0, 1] to ``size = (h, w)`` as Pillow's ``LANCZOS``
    filter does on 8-bit images (separable Lanczos-3, antialiased when shrinking), differentiably.

    Like Pillow, the width is resampled first and the result clipped to [0, 1] (Pillow stores the
    intermediate image in 8 bits), then the height, clipped again: ``clip(R_h @ clip(x @ R_w^T))``.
    Matches ``Image.resize((w, h), Image.LANCZOS)`` up to Pillow's rounding to 8 bits after each
    pass (under 1.5/255 in all). ``ValueError`` for a non-positive size."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    rw = _lanczos_cached(x.shape[-1], w, x.device, x.dtype)
    rh = _lanczos_cached(x.shape[-2], h, x.device, x.dtype)
    x = torch.matmul(x, rw.transpose(0, 1)).clamp(0, 1)
    return torch.matmul(rh, x).clamp(0, 1)


#: the chain's order and the parameter range drawn for each op
OPS = ("jpeg", "resize", "median", "blur", "binarize")
#: fixed views a step's draws can start with (:class:`SolverPreprocess` ``views``)
VIEWS = ("none", "median")


def parse_views(views) -> tuple[str, ...]:
    """``"none,median"`` or a sequence -> a tuple of :data:`VIEWS`; ``ValueError`` otherwise."""
    items = views.split(",") if isinstance(views, str) else views
    names = tuple(v.strip().lower() for v in items if v.strip())
    bad = [v for v in names if v not in VIEWS]
    if bad:
        raise ValueError(f"unknown view(s) {', '.join(bad)}; valid: {', '.join(VIEWS)}")
    return names


class SolverPreprocess(nn.Module):
    """Random solver-side clean-up chain for EOT (paper 000 section 3.1.3, "differentiable
    approximation").

    Each call applies, in the order of :data:`OPS`, every op of ``ops`` independently with
    probability ``p``: JPEG (quality 60..95), resize (0.6..0.95), 3x3 median, Gaussian blur
    (sigma 0.5..1.2), soft binarisation (Otsu threshold, steepness 20..60). Then the luma is
    taken (every solver reads grey). One draw per call, shared by the batch.

    ``views`` fixes what a bot is sure to try, in every attack step: the attack engine calls the
    transform ``samples`` times per step; the ``k``-th call of each step returns fixed view
    ``views[k]`` (``none``: the CAPTCHA as it is; ``median``: after the 3x3 median filter, a
    bot's best clean-up), and the calls past ``len(views)`` draw random chains. Without fixed
    views the median view is in a step's gradient only when the dice draw it, and our solvers
    read a third of the protected CAPTCHAs again after a median filter.

    Args:
        ops: which ops may be drawn (a comma-separated string or a list from :data:`OPS`).
        p: probability of each op per draw, in [0, 1].
        samples: gradient draws per attack step (read by the attack engine).
        views: fixed views, the first draws of every step, from :data:`VIEWS` (default none;
            only the first ``samples`` are used).
    """

    def __init__(self, ops="jpeg,resize,median,blur,binarize", p: float = 0.35, samples: int = 2,
                 views=()) -> None:
        super().__init__()
        names = [o.strip().lower() for o in (ops.split(",") if isinstance(ops, str) else ops) if o.strip()]
        bad = [o for o in names if o not in OPS]
        if bad:
            raise ValueError(f"unknown preprocessing op(s) {bad}; valid: {', '.join(OPS)}")
        self.ops = [o for o in OPS if o in names]
        self.p = check_range("p", p, 0.0, 1.0)
        self.samples = check_int("samples", samples, 1)
        self.views = parse_views(views)[: self.samples]
        self._calls = 0

    def forward(self, x: Tensor) -> Tensor:
        _check(x)
        k = self._calls % self.samples
        self._calls += 1
        if k < len(self.views):
            return grayscale(median3(x) if self.views[k] == "median" else x)
        r = torch.rand(len(OPS) + 5).tolist()
        for i, op in enumerate(OPS):
            if op not in self.ops or r[i] >= self.p:
                continue
            u = r[len(OPS) + i]
            if op == "jpeg":
                x = jpeg(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x, 60.0 + 35.0 * u)
            elif op == "resize":
                x = down_up(x, 0.6 + 0.35 * u)
            elif op == "median":
                x = median3(x)
            elif op == "blur":
                x = gaussian(x, 0.5 + 0.7 * u)
            elif op == "binarize":
                x = soft_binarize(x, 20.0 + 40.0 * u)
        return grayscale(x)

    def extra_repr(self) -> str:
        return f"ops={self.ops}, p={self.p}, samples={self.samples}, views={self.views}"
