"""The K-anonymity objective of paper 003 (Mygdalis, Tefas & Pitas), Eq. 6, for the shared engine.

Paper 003 minimises, per sample, ::

    ||p||_2 + (1 - s(x, x~)) + sum_{i=2..k} L_f(f(x~), r_x(i))

until ``r_x(i)`` outranks the true label ``y`` for every ``i = 2..k`` (the labels ranked 2..k on
the clean image), i.e. until ``y`` is pushed to rank ``>= k``. ``L_f`` is the classification
(cross-entropy) loss toward each target label, ``s`` a structural similarity. Here ``s`` is
kornia's SSIM (the paper uses CW-SSIM, a complex-wavelet variant, which kornia does not have).

:class:`KAnonObjective` returns the *negated* loss (the engine maximises), one value per sample,
with configurable weights on the L2 and SSIM terms, and ``success`` implements the ranking
constraint so the engine's per-sample early stop (``early_stop=True``) freezes each sample as soon
as its constraint holds. With ``K = 1`` every target rank is 2, the only target is the runner-up
label and the constraint is plain misclassification (the paper's reduction to L-BFGS).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from kornia.metrics import ssim as kornia_ssim
from torch import Tensor

from ..attacks.base import check_range
from .ranking import true_rank

__all__ = ["KAnonObjective", "target_labels"]

LogitsFn = Callable[[Tensor], Tensor]


def target_labels(clean_logits: Tensor, labels: Tensor, target_ranks: Tensor) -> tuple[Tensor, Tensor]:
    """The labels to push above ``y``: per sample, the ``k - 1`` best-ranked labels on the clean
    image other than ``y`` (``r_x(2..k)`` when the clean top-1 is ``y``).

    Args:
        clean_logits: ``(B, C)``.
        labels: ``(B,)`` true labels.
        target_ranks: ``(B,)`` target ranks ``k`` in ``[2, C]``.

    Returns:
        ``(targets (B, M), mask (B, M) bool)`` with ``M = max(k) - 1``; ``mask`` marks the valid
        entries (sample ``b`` has ``k_b - 1`` of them).
    """
    b, c = clean_logits.shape
    labels = labels.long().view(-1)
    target_ranks = target_ranks.long().view(-1)
    if labels.shape[0] != b or target_ranks.shape[0] != b:
        raise ValueError(f"need {b} labels and target ranks, got {labels.shape[0]} and {target_ranks.shape[0]}")
    if bool(((target_ranks < 2) | (target_ranks > c)).any()):
        raise ValueError(f"target ranks must be in [2, {c}] (the classifier has {c} classes)")
    m = int(target_ranks.max()) - 1
    z = clean_logits.detach().clone()
    z.scatter_(1, labels[:, None], float("-inf"))
    order = z.argsort(dim=1, descending=True)[:, :m]
    mask = torch.arange(m, device=z.device)[None, :] < (target_ranks[:, None] - 1)
    return order, mask


class KAnonObjective:
    """Per-sample objective (to maximise) and success test of paper 003, Eq. 6.

    Args:
        logits_fn: ``x (B, 3, H, W) in [0, 1] -> (B, C)`` logits, differentiable.
        x: clean images ``(B, 3, H, W)`` in [0, 1] (kept, detached).
        labels: true labels ``(B,)``.
        target_ranks: target rank ``k`` per sample ``(B,)``, each in ``[2, C]``.
        l2_weight: weight ``>= 0`` of ``||x~ - x||_2`` (paper: 1). The norm is taken over the
            whole image; as the term is in image units its gradient does not depend on the size.
        ssim_weight: weight ``>= 0`` of ``1 - SSIM(x, x~)`` (paper: 1).
        quantise: test success on the image rounded to 8 bits, as it will be written, so a
            frozen sample still meets its constraint in the output file (default True).
        margin: logit margin ``>= 0`` the ``k - 1`` best other labels must clear over ``y`` for
            the constraint to count as met (default 0: the bare ranking constraint).
        check_fns: logits functions the constraint must hold under, all of them (default:
            ``[logits_fn]``); e.g. a face at several alignments while ``logits_fn`` is randomised.

    ``objective(x_adv) -> (B,)`` is ``-(sum_t CE(f(x~), t) + l2_weight * ||p||_2 +
    ssim_weight * (1 - SSIM))``; ``success(x_adv) -> (B,) bool`` is ``rank(y) >= k``.
    """

    def __init__(self, logits_fn: LogitsFn, x: Tensor, labels: Tensor, target_ranks: Tensor, *,
                 l2_weight: float = 1.0, ssim_weight: float = 1.0, quantise: bool = True,
                 margin: float = 0.0, ssim_window: int = 11,
                 check_fns: list[LogitsFn] | None = None) -> None:
        if not callable(logits_fn):
            raise ValueError("logits_fn must be callable")
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        self.logits_fn = logits_fn
        self.check_fns = list(check_fns) if check_fns else [logits_fn]
        self.x = x.detach()
        self.l2_weight = check_range("l2_weight", l2_weight, 0.0)
        self.ssim_weight = check_range("ssim_weight", ssim_weight, 0.0)
        self.margin = check_range("margin", margin, 0.0)
        self.quantise = bool(quantise)
        win = min(int(ssim_window), *x.shape[-2:])
        self.window = win if win % 2 == 1 else win - 1
        self.labels = torch.as_tensor(labels, device=x.device).long().view(-1)
        self.target_ranks = torch.as_tensor(target_ranks, device=x.device).long().view(-1)
        with torch.no_grad():
            self.clean_logits = self.check_fns[0](self.x).detach()
        if self.clean_logits.dim() != 2 or self.clean_logits.shape[0] != x.shape[0]:
            raise ValueError(f"logits_fn must return (B, C) logits, got {tuple(self.clean_logits.shape)}")
        self.targets, self.mask = target_labels(self.clean_logits, self.labels, self.target_ranks)
        self.last: dict[str, Tensor] = {}

    def terms(self, x_adv: Tensor) -> dict[str, Tensor]:
        """The three loss terms, each ``(B,)``: ``ce`` (sum over targets), ``l2``, ``dssim``."""
        z = self.logits_fn(x_adv)
        logp = F.log_softmax(z, dim=1)
        ce = -(logp.gather(1, self.targets) * self.mask).sum(1)
        diff = (x_adv - self.x).flatten(1)
        # d||p||/dp is undefined at p = 0 (the start): a tiny epsilon keeps it finite (and 0)
        l2 = diff.pow(2).sum(1).add(1e-12).sqrt()
        if self.ssim_weight > 0 and self.window >= 3:
            dssim = 1 - kornia_ssim(self.x, x_adv, self.window).flatten(1).mean(1)
        else:
            dssim = torch.zeros_like(l2)
        return {"ce": ce, "l2": l2, "dssim": dssim}

    def __call__(self, x_adv: Tensor) -> Tensor:
        t = self.terms(x_adv)
        self.last = {k: v.detach() for k, v in t.items()}
        return -(t["ce"] + self.l2_weight * t["l2"] + self.ssim_weight * t["dssim"])

    @torch.no_grad()
    def ranks(self, x_adv: Tensor) -> Tensor:
        """Rank ``(B,)`` of the true label on ``x_adv`` (8-bit rounded when ``quantise``) under
        the first check function."""
        xa = (x_adv * 255).round() / 255 if self.quantise else x_adv
        return true_rank(self.check_fns[0](xa), self.labels)

    @torch.no_grad()
    def success(self, x_adv: Tensor) -> Tensor:
        """``(B,)`` bool: the true label is at rank ``>= k`` (with ``margin`` in logits) under
        every check function."""
        xa = (x_adv * 255).round() / 255 if self.quantise else x_adv
        ok = None
        for fn in self.check_fns:
            one = self._holds(fn(xa))
            ok = one if ok is None else ok & one
            if not bool(ok.any()):
                break
        return ok

    def _holds(self, z: Tensor) -> Tensor:
        if self.margin == 0:
            return true_rank(z, self.labels) >= self.target_ranks
        zy = z.gather(1, self.labels[:, None])
        other = z.scatter(1, self.labels[:, None], float("-inf"))
        m = int(self.target_ranks.max()) - 1
        top = other.topk(m, dim=1).values  # (B, m), best first
        kth = top.gather(1, (self.target_ranks - 2)[:, None])  # the (k-1)-th best other label
        return (kth - zy).squeeze(1) > self.margin
