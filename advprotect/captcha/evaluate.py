"""``advprotect evaluate --kind captcha``: solve rate per solver on clean and protected CAPTCHAs.

Options (``--labels`` and ``--set key=value``):

* ``labels``: ``labels.csv`` of the CAPTCHAs (``file,answer`` or hashed ``file,salt,sha256``;
  ``file`` relative to the ``--original`` folder, which is also the ``--protected`` one's layout);
* ``solvers``: comma-separated, from ``ddddocr``, ``ddddocr-beta``, ``tesseract``, ``crnn``,
  ``fcn``, ``cnn``, ``dddd`` (default: our three surrogates plus the package solvers that are
  installed, and ``dddd`` when ddddocr is; a named package solver that is not installed is a
  usage error). ``ddddocr`` is the package's default network (black box); ``dddd`` is our port of
  its separately trained beta network (a white-box surrogate of the attack) and ``ddddocr-beta``
  the package running that same beta network (``white_box: true``);
* ``cleanups``: the bot's clean-ups applied before solving, from ``none``, ``median3`` (3x3 median
  filter) and ``jpeg75`` (JPEG quality 75) (default: all three).

Section ``results.captcha``::

    solvers: {<solver>: {clean: {<cleanup>: solve rate}, protected: {<cleanup>: solve rate},
                          white_box: bool}}
    models:  {<solver>: {mean_asr, solve_rate_clean, solve_rate_protected, best_cleanup}}
    robustness: {metric: "1 - protected solve rate", asr: {<solver>: {<cleanup>: value}}}
    captchas, cleanups, errors

A solve is a case-insensitive exact match of the whole answer. ``mean_asr`` (what
``--fail-under`` checks) is ``1 -`` the protected solve rate **under the bot's best clean-up**
(the highest of the cleanups), so a protection that only works without clean-up does not pass;
``solve_rate_clean`` is the clean solve rate under that same clean-up. Per-image columns:
``<solver>_clean_<cleanup>`` and ``<solver>_protected_<cleanup>`` (1 solved, 0 not).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..evaluate.command import EvalContext, PairItem, register_evaluator
from ..io import UsageError
from .dddd import DDDD_NAME
from .labels import read_labels
from .models import SURROGATES
from .solvers import BLACK_BOX, CLEANUPS, available, is_white_box, load_solver, white_box_names

__all__ = ["CaptchaEvaluator"]


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))


class CaptchaEvaluator:
    kind = "captcha"

    def __init__(self, options: dict) -> None:
        if not options.get("labels"):
            raise UsageError("--kind captcha needs --labels labels.csv (the answers)")
        try:
            self.labels = read_labels(options["labels"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        names = options.get("solvers")
        if names:
            self.names = [s.strip() for s in str(names).split(",") if s.strip()]
        else:
            # ddddocr's beta network (dddd) comes with the same extra as ddddocr itself
            self.names = [*(b for b in BLACK_BOX if available(b)), *SURROGATES,
                          *([DDDD_NAME] if available("ddddocr") else [])]
        valid = [*BLACK_BOX, *white_box_names()]
        bad = [s for s in self.names if s not in valid]
        if bad or not self.names:
            raise UsageError(f"unknown solver(s) {', '.join(bad) or '(none)'}; valid: {', '.join(valid)}")
        cl = options.get("cleanups")
        self.cleanups = [c.strip() for c in str(cl).split(",") if c.strip()] if cl else list(CLEANUPS)
        bad = [c for c in self.cleanups if c not in CLEANUPS]
        if bad or not self.cleanups:
            raise UsageError(f"unknown cleanup(s) {', '.join(bad) or '(none)'}; valid: {', '.join(CLEANUPS)}")
        self.device = str(options.get("device", "cpu"))
        try:
            self.solvers = {n: load_solver(n, self.device) for n in self.names}
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.items: list[tuple[str, Image.Image, Image.Image]] = []
        self.errors: list[dict[str, str]] = []

    def begin(self, ctx: EvalContext) -> None:
        pass

    def add(self, item: PairItem, clean: torch.Tensor, protected: torch.Tensor, scratch: dict) -> None:
        rel = item.rel.as_posix()
        if rel not in self.labels:
            raise ValueError(f"no answer for {rel} in the labels file")
        self.items.append((rel, _pil(clean), _pil(protected)))

    def finish(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        rows: dict[str, dict[str, Any]] = {rel: {} for rel, _, _ in self.items}
        n = len(self.items)
        solvers: dict[str, Any] = {}
        models: dict[str, Any] = {}
        asr: dict[str, Any] = {}
        for name, solve in self.solvers.items():
            rates: dict[str, dict[str, float | None]] = {"clean": {}, "protected": {}}
            for side, pos in (("clean", 1), ("protected", 2)):
                for cu in self.cleanups:
                    f = CLEANUPS[cu]
                    answers = solve([f(it[pos]) for it in self.items]) if n else []
                    ok = [self.labels[it[0]].matches(a) for it, a in zip(self.items, answers)]
                    for it, o in zip(self.items, ok):
                        rows[it[0]][f"{name}_{side}_{cu}"] = int(o)
                    rates[side][cu] = round(sum(ok) / n, 4) if n else None
            solvers[name] = {**rates, "white_box": is_white_box(name)}
            if n:
                best = max(self.cleanups, key=lambda c: rates["protected"][c])
                models[name] = {"mean_asr": round(1 - rates["protected"][best], 4),
                                "solve_rate_clean": rates["clean"][best],
                                "solve_rate_protected": rates["protected"][best],
                                "best_cleanup": best}
                asr[name] = {cu: round(1 - rates["protected"][cu], 4) for cu in self.cleanups}
        section = {"captchas": n, "cleanups": self.cleanups, "solvers": solvers, "models": models,
                   "robustness": {"metric": "1 - protected solve rate", "asr": asr},
                   "errors": self.errors}
        return section, rows


register_evaluator("captcha", lambda opts: CaptchaEvaluator(opts))
