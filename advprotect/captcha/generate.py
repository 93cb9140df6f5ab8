"""Render text CAPTCHAs with the ``captcha`` package and Pillow fonts, deterministically.

The ``captcha`` package (:class:`captcha.image.ImageCaptcha`) draws every character with a random
font, size, rotation and quadrilateral warp, then pastes the characters side by side with random
overlap. It draws its randomness from the :mod:`secrets` module, which cannot be seeded; while one
of our CAPTCHAs is drawn, :func:`seeded_captcha_random` swaps that module, inside
``captcha.image`` only, for an object with the same three functions (``randbelow``, ``randbits``,
``choice``) backed by :class:`random.Random` (under a lock, so threads do not interleave). With a
seed, the same ``(text, style, seed)`` therefore gives the same pixels (for the pinned
``captcha`` version).

Styles (``--style``):

``plain``
    milder rotation (+-20 degrees) and warp than the package default, no clutter.
``noisy``
    the package's distortion, its noise dots, and light Gaussian pixel noise.
``lines``
    milder distortion, the package's noise arc and two to three straight lines through the text.
``grain``
    the ``plain`` drawing on a grainy, paper-like background (grey film grain, sigma 9/255).
    Readers and people see a plain CAPTCHA; the grain gives the protection room: a change on a
    textured background costs far less SSIM than the same change on a flat one.

Fonts: the package's DroidSansMono and Pillow's built-in Aileron (both ship with pip wheels, so
every install renders the same); ``fonts=`` adds TrueType files.

Images are RGB, ``width x height`` (default 160x60), returned as :class:`PIL.Image.Image`.
"""

from __future__ import annotations

import contextlib
import random
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "ALPHABET",
    "DEFAULT_CHARSET",
    "STYLES",
    "CaptchaSpec",
    "generate_batch",
    "random_text",
    "render",
    "seeded_captcha_random",
]

#: every character the surrogate solvers know (they read case-insensitively: ``A`` is ``a``)
ALPHABET = string.digits + string.ascii_lowercase
#: default characters: lower-case letters and digits without the look-alikes 0/o, 1/l/i, 9/g
DEFAULT_CHARSET = "2345678abcdefhjkmnpqrstuvwxyz"
STYLES = ("plain", "noisy", "lines", "grain")

_LOCK = threading.Lock()


class _SeededSecrets:
    """The part of :mod:`secrets` that ``captcha.image`` uses, backed by a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


@contextlib.contextmanager
def seeded_captcha_random(rng: random.Random) -> Iterator[None]:
    """Make ``captcha.image`` draw its randomness from ``rng`` inside the ``with`` block."""
    import captcha.image as ci

    with _LOCK:
        saved = ci.secrets
        ci.secrets = _SeededSecrets(rng)  # type: ignore[assignment]
        try:
            yield
        finally:
            ci.secrets = saved


@dataclass(frozen=True)
class CaptchaSpec:
    """What to generate. ``charset``: characters to draw from (letters and digits only; the
    solvers compare case-insensitively, so ``"abc"`` and ``"ABC"`` differ only in looks);
    ``min_length..max_length`` in [1, 12]; ``width`` in [40, 1024] and ``height`` in [20, 512]
    pixels; ``style`` one of :data:`STYLES`; ``fonts``: extra TrueType files."""

    charset: str = DEFAULT_CHARSET
    min_length: int = 4
    max_length: int = 6
    width: int = 160
    height: int = 60
    style: str = "noisy"
    fonts: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> "CaptchaSpec":
        if not isinstance(self.charset, str) or not self.charset:
            raise ValueError("charset must be a non-empty string of letters and digits")
        bad = sorted({c for c in self.charset if c.lower() not in ALPHABET})
        if bad:
            raise ValueError(
                f"charset may hold only ASCII letters and digits (what the solvers read); got {''.join(bad)!r}"
            )
        for name in ("min_length", "max_length", "width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if not 1 <= self.min_length <= self.max_length <= 12:
            raise ValueError(
                f"length range must satisfy 1 <= min <= max <= 12, got {self.min_length}-{self.max_length}"
            )
        if not 40 <= self.width <= 1024 or not 20 <= self.height <= 512:
            raise ValueError(f"size must be 40..1024 x 20..512 pixels, got {self.width}x{self.height}")
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; valid: {', '.join(STYLES)}")
        for f in self.fonts:
            try:
                ImageFont.truetype(f, 20)
            except OSError as exc:
                raise ValueError(f"cannot load font {f!r}: {exc}") from None
        return self

    def settings(self) -> dict:
        return {"charset": self.charset, "length": [self.min_length, self.max_length],
                "size": [self.width, self.height], "style": self.style, "fonts": list(self.fonts)}


def parse_length(text: str) -> tuple[int, int]:
    """``"4-6"`` -> (4, 6), ``"5"`` -> (5, 5); raises ``ValueError`` with the expected form."""
    s = str(text).strip()
    try:
        if "-" in s:
            a, b = s.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(s)
    except ValueError:
        raise ValueError(f"length must be N or MIN-MAX (e.g. 4-6), got {text!r}") from None
    if not 1 <= lo <= hi <= 12:
        raise ValueError(f"length must satisfy 1 <= MIN <= MAX <= 12, got {text!r}")
    return lo, hi


class _Renderer:
    """An ``ImageCaptcha`` per style with our fonts; distortion set per instance."""

    def __init__(self, spec: CaptchaSpec) -> None:
        from captcha.image import ImageCaptcha

        self.spec = spec
        h = spec.height
        sizes = tuple(int(round(h * f)) for f in (0.7, 0.8, 0.9))
        fonts: list[ImageFont.FreeTypeFont] = []
        import captcha.image as ci

        for path in [*ci.DEFAULT_FONTS, *spec.fonts]:
            fonts += [ImageFont.truetype(path, s) for s in sizes]
        fonts += [ImageFont.load_default(s) for s in sizes]  # Pillow's Aileron
        cap = ImageCaptcha(width=spec.width, height=spec.height, fonts=list(ci.DEFAULT_FONTS), font_sizes=sizes)
        cap._truefonts = fonts  # the package's cache of loaded fonts: ours, same sizes
        cap.word_offset_dx = 0.1  # less overlap between neighbours than the package's 0.25
        if spec.style in ("plain", "lines", "grain"):
            cap.character_rotate = (-20, 20)
            cap.character_warp_dx = (0.1, 0.2)
            cap.character_warp_dy = (0.1, 0.2)
        self.cap = cap

    def draw(self, text: str, rng: random.Random) -> Image.Image:
        style = self.spec.style
        with seeded_captcha_random(rng):
            from captcha.image import random_color

            bg = random_color(225, 255)
            fg = random_color(10, 150, 255)
            im = self.cap.create_captcha_image(text, fg, bg)
            if style == "noisy":
                self.cap.create_noise_dots(im, fg, width=2, number=40)
            elif style == "lines":
                self.cap.create_noise_curve(im, fg)
        if style == "lines":
            d = ImageDraw.Draw(im)
            w, h = im.size
            for _ in range(rng.randint(2, 3)):
                y0, y1 = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * h
                d.line([(0, y0), (w, y1)], fill=fg[:3], width=rng.choice((1, 2)))
        im = im.filter(ImageFilter.SMOOTH)
        if style == "noisy":
            arr = np.asarray(im, dtype=np.float32)
            noise = np.random.default_rng(rng.getrandbits(63)).normal(0.0, 10.0, arr.shape)
            im = Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8))
        elif style == "grain":
            arr = np.asarray(im, dtype=np.float32)
            grain = np.random.default_rng(rng.getrandbits(63)).normal(0.0, 9.0, arr.shape[:2])
            im = Image.fromarray(np.clip(arr + grain[..., None], 0, 255).round().astype(np.uint8))
        return im


_RENDERERS: dict[CaptchaSpec, _Renderer] = {}


def _renderer(spec: CaptchaSpec) -> _Renderer:
    r = _RENDERERS.get(spec)
    if r is None:
        r = _RENDERERS[spec] = _Renderer(spec.validate())
    return r


def random_text(rng: random.Random, spec: CaptchaSpec) -> str:
    """A random answer: a length in ``[min_length, max_length]``, characters from the charset."""
    n = rng.randint(spec.min_length, spec.max_length)
    return "".join(rng.choice(spec.charset) for _ in range(n))


def render(text: str, spec: CaptchaSpec | None = None, *, seed: int | None = None,
           rng: random.Random | None = None) -> Image.Image:
    """Draw ``text`` as a CAPTCHA (RGB ``spec.width x spec.height``). ``seed`` or ``rng`` make it
    reproducible; with neither, it is random."""
    spec = spec or CaptchaSpec()
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    bad = sorted({c for c in text if c.lower() not in ALPHABET})
    if bad:
        raise ValueError(f"text may hold only ASCII letters and digits, got {''.join(bad)!r}")
    if rng is None:
        rng = random.Random(seed)
    return _renderer(spec).draw(text, rng)


def generate_batch(n: int, spec: CaptchaSpec | None = None, *, seed: int | None = 0,
                   start: int = 0) -> list[tuple[str, Image.Image]]:
    """``n`` CAPTCHAs ``[(answer, image)]``; CAPTCHA ``i`` depends only on ``(seed, start + i, spec)``,
    so any slice of a run can be regenerated on its own. ``seed=None`` is random."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    spec = (spec or CaptchaSpec()).validate()
    base = random.Random(seed).getrandbits(64) if seed is not None else random.SystemRandom().getrandbits(64)
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"{base}:{i}")
        text = random_text(rng, spec)
        out.append((text, render(text, spec, rng=rng)))
    return out

