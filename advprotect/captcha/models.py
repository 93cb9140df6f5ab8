"""Our own surrogate CAPTCHA solvers (white-box models for the attack).

Two architectures, as robust-CAPTCHA attacks need (paper 000, section 3.1.3: an ensemble of
differently built solvers so the perturbation transfers to unseen ones):

``crnn``
    convolutional feature extractor -> bidirectional GRU over the image columns -> per-frame
    class scores, trained with CTC (Graves et al. 2006; the CRNN of Shi et al. 2017). Reads any
    length.
``cnn``
    a plain convolutional network with one classifier head per character position (a fixed
    :data:`MAX_LEN` positions, class ``0`` = "no character here"), the classic multi-digit
    reader (Goodfellow et al. 2014).

Both take ``x`` ``(B, 3, H, W)`` or ``(B, 1, H, W)`` in ``[0, 1]`` of any size, convert to grey
(ITU-R BT.601 luma, as Pillow's ``convert("L")``), resize to ``64 x 160`` (bilinear) and
normalise to ``[-1, 1]`` inside ``forward``, so the attack differentiates through that too.
Outputs are logits over ``1 + len(ALPHABET)`` classes (``0`` = CTC blank / empty position):
``crnn`` -> ``(B, T, C)`` with ``T = 40`` frames, ``cnn`` -> ``(B, MAX_LEN, C)``.

Trained weights (float16, a few hundred KB each) ship in ``advprotect/captcha/weights/``;
``advprotect captcha train`` (:mod:`advprotect.captcha.train`) rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .generate import ALPHABET
from .preprocess import luma

__all__ = [
    "INPUT_SIZE",
    "MAX_LEN",
    "NUM_CLASSES",
    "SURROGATES",
    "CRNN",
    "PositionCNN",
    "build",
    "decode",
    "encode",
    "load_surrogate",
    "load_surrogates",
    "to_model_input",
    "weights_dir",
]

INPUT_SIZE = (64, 160)
#: positions the per-position CNN reads (longer answers cannot be read by it)
MAX_LEN = 8
NUM_CLASSES = 1 + len(ALPHABET)
_INDEX = {c: i + 1 for i, c in enumerate(ALPHABET)}


def encode(text: str) -> list[int]:
    """Class indices (1-based; 0 is blank) of ``text``, case-insensitive."""
    try:
        return [_INDEX[c] for c in text.lower()]
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the solver alphabet {ALPHABET!r}") from None


def decode(indices) -> str:
    """Text of class indices, 0 (blank) skipped."""
    return "".join(ALPHABET[i - 1] for i in indices if i > 0)


def to_model_input(x: Tensor) -> Tensor:
    """``(B, 3|1, H, W)`` in [0, 1] -> grey ``(B, 1, 64, 160)`` in [-1, 1] (differentiable)."""
    x = luma(x)
    if tuple(x.shape[-2:]) != INPUT_SIZE:
        x = F.interpolate(x, size=INPUT_SIZE, mode="bilinear", align_corners=False)
    return x * 2 - 1


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CRNN(nn.Module):
    """Conv + BiGRU + CTC reader. ``forward(x)`` -> logits ``(B, 40, NUM_CLASSES)``."""

    kind = "ctc"

    def __init__(self, hidden: int = 96) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 16), nn.MaxPool2d(2),            # 32 x 80
            _block(16, 32), nn.MaxPool2d(2),           # 16 x 40
            _block(32, 64), _block(64, 64), nn.MaxPool2d((2, 1)),   # 8 x 40
            _block(64, 96), nn.MaxPool2d((2, 1)),      # 4 x 40
        )
        self.collapse = nn.Conv2d(96, 128, (4, 1))    # 1 x 40
        self.rnn = nn.GRU(128, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        f = self.collapse(self.features(to_model_input(x))).squeeze(2).transpose(1, 2)  # (B, T, C)
        f = F.relu(f)
        if f.is_cuda and torch.is_grad_enabled() and not self.training:
            # cuDNN's RNN backward runs only in training mode: use the native kernel when an
            # attack differentiates through the model in eval mode
            with torch.backends.cudnn.flags(enabled=False):
                f, _ = self.rnn(f)
        else:
            f, _ = self.rnn(f)
        return self.head(f)

    @torch.no_grad()
    def read(self, x: Tensor) -> list[str]:
        """Greedy CTC decoding: best class per frame, repeats merged, blanks dropped."""
        best = self(x).argmax(-1).cpu()
        out = []
        for row in best.tolist():
            merged = [c for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])]
            out.append(decode(merged))
        return out


class _Temporal(nn.Module):
    """Residual dilated 1-D convolutions over the image columns (no recurrence)."""

    def __init__(self, ch: int, dilations=(1, 2, 4, 8)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv1d(ch, ch, 3, padding=d, dilation=d, bias=False), nn.BatchNorm1d(ch), nn.ReLU(inplace=True))
            for d in dilations
        )

    def forward(self, f: Tensor) -> Tensor:
        for layer in self.layers:
            f = f + layer(f)
        return f


def _trunk() -> nn.Sequential:
    """Strided-conv trunk (different from the CRNN's pooled VGG-style one): 64x160 -> 1x40."""
    def conv(cin, cout, k, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(
        conv(1, 24, 5, 2),          # 32 x 80
        conv(24, 48, 3, 2),         # 16 x 40
        conv(48, 64, 3, 1),
        conv(64, 96, 3, (2, 1)),    # 8 x 40
        conv(96, 96, 3, (2, 1)),    # 4 x 40
        nn.Conv2d(96, 128, (4, 1)), nn.ReLU(inplace=True),   # 1 x 40
    )


class FCN(nn.Module):
    """Fully convolutional CTC reader: strided-conv trunk + residual dilated 1-D convolutions over
    the columns, no recurrence. ``forward(x)`` -> logits ``(B, 40, NUM_CLASSES)``."""

    kind = "ctc"

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _trunk()
        self.temporal = _Temporal(128)
        self.head = nn.Conv1d(128, NUM_CLASSES, 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.trunk(to_model_input(x)).squeeze(2)   # (B, 128, 40)
        return self.head(self.temporal(f)).transpose(1, 2)

    read = CRNN.read


class PositionCNN(nn.Module):
    """Per-position classifier: convolutional column features, then for each of the
    :data:`MAX_LEN` positions a learned attention over the columns and a shared classifier.
    ``forward(x)`` -> logits ``(B, MAX_LEN, NUM_CLASSES)``; class 0 at a position means
    "the answer ended before it"."""

    kind = "position"

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _trunk()
        self.temporal = _Temporal(128, dilations=(1, 2, 4, 8, 16))
        self.where = nn.Conv1d(128, MAX_LEN, 1)            # attention logits per position
        self.pos = nn.Parameter(torch.zeros(MAX_LEN, 128))
        self.cls = nn.Sequential(nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, NUM_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        f = self.temporal(self.trunk(to_model_input(x)).squeeze(2))   # (B, 128, T)
        att = self.where(f).softmax(dim=-1)                            # (B, MAX_LEN, T)
        pooled = torch.einsum("bpt,bct->bpc", att, f) + self.pos       # (B, MAX_LEN, 128)
        return self.cls(pooled)

    @torch.no_grad()
    def read(self, x: Tensor) -> list[str]:
        """Best class per position, read up to the first "ended" position."""
        best = self(x).argmax(-1).cpu().tolist()
        out = []
        for row in best:
            end = row.index(0) if 0 in row else len(row)
            out.append(decode(row[:end]))
        return out


SURROGATES: dict[str, type[nn.Module]] = {"crnn": CRNN, "fcn": FCN, "cnn": PositionCNN}


def build(name: str) -> nn.Module:
    """A fresh (untrained) surrogate by name (``crnn`` or ``cnn``)."""
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; valid: {', '.join(SURROGATES)}")
    return SURROGATES[name]()


def weights_dir() -> Path:
    return Path(__file__).resolve().parent / "weights"


def load_surrogate(name: str, device: torch.device | str = "cpu", path: str | Path | None = None) -> nn.Module:
    """A trained surrogate in eval mode, float32, on ``device``; weights from ``path`` or the
    ones shipped with the package (``weights/<name>.pt``). Raises ``ValueError`` if missing."""
    model = build(name)
    p = Path(path) if path is not None else weights_dir() / f"{name}.pt"
    if not p.is_file():
        raise ValueError(f"no weights for surrogate {name!r} at {p}; run `advprotect captcha train`")
    data = torch.load(p, map_location="cpu", weights_only=True)
    state = data["state_dict"] if isinstance(data, dict) and "state_dict" in data else data
    if isinstance(data, dict) and data.get("alphabet", ALPHABET) != ALPHABET:
        raise ValueError(f"{p} was trained for another alphabet")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval().requires_grad_(False)
    return model.to(device)


def load_surrogates(names=("crnn", "cnn"), device: torch.device | str = "cpu",
                    folder: str | Path | None = None) -> dict[str, nn.Module]:
    """``{name: model}`` for ``names``; ``folder`` overrides the shipped weights folder."""
    return {n: load_surrogate(n, device, None if folder is None else Path(folder) / f"{n}.pt") for n in names}
