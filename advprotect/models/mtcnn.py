"""MTCNN networks: P-Net, R-Net and O-Net (Zhang et al. 2016, "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks").

The three networks are written here from the paper's architecture; their parameter names match
the state dicts shipped in the ``facenet-pytorch`` 2.6.0 wheel (``facenet_pytorch/data/
{pnet,rnet,onet}.pt``), which were converted from the authors' Caffe model. Two facts of that
conversion matter:

* the convolution kernels were transposed so that the networks work on ordinary ``(H, W)``
  images, but the dense layers still expect the Caffe (column-major, transposed) flatten order:
  features are flattened as ``(W, H, C)``, not PyTorch's ``(C, H, W)``;
* Caffe pooling rounds the output size up, hence ``ceil_mode=True``; PReLU has one slope per
  channel.

Every network takes images normalised as ``(x * 255 - 127.5) / 128`` for ``x`` in ``[0, 1]``
(see :func:`normalise`), RGB channel order, shape ``(B, 3, H, W)``.
"""

from __future__ import annotations

import io

import torch
from torch import nn

__all__ = ["MEMBERS", "MTCNN", "ONet", "PNet", "RNet", "convert", "normalise"]

#: Member paths of the three weight files inside the facenet-pytorch wheel, by network name.
MEMBERS: dict[str, str] = {n: f"facenet_pytorch/data/{n}.pt" for n in ("pnet", "rnet", "onet")}


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Map RGB images in ``[0, 1]`` to the networks' input range ``[-0.996, 0.996]``.

    ``x``: any shape, float in ``[0, 1]``; returns ``(x * 255 - 127.5) / 128``, same shape.
    """
    return (x * 255.0 - 127.5) * 0.0078125


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``(B, C, H, W)`` features in Caffe's transposed order ``(W, H, C)`` -> ``(B, W*H*C)``."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, a 12x12 window with stride 2.

    ``forward(x)``: ``x`` ``(B, 3, H, W)`` normalised images with ``H, W >= 12``. Returns
    ``(prob, reg)``: ``prob`` ``(B, h, w)`` face probability in ``[0, 1]`` and ``reg``
    ``(B, 4, h, w)`` box offsets ``(dx1, dy1, dx2, dy2)`` as fractions of the window size, with
    ``h = ceil((H - 2) / 2) - 4`` (likewise ``w``). Output cell ``(i, j)`` looks at input rows
    ``2i .. 2i + 11`` and columns ``2j .. 2j + 11``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / non-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        logits = self.conv4_1(x)
        prob = torch.softmax(logits, dim=1)[:, 1]
        return prob, self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24x24 crops.

    ``forward(x)``: ``x`` ``(N, 3, 24, 24)`` normalised crops. Returns ``(prob, reg)``: ``prob``
    ``(N,)`` face probability in ``[0, 1]``, ``reg`` ``(N, 4)`` box offsets ``(dx1, dy1, dx2,
    dy2)`` as fractions of the crop's width/height.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)  # 64 channels x 3 x 3
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe(x)))
        prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return prob, self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: face probability, box offsets and five landmarks.

    ``forward(x)``: ``x`` ``(N, 3, 48, 48)`` normalised crops. Returns ``(prob, reg, marks)``:
    ``prob`` ``(N,)`` in ``[0, 1]``, ``reg`` ``(N, 4)`` box offsets as fractions of the crop
    size, ``marks`` ``(N, 5, 2)`` landmark ``(x, y)`` positions as fractions of the crop's
    width/height (``0`` = left/top edge): left eye, right eye, nose tip, left and right mouth
    corner, left/right as seen in the image.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)  # 128 channels x 3 x 3
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe(x)))
        prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        # The 10 landmark outputs are the five x coordinates followed by the five y coordinates.
        marks = self.dense6_3(x).view(-1, 2, 5).transpose(1, 2)
        return prob, self.dense6_2(x), marks


class MTCNN(nn.Module):
    """The three cascade networks together; loads the merged state dict made by :func:`convert`
    (keys ``pnet.*``, ``rnet.*``, ``onet.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()

    def forward(self, *args: torch.Tensor) -> None:  # pragma: no cover - not a single network
        raise TypeError("MTCNN is a container: call .pnet, .rnet or .onet (or use FaceDetector)")


def convert(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """Model-store converter: ``{member path: bytes of a facenet-pytorch .pt file}`` for the three
    networks -> one state dict with keys prefixed ``pnet.``, ``rnet.``, ``onet.`` (float32).

    Raises ``ValueError`` when a network's file is missing or its keys/shapes do not fit.
    """
    nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    members: dict[str, str] = {}
    for name in nets:
        member = next((m for m in files if m.rsplit("/", 1)[-1] == f"{name}.pt"), None)
        if member is None:
            raise ValueError(f"MTCNN converter: no {name}.pt among {sorted(files)}")
        members[name] = member
    merged: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        member = members[name]
        try:
            state = torch.load(io.BytesIO(files[member]), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"MTCNN converter: {member} is not a readable torch state dict: {exc}") from exc
        expected = net.state_dict()
        if set(state) != set(expected):
            missing = sorted(set(expected) - set(state))
            extra = sorted(set(state) - set(expected))
            raise ValueError(f"MTCNN converter: {member}: missing keys {missing}, unexpected {extra}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"MTCNN converter: {member}: {key} has shape {tuple(value.shape)}, "
                    f"expected {tuple(expected[key].shape)}"
                )
            merged[f"{name}.{key}"] = value.detach().to(torch.float32).clone()
    return merged
