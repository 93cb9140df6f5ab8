"""M-DI^2-FGSM: input diversity (Xie et al., CVPR 2019) combined with momentum (Dong et al.,
CVPR 2018); the strongest transfer baseline of Xie et al. and of APF (section 4.1).
"""

from __future__ import annotations

from .base import Attack

__all__ = ["MDIFGSM"]


class MDIFGSM(Attack):
    """Momentum diverse-inputs iterative FGSM.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        alpha: step size ``> 0`` (default 2/255).
        steps: iterations ``>= 1`` (default 30).
        decay: momentum decay ``>= 0`` (default 1.0).
        resize_rate: DI enlargement factor ``>= 1`` (default 1.1).
        diversity_prob: DI probability ``p`` in ``[0, 1]`` (default 0.5).
        eot, eot_samples, early_stop: see :class:`~advprotect.attacks.base.Attack`.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "mdifgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        decay: float = 1.0,
        resize_rate: float = 1.1,
        diversity_prob: float = 0.5,
        *,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(
            eps, alpha, steps, decay=decay, resize_rate=resize_rate, diversity_prob=diversity_prob,
            eot=eot, eot_samples=eot_samples, early_stop=early_stop,
        )
