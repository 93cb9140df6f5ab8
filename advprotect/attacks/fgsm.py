"""FGSM: Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015.

``x_adv = clip_[0,1](x + eps * sign(grad_x objective(x)))``: one sign step of size ``eps``.
"""

from __future__ import annotations

from .base import Attack

__all__ = ["FGSM"]


class FGSM(Attack):
    """Fast Gradient Sign Method: a single sign-gradient step of size ``eps``.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        eot, eot_samples: optional expectation over transformation (see :class:`Attack`).

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "fgsm"

    def __init__(self, eps: float = 8 / 255, *, eot=None, eot_samples: int | None = None) -> None:
        super().__init__(eps=eps, alpha=eps, steps=1, eot=eot, eot_samples=eot_samples)
