"""Ensemble objective: combine per-model losses into one per-sample objective.

Weighting modes
---------------
``"uniform"``
    ``L = mean_i L_i``.
dict ``{name: weight}``
    fixed non-negative weights, normalised to sum to 1.
``"adaptive"``
    self-adaptive weights in the spirit of ErasableMask (Shen et al. 2024, section IV-B, Eq. 11):
    each model's weight is its current loss compared with the mean over the surrogates, so that
    models that are already easy to attack do not dominate the update. ErasableMask minimises a
    similarity ``S_i`` and sets ``lambda_i = S_i / mean_j S_j`` (an easily fooled model, with a
    small ``S_i``, gets a small weight). Our losses are maximised and may be negative, so the
    same ratio-to-the-mean rule is applied to the positive, decreasing quantity
    ``h_i = exp(-L_i / T)``:

        ``lambda_i = h_i / mean_j h_j``   (equivalently ``N * softmax_i(-L_i / T)``)

    computed per sample, from the losses of the current step, without gradient; the objective
    is then ``sum_i (lambda_i / N) * L_i``. A model whose loss is already high (easy) gets a
    weight below 1/N, a lagging model above. ``temperature`` ``T`` > 0 sets how sharp the
    re-balancing is (large T tends to uniform); pick it on the scale of the losses.

The last per-model losses and weights are kept (detached) in :attr:`Ensemble.last_losses` and
:attr:`Ensemble.last_weights` for reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .base import check_range

__all__ = ["Ensemble"]

Weights = str | Mapping[str, float]


class Ensemble:
    """Weighted combination of per-model objectives; itself an objective ``x -> (B,)``.

    Args:
        losses: ``{model name: objective}``, each ``x_adv (B, C, H, W) -> (B,)``, maximised.
        weights: ``"uniform"`` (default), ``"adaptive"`` or a ``{name: weight >= 0}`` dict.
        temperature: adaptive-mode temperature ``T > 0`` (default 1.0).
    """

    def __init__(
        self,
        losses: Mapping[str, Callable[[Tensor], Tensor]],
        weights: Weights = "uniform",
        *,
        temperature: float = 1.0,
    ) -> None:
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError("losses must be a non-empty {name: objective} mapping")
        for name, fn in losses.items():
            if not callable(fn):
                raise ValueError(f"loss {name!r} is not callable")
        self.losses = dict(losses)
        self.names = list(self.losses)
        self.temperature = check_range("temperature", temperature, 0.0, lo_open=True)
        self.fixed: Tensor | None = None
        if isinstance(weights, str):
            mode = weights.strip().lower()
            if mode not in ("uniform", "adaptive"):
                raise ValueError(f"weights must be 'uniform', 'adaptive' or a dict, got {weights!r}")
            self.mode = mode
            if mode == "uniform":
                self.fixed = torch.full((len(self.names),), 1.0 / len(self.names), dtype=torch.float64)
        elif isinstance(weights, Mapping):
            if set(weights) != set(self.names):
                raise ValueError(
                    f"weights keys {sorted(weights)} must match the loss names {sorted(self.names)}"
                )
            w = [check_range(f"weight of {n!r}", weights[n], 0.0) for n in self.names]
            if sum(w) <= 0:
                raise ValueError("at least one ensemble weight must be > 0")
            self.mode = "fixed"
            self.fixed = torch.tensor(w, dtype=torch.float64) / sum(w)
        else:
            raise ValueError(f"weights must be 'uniform', 'adaptive' or a dict, got {weights!r}")
        self.last_losses: dict[str, Tensor] = {}
        self.last_weights: dict[str, Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        per = []
        for name in self.names:
            li = self.losses[name](x)
            if not isinstance(li, Tensor) or li.dim() != 1 or li.shape[0] != x.shape[0]:
                got = tuple(li.shape) if isinstance(li, Tensor) else type(li).__name__
                raise ValueError(f"loss {name!r} must return shape ({x.shape[0]},), got {got}")
            per.append(li)
        stacked = torch.stack(per, dim=1)  # (B, N)
        weights = self.weights_for(stacked.detach())
        self.last_losses = {n: per[i].detach() for i, n in enumerate(self.names)}
        self.last_weights = {n: weights[:, i] for i, n in enumerate(self.names)}
        return (stacked * weights).sum(dim=1)

    def weights_for(self, losses: Tensor) -> Tensor:
        """Weights ``(B, N)`` (rows sum to 1) for detached per-model losses ``(B, N)``."""
        if self.fixed is not None:
            return self.fixed.to(device=losses.device, dtype=losses.dtype).expand_as(losses)
        # lambda_i = h_i / mean_j h_j with h = exp(-L/T); divided by N so the rows sum to 1
        return torch.softmax(-losses / self.temperature, dim=1)

    def __repr__(self) -> str:
        return f"Ensemble(names={self.names}, mode={self.mode!r}, temperature={self.temperature})"
