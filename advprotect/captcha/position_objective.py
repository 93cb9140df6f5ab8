"""Multi-target objective for per-position solvers (the ``cnn`` surrogate).

Robust CAPTCHAs (paper 000, section 3.1.3): every character position must be misread. A
per-position reader gives logits ``z`` ``(B, P, C)`` (class 0 = "ended here"); the true answer
``y`` of length ``L`` sets the target of positions ``0..L-1`` to its characters and position
``L`` (when ``L < P``) to "ended". The objective, maximised, is the mean clipped margin loss
(Carlini & Wagner 2017, per position)::

    J(x) = -(1 / K) * sum_{k < K} max(z(k, y_k) - max_{c != y_k} z(k, c), -kappa),  K = min(L + 1, P)

so each of those positions is pushed until another class wins by ``kappa``. Shapes: ``x``
``(B, 3, H, W)`` in [0, 1] -> ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..attacks.base import check_range
from .models import encode

__all__ = ["PositionObjective"]


class PositionObjective:
    """``J(x)`` above; call ``objective(x_adv) -> (B,)``.

    Args:
        model: per-position reader in eval mode, ``x -> (B, P, C)`` logits.
        texts: the ``B`` true answers (at most ``P`` characters are scored).
        kappa: margin ``> 0`` every position is pushed below (default 5).
    """

    def __init__(self, model: nn.Module, texts: Sequence[str], *, kappa: float = 5.0,
                 device: torch.device | str = "cpu", positions: int | None = None) -> None:
        from .models import MAX_LEN

        self.model = model
        self.kappa = check_range("kappa", kappa, 0.0, lo_open=True)
        p = positions or MAX_LEN
        codes = [encode(t)[:p] for t in texts]
        if any(not c for c in codes):
            raise ValueError("every answer must have at least one character")
        tgt = torch.zeros(len(codes), p, dtype=torch.long)
        valid = torch.zeros(len(codes), p, dtype=torch.bool)
        for i, cs in enumerate(codes):
            tgt[i, : len(cs)] = torch.tensor(cs)
            valid[i, : min(len(cs) + 1, p)] = True  # the characters and the "ended" position
        self.targets, self.valid = tgt.to(device), valid.to(device)

    def margins(self, logits: Tensor) -> Tensor:
        """Per-position margins ``(B, P)``: true-class logit minus the best other class."""
        t = self.targets.unsqueeze(-1)
        true = torch.gather(logits, 2, t).squeeze(-1)
        other = logits.scatter(2, t, float("-inf")).amax(-1)
        return true - other

    def __call__(self, x: Tensor) -> Tensor:
        logits = self.model(x).float()
        if logits.shape[1] != self.targets.shape[1]:
            raise ValueError(f"model reads {logits.shape[1]} positions, objective built for {self.targets.shape[1]}")
        m = self.margins(logits).clamp_min(-self.kappa).masked_fill(~self.valid, 0.0)
        return -m.sum(1) / self.valid.sum(1).to(m.dtype)
