"""PGD: Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018.

I-FGSM started from a uniform random point of the L-inf ball (``random_start=True``).
"""

from __future__ import annotations

from .base import Attack

__all__ = ["PGD"]


class PGD(Attack):
    """Projected gradient descent (ascent on the objective) in the L-inf ball.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        alpha: step size ``> 0`` (default 2/255).
        steps: iterations ``>= 1`` (default 30).
        random_start: start uniformly in the eps ball (default True); an explicit ``init`` given
            at call time takes precedence.
        eot, eot_samples, early_stop: see :class:`~advprotect.attacks.base.Attack`.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "pgd"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        random_start: bool = True,
        *,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(
            eps, alpha, steps, random_start=random_start, eot=eot, eot_samples=eot_samples,
            early_stop=early_stop,
        )
