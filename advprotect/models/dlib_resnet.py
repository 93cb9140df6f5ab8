"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as a torch module.

The network is the one dlib's ``face_recognition_model_v1`` runs (``anet_type`` in dlib's
Python bindings): a 7x7/2 convolution, 3x3/2 max pooling, 14 residual units (32, 32, 32,
64↓, 64, 64, 64, 128↓, 128, 128, 256↓, 256, 256, 256↓ channels; ↓ = stride-2 unit whose
shortcut is a 2x2/2 average pooling), global average pooling and a 256->128 linear layer
without bias. dlib's batch norms are stored as per-channel affine layers. Two dlib details
matter for exactness and are reproduced here:

* input: ``(pixel - mean) / 256`` per channel, with ``pixel`` on the 0..255 scale and the
  means stored in the file (122.782, 117.001, 104.298 for R, G, B);
* a residual sum of tensors of different shapes (the stride-2 units, where the shortcut has
  fewer channels, or a pooled shortcut is one pixel larger than the convolution output) is
  zero-padded to the larger size on the channel / bottom / right sides, as dlib's ``add_prev``.

The descriptor is the raw 128-d output (dlib does not normalise it); two faces are the same
person when the Euclidean distance is below :data:`DLIB_THRESHOLD` (0.6).

Weights come from dlib's own ``.dat`` through :mod:`advprotect.models.dlib_format` and the
model store (``convert_dat``).
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dlib_format import DlibLayer, DlibNetwork, bn_to_affine, parse_network

__all__ = ["DLIB_THRESHOLD", "INPUT_SIZE", "DlibResNet", "convert_dat", "load_dlib_resnet",
           "load_from_dat", "state_dict_from_network"]

#: Euclidean distance under which dlib calls two descriptors the same person.
DLIB_THRESHOLD = 0.6
#: Side of the square face chip the network takes (dlib ``input_rgb_image_sized<150>``).
INPUT_SIZE = 150

#: (channels, stride-2 first unit?) of each of the 14 residual units, input side first.
_UNITS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)
_DEFAULT_MEAN = (122.782, 117.001, 104.298)


class Affine(nn.Module):
    """Per-channel ``x * weight + bias`` (dlib's inference-time batch norm).

    x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: sum of two (B, C, H, W) tensors, the smaller one zero-extended
    (channels, bottom rows, right columns) to the larger one's size."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class ResidualUnit(nn.Module):
    """``relu(block(x) + shortcut(x))`` with ``block = affine∘conv3x3∘relu∘affine∘conv3x3/s``.

    The stride-2 ("down") unit's shortcut is a 2x2/2 average pooling, with dlib's zero-padded
    sum. x: (B, C_in, H, W) -> (B, C, H', W')."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        stride, pad = (2, 0) if down else (1, 1)  # dlib's default: no padding when strided
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=pad)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_padded_add(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's face-descriptor ResNet.

    ``forward(x)``: x (B, 3, 150, 150) float RGB in [0, 1] (an aligned dlib face chip, e.g.
    ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` divided by 255) -> (B, 128)
    descriptor, the same numbers dlib's ``compute_face_descriptor`` returns (float32; not
    unit-normalised). Differentiable with respect to ``x``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(_DEFAULT_MEAN, dtype=torch.float32))
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine1 = Affine(32)
        units, cin = [], 32
        for channels, down in _UNITS:
            units.append(ResidualUnit(cin, channels, down))
            cin = channels
        self.units = nn.ModuleList(units)
        self.fc = nn.Linear(cin, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError("DlibResNet expects a floating point tensor in [0, 1]")
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"DlibResNet expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB face chips, got "
                f"{tuple(x.shape)}; align faces with dlib.get_face_chip(..., size=150, padding=0.25)"
            )
        x = x.to(self.conv1.weight.dtype)  # e.g. float64 input to the float32 network
        mean = self.input_mean.to(x.dtype).view(1, 3, 1, 1)
        h = (x * 255.0 - mean) / 256.0
        h = F.relu(self.affine1(self.conv1(h)))
        h = F.max_pool2d(h, 3, 2)
        for unit in self.units:
            h = unit(h)
        return self.fc(h.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- conversion


class _Cursor:
    """Walks the parsed dlib layers (input side first), checking each against the module."""

    def __init__(self, layers: list[DlibLayer]) -> None:
        self.layers = layers
        self.i = 0

    def take(self, kind: str) -> DlibLayer:
        if self.i >= len(self.layers):
            raise ValueError(f"dlib network ends early: expected a {kind} layer at {self.i}")
        layer = self.layers[self.i]
        accepted = ("affine", "bn") if kind == "affine" else (kind,)
        if layer.kind not in accepted:
            raise ValueError(
                f"dlib layer {self.i} is {layer.describe()!r}, expected {kind}: this is not the "
                "dlib_face_recognition_resnet_model_v1 architecture"
            )
        self.i += 1
        return layer


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"dlib network does not match DlibResNet: {msg}")


def _conv(cur: _Cursor, conv: nn.Conv2d, name: str, out: dict[str, torch.Tensor]) -> None:
    layer = cur.take("con")
    a, w = layer.attrs, layer.tensors["weight"]
    _check(tuple(w.shape) == tuple(conv.weight.shape),
           f"{name}: weight {tuple(w.shape)} vs {tuple(conv.weight.shape)}")
    _check((a["stride_y"], a["stride_x"]) == conv.stride, f"{name}: stride {a['stride_y']}")
    _check((a["padding_y"], a["padding_x"]) == conv.padding, f"{name}: padding {a['padding_y']}")
    _check(not a["use_relu"] and "bias" in layer.tensors, f"{name}: unexpected bias/relu flags")
    out[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
    out[f"{name}.bias"] = torch.from_numpy(layer.tensors["bias"].copy())


def _affine(cur: _Cursor, channels: int, name: str, out: dict[str, torch.Tensor]) -> None:
    layer = cur.take("affine")
    if layer.kind == "bn":
        gamma, beta = bn_to_affine(layer)
    elif layer.attrs["disabled"]:
        gamma, beta = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    else:
        gamma, beta = layer.tensors["gamma"], layer.tensors["beta"]
    _check(gamma.shape == (channels,) and beta.shape == (channels,),
           f"{name}: {gamma.shape[0]} channels, expected {channels}")
    out[f"{name}.weight"] = torch.from_numpy(gamma.copy())
    out[f"{name}.bias"] = torch.from_numpy(beta.copy())


def _relu(cur: _Cursor) -> None:
    _check(not cur.take("relu").attrs["disabled"], "a disabled relu")


def _pool(cur: _Cursor, kind: str, size: int, stride: int) -> None:
    a = cur.take(kind).attrs
    got = (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"])
    _check(got == (size, size, stride, stride, 0, 0), f"{kind} {got}")


def state_dict_from_network(net: DlibNetwork) -> dict[str, torch.Tensor]:
    """Map a parsed dlib face-recognition network onto :class:`DlibResNet`'s state dict,
    checking every layer's type, shape, stride and padding on the way (``ValueError`` if the
    file is some other network)."""
    model = DlibResNet()
    out: dict[str, torch.Tensor] = {}
    inp = net.input.attrs
    _check(net.input.version == "input_rgb_image_sized"
           and (inp.get("nr"), inp.get("nc")) == (INPUT_SIZE, INPUT_SIZE),
           f"input layer {net.input.describe()}")
    out["input_mean"] = torch.tensor([inp["avg_red"], inp["avg_green"], inp["avg_blue"]],
                                     dtype=torch.float32)
    cur = _Cursor(net.layers)
    _conv(cur, model.conv1, "conv1", out)
    _affine(cur, 32, "affine1", out)
    _relu(cur)
    _pool(cur, "max_pool", 3, 2)
    for i, unit in enumerate(model.units):
        p = f"units.{i}"
        channels = unit.conv2.out_channels
        cur.take("tag_or_skip")  # tag1: the unit's input
        _conv(cur, unit.conv1, f"{p}.conv1", out)
        _affine(cur, channels, f"{p}.affine1", out)
        _relu(cur)
        _conv(cur, unit.conv2, f"{p}.conv2", out)
        _affine(cur, channels, f"{p}.affine2", out)
        if unit.down:
            cur.take("tag_or_skip")  # tag2: the block output
            cur.take("tag_or_skip")  # skip1: back to the unit's input
            _pool(cur, "avg_pool", 2, 2)
        cur.take("add_prev")
        _relu(cur)
    _pool(cur, "avg_pool", 0, 1)  # avg_pool_everything
    fc = cur.take("fc")
    _check(not fc.attrs["has_bias"] and fc.tensors["weight"].shape == (256, 128),
           f"fc {fc.describe()}")
    out["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fc.tensors["weight"].T))
    _check(cur.i == len(net.layers), f"{len(net.layers) - cur.i} unexpected layers after fc")
    return out


def convert_dat(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """Model-store converter: ``{member path: bytes}`` holding exactly one dlib ``.dat``
    -> the state dict of :class:`DlibResNet` (float32 tensors)."""
    dats = [name for name in files if name.endswith(".dat")]
    if len(dats) != 1:
        raise ValueError(f"convert_dat needs exactly one .dat file, got {sorted(files)}")
    return state_dict_from_network(parse_network(files[dats[0]]))


def load_dlib_resnet(device: str | torch.device = "cpu") -> DlibResNet:
    """The converted dlib ResNet from the model store, in eval mode on ``device``, with its
    parameters frozen (``requires_grad=False``; gradients still flow to the input)."""
    from . import store

    return store.load_pretrained(DlibResNet(), "dlib-resnet", device)


def load_from_dat(path: str | Path) -> DlibResNet:
    """A :class:`DlibResNet` straight from a dlib ``.dat`` file (no model store), eval mode."""
    model = DlibResNet()
    model.load_state_dict(convert_dat({str(path): Path(path).read_bytes()}), strict=True)
    model.requires_grad_(False)
    return model.eval()
