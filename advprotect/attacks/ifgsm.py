"""I-FGSM (BIM): Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world",
ICLR workshop 2017.

``x_{t+1} = Proj_{eps-ball, [0,1]}(x_t + alpha * sign(grad objective(x_t)))`` for ``steps`` steps.
"""

from __future__ import annotations

from .base import Attack

__all__ = ["IFGSM"]


class IFGSM(Attack):
    """Iterative FGSM with projection onto the L-inf ball after every step.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        alpha: step size ``> 0`` (default 2/255).
        steps: iterations ``>= 1`` (default 30).
        eot, eot_samples, early_stop: see :class:`~advprotect.attacks.base.Attack`.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "ifgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        *,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(eps, alpha, steps, eot=eot, eot_samples=eot_samples, early_stop=early_stop)
