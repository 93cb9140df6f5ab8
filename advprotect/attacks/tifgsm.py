"""TI-FGSM: Dong et al., "Evading defenses to transferable adversarial examples by
translation-invariant attacks", CVPR 2019.

The gradient is convolved with a normalised Gaussian kernel ``W`` before the sign step, which
approximates the gradient averaged over translated copies of the image. Combinable with
momentum (TI-MI-FGSM, ``decay > 0``) and input diversity (TI-DIM, ``diversity_prob > 0``).
"""

from __future__ import annotations

from .base import Attack, smooth_gradient, ti_kernel

__all__ = ["TIFGSM", "smooth_gradient", "ti_kernel"]


class TIFGSM(Attack):
    """Translation-invariant iterative FGSM.

    Args:
        eps: L-inf budget in ``(0, 1]`` (default 8/255).
        alpha: step size ``> 0`` (default 2/255).
        steps: iterations ``>= 1`` (default 30).
        kernel_size: odd Gaussian kernel size ``>= 1`` (default 7; the paper uses 15 on 299 px
            ImageNet images, scale it with the image size).
        sigma: kernel standard deviation ``> 0`` in pixels (default ``(kernel_size - 1) / 6``).
        decay: momentum decay ``>= 0`` (default 0: plain TI-FGSM; 1.0 gives TI-MI-FGSM).
        diversity_prob: DI probability in ``[0, 1]`` (default 0; 0.5 with decay 1 is TI-DIM).
        resize_rate: DI enlargement factor ``>= 1`` (default 1.1).
        eot, eot_samples, early_stop: see :class:`~advprotect.attacks.base.Attack`.

    Images ``(B, C, H, W)`` in ``[0, 1]``; the objective ``(B,)`` is maximised.
    """

    name = "tifgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 30,
        kernel_size: int = 7,
        sigma: float | None = None,
        *,
        decay: float = 0.0,
        diversity_prob: float = 0.0,
        resize_rate: float = 1.1,
        eot=None,
        eot_samples: int | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(
            eps, alpha, steps, decay=decay, diversity_prob=diversity_prob, resize_rate=resize_rate,
            kernel_size=kernel_size, sigma=sigma, eot=eot, eot_samples=eot_samples,
            early_stop=early_stop,
        )
