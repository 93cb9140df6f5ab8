"""DI^2-FGSM: Xie et al., "Improving transferability of adversarial examples with input
diversity", CVPR 2019.

Each step the gradient is taken through a random transformation ``T(x)`` applied with
probability ``p``: resize to a random size in ``[H, H*resize_rate)``, zero-pad at a random
position to ``H*resize_rate`` and (our addition) resize back to ``H`` so the model input size
never changes. See :func:`advprotect.attacks.base.input_diversity`.
"""

from __future__ import annotations

from .base import Attack, input_diversity

__all__ = ["DIFGSM", "input_diversity"]


class DIFGSM(Attack):
    """Diverse-inputs iterative FGSM (no momentum; see :class:`~advprotect.attacks.MDIFGSM`).

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        alpha: step size ``> 0`` (default 2/255).
        steps: iterations ``>= 1`` (default 30).
        resize_rate: enlargement factor ``>= 1`` (default 1.1).
        diversity_prob: probability ``p`` in ``[0, 1]`` of transforming the input (default 0.5).
        eot, eot_samples, early_stop: see :class:`~advprotect.attacks.base.Attack`.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "difgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        resize_rate: float = 1.1,
        diversity_prob: float = 0.5,
        *,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(
            eps, alpha, steps, resize_rate=resize_rate, diversity_prob=diversity_prob,
            eot=eot, eot_samples=eot_samples, early_stop=early_stop,
        )
