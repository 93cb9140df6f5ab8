"""Black-box CAPTCHA solvers and the clean-up a bot applies first.

* ``ddddocr`` (PyPI ``ddddocr==1.6.1``, extra ``captcha``): the most used open CAPTCHA solver
  (an ONNX CTC model); optional: :func:`available` tells whether it imports.
* ``ddddocr-beta``: the same package with ``beta=True``, its other network. The attack's ``dddd``
  surrogate is a port of that network, so this solver is *not* a black-box test
  (:func:`is_white_box`); it checks, through the package's own preprocessing and onnxruntime,
  what the port promises.
* ``tesseract``: the classic OCR engine through ``pytesseract`` when both are installed (PSM 7,
  one text line, letters and digits only).
* the white-box surrogates (``crnn``, ``fcn``, ``cnn`` and ``dddd``, our port of ddddocr's
  separately trained *beta* network) as solvers too, for the same measurements. ``ddddocr``
  here is always the package's *default* network, which the attack never sees.

A solver maps a list of RGB :class:`PIL.Image.Image` to answers. Answers are compared
case-insensitively after dropping anything that is not a letter or a digit (:func:`normalize`).
Solver-side clean-ups (:data:`CLEANUPS`) are the real, non-differentiable operations: Pillow's
3x3 median filter and a JPEG quality-75 round trip.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable, Sequence

from PIL import Image, ImageFilter

__all__ = ["BLACK_BOX", "CLEANUPS", "Solver", "available", "is_white_box", "load_solver", "load_white_box",
           "normalize", "white_box_names"]

Solver = Callable[[Sequence[Image.Image]], list[str]]
#: ddddocr's beta network run by the package (the ``dddd`` surrogate ports its weights)
DDDDOCR_BETA = "ddddocr-beta"
#: the solvers of the ddddocr package (extra ``captcha``)
DDDDOCR_SOLVERS = ("ddddocr", DDDDOCR_BETA)
#: solvers run through their own package
BLACK_BOX = (*DDDDOCR_SOLVERS, "tesseract")


def normalize(text: str) -> str:
    """Lower case, letters and digits only (how answers are compared)."""
    return re.sub(r"[^0-9a-z]", "", (text or "").lower())


def _median(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.MedianFilter(3))


def _jpeg75(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=75)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


#: name -> clean-up a bot runs before its solver
CLEANUPS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda im: im,
    "median3": _median,
    "jpeg75": _jpeg75,
}


def available(name: str) -> bool:
    """Whether black-box solver ``name`` can run here (its package, and binary, installed)."""
    if name in DDDDOCR_SOLVERS:
        try:
            import ddddocr  # noqa: F401
        except Exception:  # noqa: BLE001 - missing or broken (onnxruntime) install
            return False
        return True
    if name == "tesseract":
        try:
            import pytesseract  # noqa: F401
        except ImportError:
            return False
        return shutil.which("tesseract") is not None
    return False


def _ddddocr(beta: bool = False) -> Solver:
    import contextlib
    import os

    import ddddocr

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # it prints a banner
        ocr = ddddocr.DdddOcr(show_ad=False, beta=beta)

    def solve(images):
        return [normalize(ocr.classification(im.convert("RGB"))) for im in images]

    return solve


def _tesseract() -> Solver:
    import pytesseract

    cfg = "--psm 7 -c tessedit_char_whitelist=0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def solve(images):
        return [normalize(pytesseract.image_to_string(im.convert("RGB"), config=cfg)) for im in images]

    return solve


def white_box_names() -> tuple[str, ...]:
    """Solvers whose gradients the attack can use: our trained surrogates (``crnn``, ``fcn``,
    ``cnn``) and ``dddd``, the port of ddddocr's separately trained beta network."""
    from .dddd import DDDD_NAME
    from .models import SURROGATES

    return (*SURROGATES, DDDD_NAME)


def is_white_box(name: str) -> bool:
    """Whether solver ``name`` has its gradients (or its network's) in the attack: a white-box
    surrogate, or ``ddddocr-beta`` (the network the ``dddd`` surrogate ports)."""
    return name in white_box_names() or name == DDDDOCR_BETA


def load_white_box(names, device="cpu", folder=None) -> dict:
    """``{name: model}`` (eval mode, on ``device``) for white-box solver ``names``; ``folder``
    overrides the shipped weights of our own surrogates. ``ValueError`` for an unknown name."""
    from .dddd import DDDD_NAME, load_dddd
    from .models import load_surrogates

    bad = [n for n in names if n not in white_box_names()]
    if bad:
        raise ValueError(f"unknown surrogate(s) {', '.join(bad)}; valid: {', '.join(white_box_names())}")
    own = load_surrogates([n for n in names if n != DDDD_NAME], device, folder)
    return {n: (load_dddd(device) if n == DDDD_NAME else own[n]) for n in names}


def _surrogate(name: str, device: str) -> Solver:
    import numpy as np
    import torch

    model = load_white_box([name], device)[name]

    def solve(images):
        out: list[str] = []
        for i in range(0, len(images), 64):
            arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images[i:i + 64]])
            x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            out += model.read(x)
        return out

    return solve


def load_solver(name: str, device: str = "cpu") -> Solver:
    """A solver by name: ``ddddocr``, ``ddddocr-beta``, ``tesseract`` or a white-box surrogate
    (``crnn``, ``fcn``, ``cnn``, ``dddd``). Raises ``ValueError`` for an unknown name or a package
    solver that is not installed."""
    if name in white_box_names():
        return _surrogate(name, device)
    if name not in BLACK_BOX:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join([*BLACK_BOX, *white_box_names()])}")
    if not available(name):
        hint = ("pip install 'advprotect[captcha]'" if name in DDDDOCR_SOLVERS
                else "apt-get install tesseract-ocr and pip install pytesseract")
        raise ValueError(f"solver {name!r} is not installed ({hint})")
    if name in DDDDOCR_SOLVERS:
        return _ddddocr(beta=name == DDDDOCR_BETA)
    return _tesseract()
