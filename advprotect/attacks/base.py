"""The shared L-infinity attack engine.

Every gradient attack in :mod:`advprotect.attacks` is a configuration of :class:`Attack`, whose
single iterative loop (:meth:`Attack._perturb`) implements, per step:

1. optional expectation over transformation (EOT, Athalye et al. 2018): ``eot_samples`` random
   differentiable transforms (JPEG, resize, blur, noise; see :mod:`advprotect.attacks.eot`),
   the gradients of which are averaged;
2. optional input diversity (DI, Xie et al. 2019): with probability ``diversity_prob`` the
   image is resized to a random size in ``[H, H*resize_rate)``, randomly zero-padded to
   ``H*resize_rate`` and resized back to ``H`` so any model input size keeps working;
3. the objective and its gradient with respect to the perturbation;
4. optional translation-invariant smoothing (TI, Dong et al. 2019): depthwise convolution of the
   gradient with a normalised Gaussian kernel;
5. optional momentum (MI, Dong et al. 2018): ``g <- decay * g + grad / ||grad||_1``;
6. a step of size ``alpha`` (scaled per pixel as ``alpha * eps_map / eps`` when a budget map
   is given) along the sign of the update, or with ``step="scaled"`` along the update divided
   by a per-sample quantile of its magnitude (:func:`scaled_sign`), then projection onto the
   L-inf ball ``|delta| <= eps_map`` and onto ``[0, 1]``;
7. an optional further projection ``project(x_adv, x)`` (e.g. onto an SSIM bound).

Conventions
-----------
* Images are floating point tensors in ``[0, 1]`` of shape ``(B, C, H, W)``.
* An *objective* is any callable ``objective(x_adv) -> Tensor`` returning one loss per sample,
  shape ``(B,)``, that the attack **maximises** (a dodging distance, a CTC loss, a rank loss...).
* An optional ``success(x_adv) -> BoolTensor (B,)`` says which samples already reach their goal;
  with ``early_stop=True`` their perturbation is frozen from then on (K-anonymity needs this).
* The input tensor is never modified; the result satisfies ``max|x_adv - x| <= eps`` (or
  ``<= eps_map`` per pixel) and ``0 <= x_adv <= 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Objective = Callable[[Tensor], Tensor]
SuccessFn = Callable[[Tensor], Tensor]
Callback = Callable[[int, Tensor], None]
Projection = Callable[[Tensor, Tensor], None]
STEPS = ("sign", "scaled")

__all__ = [
    "Attack",
    "Callback",
    "Objective",
    "Projection",
    "STEPS",
    "SuccessFn",
    "check_int",
    "check_range",
    "input_diversity",
    "scaled_sign",
    "smooth_gradient",
    "ti_kernel",
]


# --------------------------------------------------------------------------------------------
# parameter validation
# --------------------------------------------------------------------------------------------
def check_range(
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``float(value)`` or raise ``ValueError`` naming ``name`` and the valid range."""
    lo_b = "(" if lo_open else "["
    hi_b = ")" if hi_open else "]"
    rng = f"{lo_b}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{hi_b}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in {rng}, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return v


def check_int(name: str, value: int, lo: int, hi: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``[lo, hi]``, else raise ``ValueError``."""
    rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# building blocks shared by the attacks
# --------------------------------------------------------------------------------------------
def input_diversity(x: Tensor, resize_rate: float = 1.1, prob: float = 0.5) -> Tensor:
    """DI^2 input diversity (Xie et al., CVPR 2019, "Improving transferability of adversarial
    examples with input diversity").

    With probability ``prob`` the batch is resized to a random ``(h, w)`` with
    ``h in [H, floor(H*resize_rate))`` (same relative factor for ``w``), zero-padded at a random
    offset to ``(floor(H*resize_rate), floor(W*resize_rate))`` and resized back to ``(H, W)``
    (bilinear), so the output has the input's shape whatever size the model expects.
    Otherwise ``x`` is returned unchanged. Differentiable; ``x``: ``(B, C, H, W)``.
    """
    if prob <= 0.0 or resize_rate <= 1.0:
        return x
    if prob < 1.0 and torch.rand(()).item() >= prob:
        return x
    h, w = x.shape[-2:]
    big_h, big_w = max(int(h * resize_rate), h + 1), max(int(w * resize_rate), w + 1)
    rnd = torch.rand(()).item()  # one relative size for both axes: keep the aspect ratio
    new_h = min(h + int(rnd * (big_h - h)), big_h - 1)
    new_w = min(w + int(rnd * (big_w - w)), big_w - 1)
    out = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top = int(torch.randint(0, big_h - new_h + 1, ()).item())
    left = int(torch.randint(0, big_w - new_w + 1, ()).item())
    out = F.pad(out, (left, big_w - new_w - left, top, big_h - new_h - top), value=0.0)
    return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


def ti_kernel(
    size: int = 7,
    sigma: float | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised 2-D Gaussian kernel ``(size, size)`` summing to 1, for TI smoothing
    (Dong et al., CVPR 2019, "Evading defenses to transferable adversarial examples by
    translation-invariant attacks"). ``sigma`` defaults to ``(size - 1) / 6`` (the kernel
    spans +-3 sigma, as in the paper); ``size`` must be odd."""
    size = check_int("kernel_size", size, 1)
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    if size == 1:
        return torch.ones(1, 1, device=device, dtype=dtype)
    s = (size - 1) / 6.0 if sigma is None else check_range("sigma", sigma, 0.0, lo_open=True)
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / s) ** 2)
    k = torch.outer(g, g)
    return (k / k.sum()).to(dtype)


def scaled_sign(g: Tensor, quantile: float = 0.9) -> Tensor:
    """A sign with magnitudes: ``clamp(g / q, -1, 1)`` where ``q`` is the ``quantile`` of
    ``|g|`` over each sample of ``g`` ``(B, ...)``. The largest ``1 - quantile`` of the entries
    take a full step, the others a step proportional to their gradient; ``quantile`` 1 is
    ``g / max|g|``, and as ``quantile`` goes to 0 this becomes ``sign(g)``.

    Related to the non-sign and staircase steps of Cheng et al. 2021 ("Fast gradient non-sign
    methods") and Zhang et al. 2021 ("Staircase sign method for boosting adversarial
    attacks"): the sign step moves every pixel by the full ``alpha``, which spends a perceptual
    budget such as SSIM on pixels the loss hardly depends on. Under an SSIM bound (CAPTCHAs)
    this step, not the sign, is what lets the perturbation transfer."""
    q = check_range("quantile", quantile, 0.0, 1.0, lo_open=True)
    a = g.detach().abs().flatten(1)
    k = min(a.shape[1], max(1, math.ceil(a.shape[1] * q)))
    scale = a.kthvalue(k, dim=1).values.clamp_min(1e-12)
    return (g / scale.view(-1, *([1] * (g.dim() - 1)))).clamp_(-1.0, 1.0)


def smooth_gradient(grad: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise convolution of ``grad`` ``(B, C, H, W)`` with ``kernel`` ``(k, k)`` (same size
    output, zero padding): the TI gradient smoothing."""
    k = kernel.shape[-1]
    if k == 1:
        return grad
    c = grad.shape[1]
    weight = kernel.to(grad.dtype).expand(c, 1, k, k)
    return F.conv2d(grad, weight, padding=k // 2, groups=c)


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------
class Attack:
    """Configurable L-inf iterative sign-gradient attack; the base of every attack here.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255, APF section 4.1).
        alpha: step size ``> 0`` (default 2/255).
        steps: number of iterations ``>= 1`` (default 30).
        decay: momentum decay ``>= 0``; 0 disables momentum (MI-FGSM uses 1.0).
        diversity_prob: input-diversity probability in ``[0, 1]``; 0 disables DI.
        resize_rate: DI enlargement factor ``>= 1`` (default 1.1, Xie et al.).
        kernel_size: odd TI kernel size ``>= 1``; 1 disables TI smoothing.
        sigma: TI Gaussian sigma ``> 0`` (default ``(kernel_size - 1) / 6``).
        random_start: start from a uniform random point of the eps ball (PGD).
        eot: EOT transforms: an :class:`~advprotect.attacks.eot.EOT`, any callable
            ``x -> x'`` or a spec string such as ``"jpeg,resize,blur,noise"``; None disables.
        eot_samples: gradient draws averaged per step ``>= 1`` (default: ``eot.samples`` or 1).
        early_stop: with a ``success`` function, freeze samples that already succeed.
        step: ``"sign"`` (default; the FGSM family) or ``"scaled"`` (:func:`scaled_sign`: full
            steps only for the largest entries of the update, the rest proportional).
        step_quantile: the quantile in ``(0, 1]`` of ``|update|`` that takes a full step with
            ``step="scaled"`` (default 0.9: the top 10% of pixels).

    Call ``attack(x, objective, success=None, eps_map=None, init=None, callback=None,
    project=None)``.
    """

    name = "attack"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        *,
        decay: float = 0.0,
        diversity_prob: float = 0.0,
        resize_rate: float = 1.1,
        kernel_size: int = 1,
        sigma: float | None = None,
        random_start: bool = False,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
        step: str = "sign",
        step_quantile: float = 0.9,
    ) -> None:
        self.eps = check_range("eps", eps, 0.0, 1.0, lo_open=True)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
        self.steps = check_int("steps", steps, 1)
        self.decay = check_range("decay", decay, 0.0)
        self.diversity_prob = check_range("diversity_prob (p)", diversity_prob, 0.0, 1.0)
        self.resize_rate = check_range("resize_rate", resize_rate, 1.0, 4.0)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.sigma = None if sigma is None else check_range("sigma", sigma, 0.0, lo_open=True)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        if step not in STEPS:
            raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
        self.step = step
        self.step_quantile = check_range("step_quantile", step_quantile, 0.0, 1.0, lo_open=True)
        if eot_samples is not None:
            eot_samples = check_int("eot_samples", eot_samples, 1)
        if isinstance(eot, str):
            from .eot import EOT

            eot = EOT(eot, samples=eot_samples or 1) if eot.strip() else None
        elif eot is not None and not callable(eot):
            raise ValueError(f"eot must be None, a transform spec string or a callable, got {eot!r}")
        self.eot = eot
        if eot is None:
            self.eot_samples = 1
        else:
            self.eot_samples = eot_samples or int(getattr(eot, "samples", 1))

    # ---------------------------------------------------------------- public API
    def __call__(
        self,
        x: Tensor,
        objective: Objective,
        *,
        success: SuccessFn | None = None,
        eps_map: Tensor | float | None = None,
        init: Tensor | None = None,
        callback: Callback | None = None,
        project: Projection | None = None,
    ) -> Tensor:
        """Perturb ``x`` ``(B, C, H, W)`` in ``[0, 1]`` to maximise ``objective``.

        Args:
            x: clean images; never modified.
            objective: ``x_adv -> (B,)`` per-sample loss to maximise.
            success: optional ``x_adv -> bool (B,)``; with ``early_stop`` successful samples
                are frozen (and the loop ends when all succeed).
            eps_map: optional per-pixel budget broadcastable to ``x.shape`` (values in
                ``[0, 1]``); replaces the scalar ``eps``.
            init: optional starting perturbation broadcastable to ``x.shape`` (e.g. a universal
                perturbation ``(1, C, H, W)``); projected onto the budget and ``[0, 1]``.
            callback: optional ``callback(step, loss)`` called once per step with the detached
                per-sample loss ``(B,)`` measured at that step.
            project: optional ``project(x_adv, x)``, a further constraint applied in place after
                every step's L-inf projection (e.g. a perceptual bound such as SSIM); it must
                move ``x_adv`` only towards ``x`` (so the L-inf and box bounds still hold).

        Returns:
            ``x_adv`` ``(B, C, H, W)``, detached, with ``|x_adv - x| <= eps`` and values in [0, 1].

        ``objective`` and ``success`` receive the live iterate, which is updated in place after
        they return: clone it if you keep it.
        """
        if not callable(objective):
            raise ValueError(f"objective must be callable, got {objective!r}")
        x = self._check_images(x)
        budget = self._budget(x, eps_map)
        start = self._start(x, budget, init)
        return self._perturb(x, objective, budget, start, success, callback, project)

    def __repr__(self) -> str:
        keys = ("eps", "alpha", "steps", "decay", "diversity_prob", "resize_rate", "kernel_size",
                "random_start", "eot_samples", "early_stop", "step", "step_quantile")
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys if hasattr(self, k))
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------- input handling
    @staticmethod
    def _check_images(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating point tensor in [0, 1], got {x.dtype}")
        lo, hi = torch.aminmax(x.detach())
        if bool((lo < -1e-6) | (hi > 1 + 1e-6)):
            raise ValueError(
                f"x must hold values in [0, 1], got min {lo.item():.4g} max {hi.item():.4g}"
            )
        if bool((lo < 0) | (hi > 1)):  # float rounding of an upstream resize: clip a copy
            return x.detach().clamp(0, 1)
        return x.detach()

    def _budget(self, x: Tensor, eps_map) -> Tensor:
        """The L-inf budget as a tensor broadcastable to ``x`` (a 0-d tensor for scalar eps)."""
        if eps_map is None:
            return torch.tensor(self.eps, device=x.device, dtype=x.dtype)
        if not isinstance(eps_map, Tensor):
            v = check_range("eps_map", eps_map, 0.0, 1.0)
            return torch.tensor(v, device=x.device, dtype=x.dtype)
        try:
            shape = torch.broadcast_shapes(eps_map.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"eps_map of shape {tuple(eps_map.shape)} does not broadcast to x {tuple(x.shape)}"
            )
        e = eps_map.detach().to(device=x.device, dtype=x.dtype)
        lo, hi = torch.aminmax(e)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0) & (hi <= 1)):
            raise ValueError(f"eps_map values must lie in [0, 1], got [{lo.item():.4g}, {hi.item():.4g}]")
        return e

    def _start(self, x: Tensor, budget: Tensor, init: Tensor | None) -> Tensor:
        """Initial perturbation (B, C, H, W), projected onto the budget and the image box."""
        if init is not None:
            if not isinstance(init, Tensor):
                raise ValueError(f"init must be a tensor, got {type(init).__name__}")
            try:
                delta = init.detach().to(device=x.device, dtype=x.dtype).expand_as(x).clone()
            except RuntimeError:
                raise ValueError(
                    f"init of shape {tuple(init.shape)} does not broadcast to x {tuple(x.shape)}"
                ) from None
        elif self.random_start:
            delta = (torch.rand_like(x) * 2 - 1) * budget
        else:
            return torch.zeros_like(x)
        return delta.clamp_(*self._bounds(x, budget))

    @staticmethod
    def _bounds(x: Tensor, budget: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel limits ``lo <= delta <= hi`` of the L-inf ball intersected with the box
        ``0 <= x + delta <= 1``; one ``clamp_`` per step then does the whole projection."""
        lo = torch.maximum(-budget, -x)
        hi = torch.minimum(budget, 1 - x)
        return lo, hi

    # ---------------------------------------------------------------- the loop
    def _transform(self, x_adv: Tensor) -> Tensor:
        """EOT transform then input diversity (each draw resamples both)."""
        if self.eot is not None:
            x_adv = self.eot(x_adv)
        if self.diversity_prob > 0:
            x_adv = input_diversity(x_adv, self.resize_rate, self.diversity_prob)
        return x_adv

    @staticmethod
    def _loss(objective: Objective, x_in: Tensor, batch: int) -> Tensor:
        loss = objective(x_in)
        if not isinstance(loss, Tensor) or loss.shape != (batch,):
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"objective must return a per-sample loss of shape ({batch},), got {got}")
        if not loss.requires_grad:
            raise ValueError(
                "objective output does not depend differentiably on x_adv (no autograd graph): "
                "is the model run under torch.no_grad() or on a detached copy?"
            )
        return loss

    def _gradient(self, x_adv: Tensor, objective: Objective) -> tuple[Tensor, Tensor]:
        """Gradient of the (EOT-averaged) objective w.r.t. the leaf ``x_adv`` (the same as the
        gradient w.r.t. the perturbation) and the detached per-sample loss."""
        b = x_adv.shape[0]
        with torch.enable_grad():
            x_adv.requires_grad_(True)
            if self.eot is None and self.diversity_prob <= 0:
                loss = self._loss(objective, x_adv, b)
                (grad,) = torch.autograd.grad(loss.sum(), x_adv)
                loss = loss.detach()
            else:
                grad = None
                loss = None
                for _ in range(self.eot_samples):
                    li = self._loss(objective, self._transform(x_adv), b)
                    (gi,) = torch.autograd.grad(li.sum(), x_adv)
                    grad = gi if grad is None else grad.add_(gi)
                    loss = li.detach() if loss is None else loss.add_(li.detach())
                if self.eot_samples > 1:
                    grad.div_(self.eot_samples)
                    loss.div_(self.eot_samples)
            x_adv.requires_grad_(False)
        return grad, loss

    def _perturb(
        self,
        x: Tensor,
        objective: Objective,
        budget: Tensor,
        delta: Tensor,
        success: SuccessFn | None,
        callback: Callback | None,
        project: Projection | None = None,
    ) -> Tensor:
        """The shared loop, from the projected start perturbation ``delta``.

        The iterate ``x_adv`` itself is the autograd leaf and is updated in place, so a step
        costs the objective's forward and backward plus a handful of element-wise kernels
        (sign, fused add, one clamp against precomputed per-pixel bounds; momentum adds an L1
        reduction and a fused ``addcdiv``). No host synchronisation unless early stop is on.
        """
        b = x.shape[0]
        # per-pixel step: alpha scaled with the local budget, so the alpha/eps ratio is kept
        step_map = budget * (self.alpha / self.eps) if budget.dim() > 0 else None
        kernel = None
        if self.kernel_size > 1:
            kernel = ti_kernel(self.kernel_size, self.sigma, device=x.device, dtype=x.dtype)
        momentum = torch.zeros_like(x) if self.decay > 0 else None
        per_sample = x[0].numel()
        lo, hi = self._bounds(x, budget)
        lo.add_(x)  # bounds of x_adv itself: max(x - eps, 0) <= x_adv <= min(x + eps, 1)
        hi.add_(x)
        x_adv = (x + delta).clamp_(lo, hi)
        watch = self.early_stop and success is not None
        sign = self.step == "sign"
        active = None  # float mask (B,1,1,1) of samples still updated

        for i in range(self.steps):
            if watch:
                with torch.no_grad():
                    done = self._success(success, x_adv, b)
                if bool(done.all()):
                    break
                active = (~done).to(x.dtype).view(b, 1, 1, 1)
            grad, loss = self._gradient(x_adv, objective)
            with torch.no_grad():
                if kernel is not None:
                    grad = smooth_gradient(grad, kernel)
                if momentum is not None:
                    # Dong et al. 2018: g <- mu * g + grad / ||grad||_1; the per-sample L1 norm is
                    # divided by the pixel count (same direction, scale-friendly in low precision)
                    norm = torch.linalg.vector_norm(grad, ord=1, dim=(1, 2, 3), keepdim=True)
                    norm = norm.div_(per_sample).clamp_min_(1e-12)
                    update = momentum.mul_(self.decay).addcdiv_(grad, norm)
                    direction = torch.sign(update) if sign else scaled_sign(update, self.step_quantile)
                else:
                    direction = grad.sign_() if sign else scaled_sign(grad, self.step_quantile)
                if active is not None:
                    direction.mul_(active)
                if step_map is None:
                    x_adv.add_(direction, alpha=self.alpha)
                else:
                    x_adv.addcmul_(direction, step_map)
                x_adv.clamp_(lo, hi)
                if project is not None:
                    project(x_adv, x)
            if callback is not None:
                callback(i, loss)
        return x_adv

    @staticmethod
    def _success(success: SuccessFn, x_adv: Tensor, batch: int) -> Tensor:
        done = success(x_adv)
        if not isinstance(done, Tensor) or done.shape != (batch,):
            got = tuple(done.shape) if isinstance(done, Tensor) else type(done).__name__
            raise ValueError(f"success must return a boolean tensor of shape ({batch},), got {got}")
        return done.to(torch.bool)
