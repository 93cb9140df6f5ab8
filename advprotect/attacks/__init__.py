"""Adversarial attack engine: one shared L-inf loop (:class:`Attack`), one attack per module.

Images are float tensors in [0, 1] of shape ``(B, C, H, W)``; an objective is any callable
``objective(x_adv) -> (B,)`` that the attack maximises. Attacks never modify their input and
always return ``x_adv`` with ``|x_adv - x| <= eps`` (or a per-pixel ``eps_map``) in [0, 1].

>>> from advprotect.attacks import make_attack
>>> attack = make_attack("mdifgsm", eps=8 / 255, steps=30)
>>> x_adv = attack(x, objective)                      # doctest: +SKIP
"""

from __future__ import annotations

from .base import Attack, input_diversity, scaled_sign, smooth_gradient, ti_kernel
from .budget import BUDGET_MODES, budget_map, jnd_map
from .cwl2 import CWL2
from .difgsm import DIFGSM
from .ensemble import Ensemble
from .eot import EOT, TRANSFORMS, parse_robust
from .fgsm import FGSM
from .ifgsm import IFGSM
from .mdifgsm import MDIFGSM
from .mifgsm import MIFGSM
from .pgd import PGD
from .tifgsm import TIFGSM

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "ifgsm": IFGSM,
    "mifgsm": MIFGSM,
    "difgsm": DIFGSM,
    "mdifgsm": MDIFGSM,
    "tifgsm": TIFGSM,
    "pgd": PGD,
    "cwl2": CWL2,
}


def attack_key(name: str) -> str:
    """The registry key of an attack name: lower case, ``-``/``_`` dropped (``"MI-FGSM"`` ->
    ``"mifgsm"``)."""
    return name.strip().lower().replace("-", "").replace("_", "")


def make_attack(name: str, **kwargs) -> Attack:
    """Build an attack by name. Names are case-insensitive and ``-``/``_`` are ignored
    (``"MI-FGSM"``, ``"mi_fgsm"`` and ``"mifgsm"`` are the same). Keyword arguments go to the
    attack's constructor; unknown or out-of-range ones raise ``ValueError``.

    Valid names: fgsm, ifgsm, mifgsm, difgsm, mdifgsm, tifgsm, pgd, cwl2.
    """
    if not isinstance(name, str):
        raise ValueError(f"attack name must be a string; valid names: {', '.join(ATTACKS)}")
    key = attack_key(name)
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid names: {', '.join(ATTACKS)}")
    cls = ATTACKS[key]
    try:
        return cls(**kwargs)
    except TypeError as e:  # unexpected keyword argument -> clear ValueError
        raise ValueError(f"bad arguments for attack {key!r}: {e}") from None


__all__ = [
    "attack_key",
    "ATTACKS",
    "BUDGET_MODES",
    "CWL2",
    "DIFGSM",
    "EOT",
    "FGSM",
    "IFGSM",
    "MDIFGSM",
    "MIFGSM",
    "PGD",
    "TIFGSM",
    "TRANSFORMS",
    "Attack",
    "Ensemble",
    "budget_map",
    "input_diversity",
    "jnd_map",
    "make_attack",
    "parse_robust",
    "scaled_sign",
    "smooth_gradient",
    "ti_kernel",
]
