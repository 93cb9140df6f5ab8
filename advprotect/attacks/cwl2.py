"""CW-L2: Carlini & Wagner, "Towards evaluating the robustness of neural networks", IEEE S&P 2017,
adapted to a generic objective and to this package's L-inf invariant.

Carlini & Wagner minimise ``||delta||_2^2 + c * f(x + delta)`` with Adam over a change of variables
``x + delta = (tanh(w) + 1) / 2`` that keeps the image in the box, and binary-search the constant
``c`` for the smallest successful perturbation. Here:

* ``f = -objective`` (the objective is maximised elsewhere), i.e. we minimise
  ``||x_adv - x||_2^2 - c * objective(x_adv)`` per sample;
* the tanh change of variables is applied to the perturbation inside the L-inf budget,
  ``delta = eps * tanh(w)``, then ``x_adv = clip_[0,1](x + delta)``. This keeps
  ``|x_adv - x| <= eps`` (or ``eps_map``) by construction, starts at exactly ``x`` with ``w = 0``
  and, unlike the image-space variable, does not stall on saturated (0 or 255) pixels;
* the binary search over ``c`` runs only when a ``success`` function is given (that is the
  only way to know whether a ``c`` was large enough): ``c`` is multiplied by 10 until a sample
  succeeds, then bisected. Each sample keeps its smallest-L2 successful result; samples that
  never succeed return the last iterate of the last round.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, Callback, Objective, Projection, SuccessFn, check_int, check_range

__all__ = ["CWL2"]


class CWL2(Attack):
    """Carlini-Wagner L2 attack on a generic objective, clipped to an L-inf budget.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255); the result never leaves it.
        steps: Adam iterations per binary-search round ``>= 1`` (default 30).
        c: initial trade-off constant ``> 0`` between the objective and the squared L2 norm
            (default 1.0).
        lr: Adam learning rate ``> 0`` in the tanh space, where ``w = 3`` already saturates the
            budget (default 0.1).
        binary_search_steps: rounds of the search over ``c`` ``>= 1`` when ``success`` is given
            (default 5).
        eot, eot_samples: expectation over transformation, see :class:`Attack`.
        early_stop: with ``success``, stop updating samples within a round once they succeed.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "cwl2"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 30,
        c: float = 1.0,
        lr: float = 0.1,
        binary_search_steps: int = 5,
        *,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(eps, eps, steps, eot=eot, eot_samples=eot_samples, early_stop=early_stop)
        self.c = check_range("c", c, 0.0, lo_open=True)
        self.lr = check_range("lr", lr, 0.0, lo_open=True)
        self.binary_search_steps = check_int("binary_search_steps", binary_search_steps, 1)

    def __repr__(self) -> str:
        return (
            f"CWL2(eps={self.eps!r}, steps={self.steps}, c={self.c}, lr={self.lr}, "
            f"binary_search_steps={self.binary_search_steps}, eot_samples={self.eot_samples}, "
            f"early_stop={self.early_stop})"
        )

    def _objective_value(self, objective: Objective, x_adv: Tensor, b: int) -> Tensor:
        """EOT-averaged objective (B,), inside the autograd graph."""
        if self.eot is None:
            return self._loss(objective, x_adv, b)
        total = None
        for _ in range(self.eot_samples):
            li = self._loss(objective, self._transform(x_adv), b)
            total = li if total is None else total + li
        return total / self.eot_samples

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
        if project is not None:
            raise ValueError("cwl2 optimises in tanh space and takes no extra projection (project=); "
                             "use a sign-step attack such as mifgsm")
        b = x.shape[0]
        full_budget = budget.expand_as(x)
        safe = full_budget.clamp_min(1e-12)
        # tanh-space start matching the (projected) initial perturbation; zeros give x itself
        w0 = torch.atanh((delta / safe).clamp_(-1 + 1e-6, 1 - 1e-6))
        search = success is not None
        rounds = self.binary_search_steps if search else 1
        watch = search and self.early_stop

        c = torch.full((b,), self.c, device=x.device, dtype=x.dtype)
        lo = torch.zeros_like(c)
        hi = torch.full_like(c, float("inf"))
        best = x.clone()
        best_l2 = torch.full_like(c, float("inf"))
        last = x
        step_no = 0

        for _ in range(rounds):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            done = torch.zeros(b, dtype=torch.bool, device=x.device)
            frozen = w0.clone()
            for _ in range(self.steps):
                if watch:
                    with torch.no_grad():
                        x_now = (x + full_budget * torch.tanh(w)).clamp_(0, 1)
                        newly = self._success(success, x_now, b) & ~done
                        if bool(newly.any()):
                            frozen[newly] = w.detach()[newly]
                            done |= newly
                    if bool(done.all()):
                        break
                with torch.enable_grad():
                    x_adv = (x + full_budget * torch.tanh(w)).clamp(0, 1)
                    obj = self._objective_value(objective, x_adv, b)
                    l2 = (x_adv - x).pow(2).flatten(1).sum(1)
                    total = (l2 - c * obj).sum()
                    (w.grad,) = torch.autograd.grad(total, w)
                opt.step()
                if watch and bool(done.any()):
                    with torch.no_grad():
                        w[done] = frozen[done]
                if callback is not None:
                    callback(step_no, obj.detach())
                step_no += 1

            with torch.no_grad():
                last = (x + full_budget * torch.tanh(w)).clamp_(0, 1)
                if not search:
                    break
                ok = self._success(success, last, b)
                l2 = (last - x).pow(2).flatten(1).sum(1)
                better = ok & (l2 < best_l2)
                best[better] = last[better]
                best_l2 = torch.where(better, l2, best_l2)
                # bisection on c (Carlini & Wagner): success -> smaller c, failure -> larger c
                hi = torch.where(ok, torch.minimum(hi, c), hi)
                lo = torch.where(ok, lo, torch.maximum(lo, c))
                c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)

        if not search:
            return last
        found = torch.isfinite(best_l2).view(b, 1, 1, 1)
        return torch.where(found, best, last)
