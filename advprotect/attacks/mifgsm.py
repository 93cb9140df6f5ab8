"""MI-FGSM: Dong et al., "Boosting adversarial attacks with momentum", CVPR 2018.

``g_{t+1} = decay * g_t + grad_t / ||grad_t||_1``; ``x_{t+1} = Proj(x_t + alpha * sign(g_{t+1}))``.
"""

from __future__ import annotations

from .base import Attack

__all__ = ["MIFGSM"]


class MIFGSM(Attack):
    """Momentum iterative FGSM.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        alpha: step size ``> 0`` (default 2/255).
        steps: iterations ``>= 1`` (default 30).
        decay: momentum decay factor ``>= 0`` (default 1.0).
        eot, eot_samples, early_stop: see :class:`~advprotect.attacks.base.Attack`.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "mifgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        decay: float = 1.0,
        *,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(
            eps, alpha, steps, decay=decay, eot=eot, eot_samples=eot_samples, early_stop=early_stop
        )
