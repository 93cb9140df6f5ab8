"""The face-recognition model zoo: one registry of every model protection is attacked with or
measured against.

Each entry states its embedding size, input size, alignment template, distance and the
verification thresholds at FAR 1e-2 and 1e-3, calibrated on the impostor pairs of the 5-celebrity
``train/`` photos with ``advprotect models calibrate`` (run it to reproduce the numbers below:
93 photos, faces >= 40 px; facenet128: 83 faces, 2736 impostor pairs, accuracy 0.981 / TAR 0.95 at
FAR 1e-2; dlib-resnet: accuracy 0.983 / TAR 0.96; native dlib: 88 faces, accuracy 0.981 / TAR
0.94).

White-box models are torch modules: ``forward(x: (B,3,S,S) float in [0,1]) -> (B,D)``, input
normalisation inside. ``dlib`` is native dlib-bin with its own detector and chips: a black box that
is never attacked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .store import ModelStoreError


@dataclass(frozen=True)
class FaceModelInfo:
    name: str
    embedding_size: int
    input_size: tuple[int, int]
    template: str
    distance: str  # "cosine" (1 - cos) or "l2"
    thresholds: dict[str, float] = field(hash=False, compare=False)
    loader: str = ""  # "module:function(device) -> nn.Module"; empty for native models
    native: bool = False
    description: str = ""

    @property
    def threshold(self) -> float:
        """The default decision threshold (FAR 1e-2): distance below it means "same person"."""
        return self.thresholds["far1e-2"]


FACE_MODELS: dict[str, FaceModelInfo] = {
    m.name: m
    for m in [
        FaceModelInfo(
            name="facenet128", embedding_size=128, input_size=(160, 160), template="facenet",
            distance="l2",
            # advprotect models calibrate --model facenet128 (celebrity train, impostor pairs)
            thresholds={"far1e-2": 1.1604, "far1e-3": 1.0895},
            loader="advprotect.models.facenet:load_facenet128",
            description="FaceNet Inception-ResNet-v1 (Keras weights), L2 on unit embeddings",
        ),
        FaceModelInfo(
            name="dlib-resnet", embedding_size=128, input_size=(150, 150), template="dlib",
            distance="l2",
            # advprotect models calibrate --models dlib-resnet (MTCNN + our dlib template)
            thresholds={"far1e-2": 0.6647, "far1e-3": 0.6149},
            loader="advprotect.models.dlib_resnet:load_dlib_resnet",
            description="torch port of dlib's ResNet face descriptor (white-box)",
        ),
        FaceModelInfo(
            name="dlib", embedding_size=128, input_size=(150, 150), template="dlib",
            # advprotect models calibrate --models dlib (dlib's own detector and chips); dlib
            # documents 0.6, which sits at FAR 1e-3 on these photos
            distance="l2", thresholds={"far1e-2": 0.6509, "far1e-3": 0.5996}, native=True,
            description="native dlib-bin: own HOG detector, 5-point chips, descriptor; black box",
        ),
    ]
}


def face_model_info(name: str) -> FaceModelInfo:
    try:
        return FACE_MODELS[name]
    except KeyError:
        raise ModelStoreError(
            f"unknown face model {name!r}; known: {', '.join(FACE_MODELS)}"
        ) from None


_LOADED: dict[tuple[str, str], torch.nn.Module] = {}


def load_face_model(name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The torch module of a white-box model, in eval mode, parameters frozen (cached per process)."""
    info = face_model_info(name)
    if info.native:
        raise ValueError(f"{name} is a native black-box model, not a torch module")
    key = (name, str(device))
    if key not in _LOADED:
        mod, _, fn = info.loader.partition(":")
        loader: Callable[..., torch.nn.Module] = getattr(importlib.import_module(mod), fn)
        model = loader(device=device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _LOADED[key] = model
    return _LOADED[key]


def embedding_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise distance between embeddings (N,D) and (N,D) or (D,): "l2" or "cosine" (1 - cos)."""
    if kind == "l2":
        return (a - b).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(a, b.expand_as(a), dim=-1)
    raise ValueError(f"unknown distance {kind!r}: use l2 or cosine")


def threshold_at_far(impostor: torch.Tensor, far: float) -> float:
    """The distance threshold that accepts a fraction ``far`` of impostor pairs."""
    if impostor.numel() == 0:
        raise ValueError("no impostor pairs to calibrate on")
    return float(torch.quantile(impostor.double(), far))
