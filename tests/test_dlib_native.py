"""The native dlib black-box verifier (advprotect.faces.dlib_native)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advprotect.faces.dlib_native import DLIB_THRESHOLD, DlibFace, DlibVerifier, to_uint8_rgb

pytestmark = pytest.mark.skipif(not DlibVerifier.available(), reason="dlib-bin is not installed")

#: Photos per person used for the pair test (keeps the test fast on two cores).
PER_PERSON = 7


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def verifier() -> DlibVerifier:
    return DlibVerifier.load()


def test_available_and_conversion() -> None:
    assert DlibVerifier.available() is True
    u8 = np.zeros((4, 5, 3), dtype=np.uint8)
    assert to_uint8_rgb(u8) is not None and to_uint8_rgb(u8).dtype == np.uint8
    t = torch.full((3, 4, 5), 0.5)
    got = to_uint8_rgb(t)
    assert got.shape == (4, 5, 3) and int(got[0, 0, 0]) == 128
    with pytest.raises(ValueError, match="RGB"):
        to_uint8_rgb(np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        to_uint8_rgb(np.zeros((4, 5, 3), dtype=np.int32))


def test_detects_sample_faces(verifier: DlibVerifier, sample_images: Path) -> None:
    descs = {}
    for name in ("obama.jpg", "biden.jpg"):
        img = _rgb(sample_images / name)
        faces = verifier.faces(img)
        assert len(faces) == 1, name
        f = faces[0]
        assert isinstance(f, DlibFace)
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        assert f.shape5.shape == (5, 2) and f.shape5.dtype == np.float64
        assert bool(((f.shape5 >= [x0, y0]) & (f.shape5 <= [x1, y1])).all())
        assert f.descriptor.shape == (128,) and f.descriptor.dtype == np.float64
        assert np.isfinite(f.descriptor).all() and f.score > 0
        # the same pixels given as a float tensor give the same descriptor
        again = verifier.describe_largest(torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255)
        np.testing.assert_allclose(again, f.descriptor, atol=1e-6)
        descs[name] = f.descriptor
    assert verifier.distance(descs["obama.jpg"], descs["biden.jpg"]) > DLIB_THRESHOLD
    assert not verifier.verify(descs["obama.jpg"], descs["biden.jpg"])


def test_blank_image_has_no_faces(verifier: DlibVerifier) -> None:
    blank = np.full((200, 240, 3), 128, dtype=np.uint8)
    assert verifier.faces(blank) == []
    assert verifier.describe_largest(blank) is None


def test_distance_and_verify() -> None:
    a, b = np.zeros(128), np.zeros(128)
    b[0] = 0.59
    assert DlibVerifier.distance(a, b) == pytest.approx(0.59)
    with pytest.raises(ValueError, match="same"):
        DlibVerifier.distance(np.zeros(128), np.zeros(127))
    v = DlibVerifier(None, None, None)
    assert v.verify(a, b) and not v.verify(a, b * 2)
    with pytest.raises(ValueError, match="upsample"):
        DlibVerifier(None, None, None, upsample=-1)


def test_pairs_on_celebrity_train(verifier: DlibVerifier,
                                  celebrity_train: dict[str, list[Path]]) -> None:
    descs: dict[str, list[np.ndarray]] = {}
    for person, photos in celebrity_train.items():
        for path in photos[:PER_PERSON]:
            d = verifier.describe_largest(_rgb(path))
            if d is not None:
                descs.setdefault(person, []).append(d)
    assert len(descs) == 5 and all(len(v) >= 4 for v in descs.values())
    same = [verifier.verify(a, b) for v in descs.values() for a, b in itertools.combinations(v, 2)]
    diff = [not verifier.verify(a, b) for p, q in itertools.combinations(descs, 2)
            for a in descs[p] for b in descs[q]]
    same_acc, diff_acc = float(np.mean(same)), float(np.mean(diff))
    print(f"dlib verifier on celebrity train: same-person pairs accepted {same_acc:.3f} "
          f"({len(same)}), different-person pairs rejected {diff_acc:.3f} ({len(diff)})")
    assert same_acc >= 0.7
    assert diff_acc >= 0.95


def test_detect_max_side_matches_full_resolution(verifier: DlibVerifier, sample_images: Path) -> None:
    img = _rgb(sample_images / "biden.jpg")  # 970 x 2204
    full = verifier.faces(img, upsample=0)
    small = DlibVerifier(verifier._detector, verifier._predictor, verifier._recognizer,
                         detect_max_side=600).faces(img, upsample=0)
    assert len(full) == len(small) == 1
    assert np.abs(np.subtract(full[0].box, small[0].box)).max() <= 0.1 * (full[0].box[2] - full[0].box[0])
    assert DlibVerifier.distance(full[0].descriptor, small[0].descriptor) < 0.15
    with pytest.raises(ValueError, match="detect_max_side"):
        DlibVerifier(None, None, None, detect_max_side=10)
