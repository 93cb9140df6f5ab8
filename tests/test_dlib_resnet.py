"""dlib's face-recognition ResNet in torch: the .dat parser, the converter, and parity with dlib
itself on real face chips cut by dlib's own pipeline from the celebrity train photos."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from advprotect.models import registry, store
from advprotect.models.dlib_format import DlibFormatError, _Reader, parse_network
from advprotect.models.dlib_resnet import (
    DLIB_THRESHOLD,
    DlibResNet,
    convert_dat,
    load_dlib_resnet,
)

dlib = pytest.importorskip("dlib")

pytestmark = pytest.mark.slow

CHIPS_PER_PERSON = 5


@pytest.fixture(scope="module")
def dat_path() -> Path:
    return store.extract_file(registry.DLIB_MODELS, registry.DLIB_RESNET_DAT)


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return load_dlib_resnet()


@pytest.fixture(scope="module")
def chips(celebrity_train: dict[str, list[Path]]) -> tuple[np.ndarray, list[str]]:
    """Up to 5 aligned 150x150 chips per person (photos with exactly one detected face), made
    with dlib's detector, 5-point shape predictor and get_face_chip: (N, 150, 150, 3) uint8."""
    shape5 = store.extract_file(registry.DLIB_MODELS, registry.DLIB_SHAPE5_DAT)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(shape5))
    out, labels = [], []
    for person, photos in celebrity_train.items():
        n = 0
        for photo in photos:
            img = dlib.load_rgb_image(str(photo))
            faces = detector(img, 0)
            if len(faces) != 1:
                continue
            shape = predictor(img, faces[0])
            out.append(dlib.get_face_chip(img, shape, size=150, padding=0.25))
            labels.append(person)
            n += 1
            if n == CHIPS_PER_PERSON:
                break
    assert len(out) >= 20, f"only {len(out)} face chips from the train photos"
    return np.stack(out), labels


@pytest.fixture(scope="module")
def descriptors(model: DlibResNet, chips: tuple[np.ndarray, list[str]]) -> torch.Tensor:
    x = torch.from_numpy(chips[0]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- format


def test_primitive_decoding() -> None:
    # dlib ints: control byte (size | 0x80 for negative) + little-endian magnitude.
    r = _Reader(bytes([0x01, 0x05, 0x81, 0x05, 0x02, 0x34, 0x12]))
    assert (r.int(), r.int(), r.int()) == (5, -5, 0x1234)
    # floats: mantissa then exponent; 3 * 2**-1 = 1.5, -1 * 2**3 = -8.
    r = _Reader(bytes([0x01, 0x03, 0x81, 0x01, 0x81, 0x01, 0x01, 0x03]))
    assert (r.float(), r.float()) == (1.5, -8.0)
    r = _Reader(bytes([0x01, 0x03]) + b"abc" + b"10")
    assert (r.string(), r.bool(), r.bool()) == ("abc", True, False)
    with pytest.raises(DlibFormatError, match="unexpected end"):
        _Reader(bytes([0x02, 0x01])).int()


def test_parse_face_recognition_network(dat_path: Path) -> None:
    net = parse_network(dat_path.read_bytes())
    kinds = [layer.kind for layer in net.layers]
    assert len(kinds) == 130
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("tag_or_skip") == 22
    assert kinds[:4] == ["con", "affine", "relu", "max_pool"] and kinds[-1] == "fc"
    assert net.input.attrs["nr"] == net.input.attrs["nc"] == 150
    assert net.input.attrs["avg_red"] == pytest.approx(122.782, abs=1e-4)
    assert net.loss.kind == "loss_metric" and net.loss.attrs["dist_thresh"] == pytest.approx(0.6)
    first = net.layers[0]
    assert first.tensors["weight"].shape == (32, 3, 7, 7) and first.tensors["bias"].shape == (32,)
    assert net.layers[-1].tensors["weight"].shape == (256, 128)
    n_params = sum(t.size for layer in net.layers for t in layer.tensors.values())
    assert 5_500_000 < n_params < 5_700_000
    assert all(np.isfinite(t).all() for layer in net.layers for t in layer.tensors.values())


def test_parse_rejects_bad_data(dat_path: Path) -> None:
    data = dat_path.read_bytes()
    with pytest.raises(ValueError, match="unexpected end"):
        parse_network(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trailing"):
        parse_network(data + b"\x00")
    with pytest.raises(ValueError):
        parse_network(b"not a dlib network")
    with pytest.raises(ValueError, match="exactly one .dat"):
        convert_dat({"a.txt": b""})


# --------------------------------------------------------------------------- module


def test_state_dict_strict(model: DlibResNet, dat_path: Path) -> None:
    state = store.load_state_dict(registry.get("dlib-resnet"))
    fresh = DlibResNet()
    assert set(state) == set(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    direct = convert_dat({registry.DLIB_RESNET_DAT: dat_path.read_bytes()})
    assert all(torch.equal(direct[k], state[k]) for k in state)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.6e6, rel=0.02)


def test_rejects_wrong_input(model: DlibResNet) -> None:
    with pytest.raises(ValueError, match="150"):
        model(torch.zeros(1, 3, 160, 160))
    with pytest.raises(ValueError, match=r"\(B, 3, 150, 150\)"):
        model(torch.zeros(3, 150, 150))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(1, 3, 150, 150, dtype=torch.uint8))


def test_parity_with_dlib(dat_path: Path, chips: tuple[np.ndarray, list[str]],
                          descriptors: torch.Tensor) -> None:
    """The key check: same 128-d descriptors as dlib.face_recognition_model_v1 on every chip."""
    facerec = dlib.face_recognition_model_v1(str(dat_path))
    ref = np.array([np.array(facerec.compute_face_descriptor(chip)) for chip in chips[0]])
    ours = descriptors.double().numpy()
    assert ours.shape == ref.shape == (len(chips[0]), 128)
    err = np.abs(ours - ref).max(axis=1)
    print(f"\ndlib parity over {len(err)} chips: max abs error {err.max():.3g}")
    assert (err < 1e-3).all(), f"per-chip max errors {err}"


def test_pair_accuracy(descriptors: torch.Tensor, chips: tuple[np.ndarray, list[str]]) -> None:
    labels = chips[1]
    d = torch.cdist(descriptors, descriptors)
    same, diff = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        (same if labels[i] == labels[j] else diff).append(d[i, j].item())
    same_t, diff_t = torch.tensor(same), torch.tensor(diff)
    acc_same = (same_t < DLIB_THRESHOLD).float().mean().item()
    acc_diff = (diff_t > DLIB_THRESHOLD).float().mean().item()
    total = ((same_t < DLIB_THRESHOLD).sum() + (diff_t > DLIB_THRESHOLD).sum()).item() / (
        len(same) + len(diff))
    print(f"\npairs at {DLIB_THRESHOLD}: same {acc_same:.3f} of {len(same)}, "
          f"different {acc_diff:.3f} of {len(diff)}, overall {total:.3f}")
    assert same_t.mean() < DLIB_THRESHOLD < diff_t.mean()
    assert acc_same >= 0.8 and acc_diff >= 0.9 and total >= 0.9


def test_gradients_reach_the_input(model: DlibResNet,
                                   chips: tuple[np.ndarray, list[str]]) -> None:
    x = (torch.from_numpy(chips[0][:2]).permute(0, 3, 1, 2).float() / 255.0).requires_grad_()
    target = model(x[1:].detach())
    loss = (model(x[:1]) - target).pow(2).sum()
    loss.backward()
    g = x.grad
    assert g is not None and torch.isfinite(g).all()
    assert g[0].abs().sum() > 0 and g[1].abs().sum() == 0
    assert all(p.grad is None for p in model.parameters())


def test_batch_matches_single(model: DlibResNet, descriptors: torch.Tensor,
                              chips: tuple[np.ndarray, list[str]]) -> None:
    x = torch.from_numpy(chips[0][3:4]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        one = model(x)
    assert torch.allclose(one[0], descriptors[3], atol=1e-5)
