"""Protect CAPTCHAs against solvers: robust CAPTCHAs (paper 000, section 3.1.3).

The three components the paper names, each plugged into the shared attack engine
(:class:`advprotect.attacks.base.Attack`, no loop of our own):

* **multi-target attack**: every character position must be misread: a CTC + per-position
  margin objective for the CTC surrogates (:class:`~advprotect.captcha.ctc_objective.CTCObjective`)
  and a per-position margin objective for the per-position one
  (:class:`~advprotect.captcha.position_objective.PositionObjective`);
* **ensemble**: the surrogates of different architectures (``crnn``, ``fcn``, ``cnn``, and
  ``dddd``, a public pretrained solver: :mod:`advprotect.captcha.dddd`) combined with
  :class:`advprotect.attacks.Ensemble`, so the perturbation transfers to solvers it does not
  see (ddddocr's default network, Tesseract); uniform weights by default, or
  :func:`balanced_weights` (every surrogate's gradient counts the same);
* **differentiable approximation** of the solver's preprocessing (grey, steep-sigmoid
  binarisation, median and Gaussian filtering, resize, JPEG):
  :class:`~advprotect.captcha.preprocess.SolverPreprocess` (random clean-up chains, optionally
  after fixed views such as the median filter) is the engine's EOT transform.

Two bounds keep the CAPTCHA readable: L-inf ``eps``, lowered on flat background (where a change
is most visible and costs most SSIM) by :func:`texture_budget`, and SSIM >= ``min_ssim`` (0.9) to
the clean CAPTCHA, held after every attack step (the engine's ``project`` hook,
:func:`ssim_scale_`) and checked on the 8-bit image that is written. Under an SSIM bound the
engine's ``scaled`` step (:func:`advprotect.attacks.base.scaled_sign`) beats the sign step: a
sign step moves every pixel by the full step and spends the SSIM budget evenly, the scaled one
moves the pixels the solvers depend on (bench/README.md, session 6).

Success (reported, and with ``early_stop`` the engine's per-sample stop): every surrogate misreads
the 8-bit CAPTCHA as written, after Pillow's 3x3 median filter and after a Pillow JPEG quality-75
round trip (a bot's clean-ups; :func:`solver_views`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from kornia.metrics import ssim
from PIL import Image
from torch import Tensor

from ..attacks import Attack, Ensemble
from ..attacks.base import check_int, check_range
from .ctc_objective import CTCObjective
from .position_objective import PositionObjective
from .preprocess import OPS, SolverPreprocess, parse_views
from .solvers import CLEANUPS, load_white_box, white_box_names

__all__ = ["CaptchaProtectConfig", "CaptchaProtector", "balanced_weights", "solver_views", "ssim_per_image",
           "ssim_scale_", "texture_budget", "to_8bit"]


@dataclass
class CaptchaProtectConfig:
    """Settings of ``advprotect captcha protect`` / ``generate`` (all validated by :meth:`validate`).

    eps: L-inf budget in (0, 1] (default 16/255: with SSIM >= 0.9 held every step, SSIM is the
    bound that binds; at 8/255 ddddocr's default network still reads 12-19%). steps: attack
    iterations. alpha: step size (default eps / 6). decay: momentum (MI, 1.0; 0 = off).
    diversity_prob: input diversity (DI; default 0 = off: it weakened the white-box result and
    did not help transfer here).
    kernel_size: TI gradient smoothing kernel (odd; 1 = off). Together: the engine's
    M-DI(-TI)-FGSM. surrogates: white-box models (our crnn, fcn, cnn and dddd,
    the port of ddddocr's beta network: by far the strongest lever on the black-box ddddocr).
    weights: ensemble weighting: uniform (default) | balanced (each surrogate weighted by the
    inverse of its mean input-gradient L1 norm on the clean batch; dddd's gradients are 2.5-4x
    larger, so in the uniform sum it steers every step) | adaptive. preprocess: solver ops drawn
    in the EOT chain (subset of jpeg,resize,median,blur,binarize; "" disables EOT). p:
    probability of each op per draw. views: fixed EOT views, the first draws of every step (e.g.
    "none,median": every step sees the CAPTCHA as it is and after a median filter; default none).
    eot_samples: gradient draws per step (fixed views first, then random chains). balanced +
    views "none,median" + eot_samples 3 fool our own surrogates far more often after a median
    filter (bench/README.md: crnn/fcn/cnn 0.375/0.44/0.42 -> 0.125/0.27/0.17) but ddddocr's default
    network somewhat less (0.125 -> 0.21), so they are options, not the default.
    kappa: per-position margin. mask: texture (less change on flat background) | none. floor:
    budget fraction kept on flat background. min_ssim: SSIM bound in [0, 1]. ssim_in_loop: hold
    it after every step (default) rather than only scale the result down at the end. step:
    scaled (default; :func:`~advprotect.attacks.base.scaled_sign`) | sign. retry_steps: steps of
    a second pass, with the median view in every step, for the CAPTCHAs some surrogate still
    reads in some view after the first (0 = off). early_stop: stop a
    CAPTCHA once every surrogate misreads it in every view (faster, transfers less). batch_size:
    CAPTCHAs attacked together.
    """

    eps: float = 16 / 255
    steps: int = 40
    alpha: float | None = None
    decay: float = 1.0
    diversity_prob: float = 0.0
    kernel_size: int = 1
    surrogates: tuple[str, ...] = ("crnn", "fcn", "cnn", "dddd")
    weights: str = "uniform"
    preprocess: str = "jpeg,resize,median,blur,binarize"
    p: float = 0.35
    views: str = ""
    eot_samples: int = 2
    kappa: float = 5.0
    mask: str = "texture"
    floor: float = 0.6
    min_ssim: float = 0.9
    ssim_in_loop: bool = True
    step: str = "scaled"
    retry_steps: int = 40
    early_stop: bool = False
    batch_size: int = 16

    def validate(self) -> "CaptchaProtectConfig":
        check_range("eps", self.eps, 0.0, 1.0, lo_open=True)
        check_int("steps", self.steps, 1)
        if self.alpha is not None:
            check_range("alpha", self.alpha, 0.0, 1.0, lo_open=True)
        Attack(eps=self.eps, steps=self.steps, decay=self.decay, diversity_prob=self.diversity_prob,
               kernel_size=self.kernel_size, step=self.step)
        valid = white_box_names()
        if not self.surrogates:
            raise ValueError(f"at least one surrogate is needed; valid: {', '.join(valid)}")
        bad = [s for s in self.surrogates if s not in valid]
        if bad:
            raise ValueError(f"unknown surrogate(s) {', '.join(bad)}; valid: {', '.join(valid)}")
        if self.weights not in ("balanced", "uniform", "adaptive"):
            raise ValueError(f"weights must be balanced, uniform or adaptive, got {self.weights!r}")
        ops = [o.strip() for o in self.preprocess.split(",") if o.strip()]
        bad = [o for o in ops if o not in OPS]
        if bad:
            raise ValueError(f"unknown preprocessing op(s) {', '.join(bad)}; valid: {', '.join(OPS)}")
        check_range("p", self.p, 0.0, 1.0)
        check_int("eot_samples", self.eot_samples, 1)
        parse_views(self.views)
        check_range("kappa", self.kappa, 0.0, lo_open=True)
        if self.mask not in ("texture", "none"):
            raise ValueError(f"mask must be texture or none, got {self.mask!r}")
        check_range("floor", self.floor, 0.0, 1.0)
        check_range("min_ssim", self.min_ssim, 0.0, 1.0)
        check_int("batch_size", self.batch_size, 1)
        check_int("retry_steps", self.retry_steps, 0)
        return self

    def settings(self) -> dict:
        d = asdict(self)
        d["surrogates"] = list(self.surrogates)
        return d


def ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM (11x11 Gaussian window, kornia) of each pair, ``(B,)``."""
    win = min(11, a.shape[-2], a.shape[-1])
    win = win if win % 2 else win - 1
    return ssim(a, b, win).mean(dim=(1, 2, 3))


def to_8bit(x: Tensor) -> Tensor:
    """``x`` in [0, 1] rounded to the 256 levels of an 8-bit image file."""
    return (x * 255).round() / 255


def ssim_scale_(x_adv: Tensor, x: Tensor, min_ssim: float, iters: int = 10, quantized: bool = False) -> Tensor:
    """Scale the perturbation of every image of ``x_adv`` ``(B, C, H, W)`` whose SSIM to ``x``
    is below ``min_ssim`` down (in place) by the largest factor in [0, 1] that keeps SSIM >=
    ``min_ssim`` (bisection, ``iters`` halvings). With ``quantized`` the SSIM is that of the
    8-bit rounding of the result (what a file holds). Returns the factors ``(B,)`` (1 where
    nothing was scaled). Scaling towards ``x`` keeps every L-inf and [0, 1] bound."""
    q = to_8bit if quantized else (lambda t: t)
    scale = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
    with torch.no_grad():
        low = ssim_per_image(x, q(x_adv)) < min_ssim
        if not bool(low.any()):
            return scale
        idx = low.nonzero().squeeze(1)
        x0, delta = x[idx], x_adv[idx] - x[idx]
        lo = torch.zeros(idx.numel(), device=x.device, dtype=x.dtype)
        hi = torch.ones_like(lo)
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = ssim_per_image(x0, q(x0 + delta * mid.view(-1, 1, 1, 1))) >= min_ssim
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        x_adv[idx] = x0 + delta * lo.view(-1, 1, 1, 1)
        scale[idx] = lo
    return scale


def texture_budget(x: Tensor, eps: float, floor: float = 0.35, scale: float = 0.08) -> Tensor:
    """Per-pixel budget ``(B, 1, H, W)``: ``eps * (floor + (1 - floor) * min(1, s / scale))`` where
    ``s`` is the local standard deviation of the luma in the SSIM window (Gaussian, sigma 1.5).
    Flat background keeps ``floor * eps`` (a change there is what SSIM and the eye notice);
    strokes, edges and noise keep the full ``eps``."""
    from kornia.filters import gaussian_blur2d

    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    y = (x * w).sum(1, keepdim=True) if x.shape[1] == 3 else x
    mu = gaussian_blur2d(y, (11, 11), (1.5, 1.5))
    # minus 1e-6: float32 rounding of E[y^2] - E[y]^2 on flat areas (std < 0.001 is flat)
    var = (gaussian_blur2d(y * y, (11, 11), (1.5, 1.5)) - mu * mu - 1e-6).clamp_min(0)
    rel = (var.sqrt() / scale).clamp(max=1.0)
    return eps * (floor + (1 - floor) * rel)


def balanced_weights(losses: dict, x: Tensor) -> dict[str, float]:
    """``{name: weight}`` proportional to ``1 / mean_b ||d loss_name(x_b) / d x_b||_1``: each
    objective's gradient on the clean images ``x`` ``(B, 3, H, W)`` gets the same size in the
    ensemble's sum (one forward+backward per model, once per batch). A model with a zero
    gradient keeps the weight of the largest one."""
    norms = {}
    for name, loss in losses.items():
        z = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(z).sum(), z)
        norms[name] = float(g.abs().flatten(1).sum(1).mean())
    positive = [v for v in norms.values() if v > 0]
    if not positive:
        return {n: 1.0 for n in norms}
    floor = min(positive)
    return {n: floor / v if v > 0 else 1.0 for n, v in norms.items()}


def solver_views(x: Tensor) -> dict[str, Tensor]:
    """What the success check and the reports read, ``{view: (B, 3, H, W)}``: the CAPTCHA as
    its 8-bit file holds it (``none``), and after each real clean-up a bot runs
    (:data:`~advprotect.captcha.solvers.CLEANUPS`: Pillow's 3x3 median filter, a Pillow JPEG
    quality-75 round trip). Not differentiable (the attack optimises through
    :class:`~advprotect.captcha.preprocess.SolverPreprocess`); exact, so a CAPTCHA counts as
    fooled only if the file a bot downloads fools it."""
    x8 = to_8bit(x)
    arr = (x8 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    ims = [Image.fromarray(a) for a in arr]
    views = {"none": x8}
    for name, cleanup in CLEANUPS.items():
        if name != "none":
            out = np.stack([np.asarray(cleanup(im).convert("RGB"), dtype=np.uint8) for im in ims])
            views[name] = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255
    return views


class CaptchaProtector:
    """Loads the surrogates once; :meth:`protect` perturbs batches of CAPTCHAs."""

    def __init__(self, config: CaptchaProtectConfig | None = None, device: torch.device | str = "cpu",
                 weights_folder: str | None = None) -> None:
        self.config = (config or CaptchaProtectConfig()).validate()
        self.device = torch.device(device)
        self.models = load_white_box(self.config.surrogates, self.device, weights_folder)

    @torch.no_grad()
    def read(self, x: Tensor) -> dict[str, dict[str, list[str]]]:
        """``{surrogate: {view: [answers]}}`` for images ``x`` ``(B, 3, H, W)``."""
        views = solver_views(x)
        return {n: {v: m.read(img) for v, img in views.items()} for n, m in self.models.items()}

    def _objective(self, x: Tensor, texts: Sequence[str]) -> Ensemble:
        c = self.config
        losses = {}
        for n, m in self.models.items():
            if getattr(m, "kind", "") == "ctc":
                losses[n] = CTCObjective(m, x, texts, kappa=c.kappa)
            else:
                losses[n] = PositionObjective(m, texts, kappa=c.kappa, device=x.device)
        if c.weights != "balanced":
            return Ensemble(losses, weights=c.weights)
        return Ensemble(losses, weights=balanced_weights(losses, x))

    @staticmethod
    def _fooled(reads: dict[str, dict[str, list[str]]], truth: Sequence[str]) -> Tensor:
        """``(B,)`` bool: every surrogate misreads every view (``reads`` from :meth:`read`)."""
        ok = torch.ones(len(truth), dtype=torch.bool)
        for per_view in reads.values():
            for answers in per_view.values():
                ok &= torch.tensor([a != t for a, t in zip(answers, truth)])
        return ok

    def _success(self, texts: Sequence[str]):
        truth = [t.lower() for t in texts]

        def success(x_adv: Tensor) -> Tensor:
            # the 8-bit file, as is and after the real clean-ups
            return self._fooled(self.read(x_adv), truth).to(x_adv.device)

        return success

    def _attack(self, steps: int, views: str, samples: int, early_stop: bool) -> Attack:
        """The engine configured from the settings, with EOT over ``samples`` solver clean-up
        draws per step (``views`` first; no EOT when ``preprocess`` is empty)."""
        c = self.config
        eot = (SolverPreprocess(c.preprocess, p=c.p, samples=samples, views=views)
               if c.preprocess.strip() else None)
        return Attack(eps=c.eps, alpha=c.alpha or c.eps / 6, steps=steps, decay=c.decay,
                      diversity_prob=c.diversity_prob, kernel_size=c.kernel_size, eot=eot,
                      early_stop=early_stop, step=c.step)

    def protect(self, x: Tensor, texts: Sequence[str]) -> tuple[Tensor, list[dict]]:
        """Protect CAPTCHAs ``x`` ``(B, 3, H, W)`` in [0, 1] with answers ``texts``.

        Returns ``(x_adv, infos)``: ``x_adv`` ``(B, 3, H, W)`` in [0, 1] with
        ``|x_adv - x| <= eps``; per CAPTCHA a dict with the surrogates' answers (clean and
        protected, per view), ``fooled`` (every surrogate misreads every view), ``ssim``,
        ``linf_255``, ``ssim_scale`` (1 unless the SSIM guard scaled the change down) and
        ``seconds``. ``x`` is not modified."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (B, 3, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        if len(texts) != x.shape[0]:
            raise ValueError(f"got {len(texts)} answers for {x.shape[0]} CAPTCHAs")
        out, infos = [], []
        bs = self.config.batch_size
        for i in range(0, x.shape[0], bs):
            xa, inf = self._protect_batch(x[i:i + bs], list(texts[i:i + bs]))
            out.append(xa)
            infos += inf
        return torch.cat(out), infos

    def _ssim_guard(self, x_adv: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scale the change of every CAPTCHA whose 8-bit image (what gets written) has SSIM
        below ``min_ssim`` down, in place (:func:`ssim_scale_`; with ``ssim_in_loop`` the
        iterate holds the bound already). Returns the scale factors and the SSIM of the 8-bit
        images, ``(B,)`` each."""
        m = self.config.min_ssim
        scale = ssim_scale_(x_adv, x, m, quantized=True) if m > 0 else torch.ones(x.shape[0], device=x.device)
        return scale, ssim_per_image(x, to_8bit(x_adv))

    def _retry(self, x: Tensor, x_adv: Tensor, texts: list[str], eps_map, project, success) -> list[int]:
        """A second pass for the CAPTCHAs some surrogate still reads as they are, after the
        median filter or after JPEG: ``retry_steps`` more steps from where the first pass ended
        (in place in ``x_adv``), with the median view in every step and early stop. Returns the
        batch indices retried."""
        c = self.config
        with torch.no_grad():
            idx = (~success(x_adv)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return []
        sub_texts = [texts[i] for i in idx.tolist()]
        attack = self._attack(c.retry_steps, "none,median", max(3, c.eot_samples), early_stop=True)
        x0 = x[idx]
        x_adv[idx] = attack(x0, self._objective(x0, sub_texts), success=self._success(sub_texts),
                            eps_map=None if eps_map is None else eps_map[idx], init=x_adv[idx] - x0,
                            project=project)
        return idx.tolist()

    def _protect_batch(self, x: Tensor, texts: list[str]) -> tuple[Tensor, list[dict]]:
        c = self.config
        t0 = time.perf_counter()
        x = x.detach().to(self.device, torch.float32)
        attack = self._attack(c.steps, c.views, c.eot_samples, early_stop=c.early_stop)
        eps_map = texture_budget(x, c.eps, c.floor) if c.mask == "texture" else None
        success = self._success(texts)
        project = ((lambda xa, x0: ssim_scale_(xa, x0, c.min_ssim, quantized=True))
                   if c.ssim_in_loop and c.min_ssim > 0 else None)
        x_adv = attack(x, self._objective(x, texts), success=success, eps_map=eps_map, project=project)
        retried = self._retry(x, x_adv, texts, eps_map, project, success) if c.retry_steps else []
        scale, s_adv = self._ssim_guard(x_adv, x)
        x_adv = x_adv.detach()
        clean_reads = self.read(x)
        adv_reads = self.read(x_adv)
        truth = [t.lower() for t in texts]
        fooled = self._fooled(adv_reads, truth)
        secs = (time.perf_counter() - t0) / x.shape[0]
        infos = []
        linf = (x_adv - x).abs().flatten(1).amax(1) * 255
        for j, t in enumerate(truth):
            # booleans only: the report must not reveal the answer (--hash-answers)
            infos.append({
                "surrogates": {n: {"clean_correct": clean_reads[n]["none"][j] == t,
                                   **{f"correct_{v}": r[j] == t for v, r in adv_reads[n].items()}}
                               for n in self.models},
                "fooled": bool(fooled[j]),
                "ssim": round(float(s_adv[j]), 4),
                "linf_255": round(float(linf[j]), 3),
                "ssim_scale": round(float(scale[j]), 4),
                "retried": j in retried,
                "seconds": round(secs, 3),
            })
        return x_adv, infos
