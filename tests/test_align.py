"""Differentiable face alignment and write-back (advprotect.faces.align / templates)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advprotect.faces import align as A
from advprotect.faces.templates import DLIB, FACENET, TEMPLATES, Template, get_template


def _similarity(scale: float, angle: float, tx: float, ty: float,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return torch.tensor([[c, -s, tx], [s, c, ty]], dtype=dtype)


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def _umeyama_svd(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Reference: Umeyama's SVD solution, written out independently for the test."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    rot = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / (s ** 2).sum(1).mean()
    t = md - scale * rot @ ms
    return np.concatenate([scale * rot, t[:, None]], 1)


# --------------------------------------------------------------------------- similarity

def test_estimate_similarity_recovers_known_transform_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(3, 5, 2, generator=gen, dtype=torch.float64) * 200
    truth = torch.stack([_similarity(0.7, 0.3, 12.0, -5.0), _similarity(2.5, -1.2, -40.0, 3.0),
                         _similarity(1.0, math.pi, 0.0, 0.0)])
    dst = A.apply_affine(truth, src)
    got = A.estimate_similarity(src, dst)
    assert got.shape == (3, 2, 3)
    torch.testing.assert_close(got, truth, rtol=0, atol=1e-10)
    # a shared (K, 2) destination broadcasts over the batch
    shared = A.estimate_similarity(src, dst[1])
    torch.testing.assert_close(A.apply_affine(shared[1:2], src[1]), dst[1:2], rtol=0, atol=1e-9)
    # the template's own points map onto themselves
    pts = DLIB.tensor(torch.float64)
    torch.testing.assert_close(A.estimate_similarity(pts, pts)[0], _similarity(1, 0, 0, 0), atol=1e-12, rtol=0)


def test_estimate_similarity_is_least_squares_umeyama() -> None:
    gen = torch.Generator().manual_seed(1)
    src = torch.rand(4, 5, 2, generator=gen, dtype=torch.float64) * 100
    dst = A.apply_affine(_similarity(1.3, 0.4, 5, 7), src) + torch.randn(4, 5, 2, generator=gen, dtype=torch.float64) * 3
    got = A.estimate_similarity(src, dst)
    for i in range(4):
        ref = _umeyama_svd(src[i].numpy(), dst[i].numpy())
        np.testing.assert_allclose(got[i].numpy(), ref, atol=1e-9)
    # any other similarity fits worse: nudge scale*cos, scale*sin, tx, ty
    res = (A.apply_affine(got, src) - dst).pow(2).sum()
    for idx, sign in (([(0, 0), (1, 1)], (1, 1)), ([(1, 0), (0, 1)], (1, -1)), ([(0, 2)], (1,)), ([(1, 2)], (1,))):
        for step in (1e-3, -1e-3):
            bumped = got.clone()
            for (r, c), sg in zip(idx, sign):
                bumped[:, r, c] += sg * step
            assert (A.apply_affine(bumped, src) - dst).pow(2).sum() > res


def test_estimate_similarity_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="coincide"):
        A.estimate_similarity(torch.ones(5, 2), torch.rand(5, 2))
    with pytest.raises(ValueError, match="dst"):
        A.estimate_similarity(torch.rand(2, 5, 2), torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match="points"):
        A.estimate_similarity(torch.rand(5, 3), torch.rand(5, 2))
    with pytest.raises(ValueError, match="at least two"):
        A.estimate_similarity(torch.rand(1, 2), torch.rand(1, 2))


def test_invert_affine_round_trip() -> None:
    m = torch.stack([_similarity(0.3, 2.0, 10, 20), _similarity(4.0, -0.5, -3, 1)])
    pts = torch.rand(7, 2, dtype=torch.float64) * 50
    back = A.apply_affine(A.invert_affine(m), A.apply_affine(m, pts))
    torch.testing.assert_close(back, pts.expand(2, -1, -1), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="singular"):
        A.invert_affine(torch.zeros(2, 3))


# --------------------------------------------------------------------------- templates

def test_templates_are_sane() -> None:
    assert set(TEMPLATES) == {"facenet", "dlib"}
    assert get_template("dlib") is DLIB and FACENET.size == (160, 160) and DLIB.size == (150, 150)
    for t in TEMPLATES.values():
        p = t.tensor()
        assert p.shape == (5, 2)
        assert bool((p >= 0).all()) and bool((p[:, 0] < t.size[1]).all()) and bool((p[:, 1] < t.size[0]).all())
        le, re, nose, ml, mr = p
        assert le[0] < nose[0] < re[0] and ml[0] < mr[0]      # left/right as seen in the image
        assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])  # eyes, then nose, then mouth
    big = DLIB.resized(300)
    assert big.size == (300, 300)
    torch.testing.assert_close((big.tensor() + 0.5) / 2, DLIB.tensor() + 0.5)
    with pytest.raises(ValueError, match="unknown alignment template"):
        get_template("arcface")
    with pytest.raises(ValueError, match="five"):
        Template("x", (10, 10), ((1, 2),))


# --------------------------------------------------------------------------- ROI

def test_face_roi_box_landmarks_and_template_footprint() -> None:
    assert A.face_roi([10.2, 20.7, 50.0, 60.0], (100, 100), margin=0.0) == (10, 20, 51, 61)
    x0, y0, x1, y1 = A.face_roi(torch.tensor([40.0, 40.0, 60.0, 60.0]), (100, 200), margin=0.5)
    assert (x0, y0, x1, y1) == (30, 30, 71, 71)
    # clipped to the photo
    assert A.face_roi([-30.0, -10.0, 50.0, 40.0], (60, 80), margin=0.25) == (0, 0, 71, 60)
    # the template footprint: every crop corner lies inside the ROI
    lm = A.apply_affine(A.invert_affine(_similarity(0.5, 0.2, -100, -80)), DLIB.tensor(torch.float64))[0]
    roi = A.face_roi(lm, (2000, 2000), margin=0.0, template=DLIB)
    corners = A.crop_footprint(lm, DLIB)
    assert bool((corners[:, 0] >= roi[0]).all() and (corners[:, 0] <= roi[2]).all())
    assert bool((corners[:, 1] >= roi[1]).all() and (corners[:, 1] <= roi[3]).all())
    with pytest.raises(ValueError, match="outside"):
        A.face_roi([200.0, 200.0, 300.0, 300.0], (100, 100))
    with pytest.raises(ValueError, match="margin"):
        A.face_roi([0.0, 0.0, 1.0, 1.0], (100, 100), margin=-1)
    with pytest.raises(ValueError, match="landmarks"):
        A.face_roi([0.0, 0.0, 10.0, 10.0], (100, 100), template=DLIB)


# --------------------------------------------------------------------------- align

def test_align_identity_batch_and_list() -> None:
    gen = torch.Generator().manual_seed(2)
    roi = torch.rand(2, 3, 20, 20, generator=gen)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    torch.testing.assert_close(A.align(roi, eye, 20), roi)
    # a list of different sizes gives the same crops as one-by-one calls
    rois = [torch.rand(3, 30, 40, generator=gen), torch.rand(3, 64, 50, generator=gen)]
    mats = torch.stack([_similarity(0.5, 0.1, 1, 2, torch.float32), _similarity(0.3, -0.2, 3, 4, torch.float32)])
    out = A.align(rois, mats, (16, 12))
    assert out.shape == (2, 3, 16, 12)
    for i in range(2):
        torch.testing.assert_close(out[i:i + 1], A.align(rois[i][None], mats[i], (16, 12)))
    with pytest.raises(ValueError, match="matrices"):
        A.align(rois, mats[:1], 16)
    with pytest.raises(ValueError, match="roi"):
        A.align(torch.rand(3, 4), mats[:1], 16)


@pytest.mark.parametrize("antialias", [False, True])
def test_align_gradcheck(antialias: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    roi = torch.rand(1, 2, 14, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    # scale 0.35: with antialias this goes through one pyramid level
    m = _similarity(0.35, 0.25, 1.5, 0.7)[None]
    assert torch.autograd.gradcheck(lambda r: A.align(r, m, 5, antialias=antialias), (roi,), fast_mode=antialias)
    rois = [torch.rand(1, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.rand(1, 12, 8, generator=gen, dtype=torch.float64, requires_grad=True)]
    mats = torch.stack([_similarity(0.9, 0.1, 0.2, 0.3), _similarity(0.4, -0.3, 1.0, 2.0)])
    assert torch.autograd.gradcheck(lambda a, b: A.align([a, b], mats, 5, antialias=antialias), tuple(rois),
                                    fast_mode=True)


def test_antialias_removes_aliasing_and_reaches_every_pixel() -> None:
    # a 1-px checkerboard seen at 1/8 scale: its true local mean is 0.5 everywhere
    n = 320
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    board = ((xx + yy) % 2).float().expand(1, 3, n, n).contiguous().requires_grad_(True)
    m = _similarity(1 / 8, 0.3, 20, -15, torch.float32)[None]
    m[0, :, 2] += torch.tensor([20.0, 20.0]) - A.apply_affine(m, torch.tensor([[n / 2, n / 2]]))[0, 0]
    plain = A.align(board, m, 40)
    smooth = A.align(board, m, 40, antialias=True)
    inner = (slice(None), slice(None), slice(10, 30), slice(10, 30))
    assert float((smooth.detach()[inner] - 0.5).abs().max()) < 0.02
    assert float((plain.detach()[inner] - 0.5).abs().mean()) > 0.1
    smooth.sum().backward()
    grad = board.grad[0, 0]
    # every ROI pixel of the central region the crop covers receives gradient
    assert bool((grad[140:180, 140:180] > 0).all())
    board.grad = None
    A.align(board, m, 40).sum().backward()
    assert float((board.grad[0, 0, 140:180, 140:180] == 0).float().mean()) > 0.5


# --------------------------------------------------------------------------- mask, paste, round trip

def test_feather_mask_shape_range_and_support() -> None:
    m = _similarity(0.5, 0.3, -10, -5, torch.float32)[None]
    mask = A.feather_mask((200, 220), m, 64, feather=0.1)
    assert mask.shape == (1, 200, 220)
    assert float(mask.min()) == 0.0 and float(mask.max()) <= 1.0
    inv = A.invert_affine(m)
    centre = A.apply_affine(inv, torch.tensor([[31.5, 31.5]]))[0, 0].round().long()
    assert float(mask[0, centre[1], centre[0]]) == pytest.approx(1.0)
    # zero wherever the ROI pixel maps outside the crop
    yy, xx = torch.meshgrid(torch.arange(200.0), torch.arange(220.0), indexing="ij")
    crop_xy = A.apply_affine(m, torch.stack([xx, yy], -1).reshape(-1, 2))[0].reshape(200, 220, 2)
    outside = (crop_xy < -0.5).any(-1) | (crop_xy > 63.5).any(-1)
    assert bool((mask[0][outside] == 0).all())
    # smooth: neighbouring pixels differ by little compared to a hard edge
    assert float(mask.diff(dim=-1).abs().max()) < 0.2
    with pytest.raises(ValueError, match="feather"):
        A.feather_mask((10, 10), m, 64, feather=0.8)


def test_paste_does_not_mutate_and_checks_shapes() -> None:
    photo = torch.rand(3, 40, 50)
    before = photo.clone()
    out = A.paste(photo, (10, 5, 30, 25), torch.zeros(3, 20, 20))
    assert torch.equal(photo, before)
    assert float(out[:, 5:25, 10:30].abs().max()) == 0.0
    outside = torch.ones(40, 50, dtype=torch.bool)
    outside[5:25, 10:30] = False
    assert torch.equal(out[:, outside], photo[:, outside])
    half = torch.full((1, 20, 20), 0.5)
    blended = A.paste(photo, (10, 5, 30, 25), torch.ones(3, 20, 20), mask=half)
    torch.testing.assert_close(blended[:, 5:25, 10:30], photo[:, 5:25, 10:30] * 0.5 + 0.5)
    with pytest.raises(ValueError, match="roi_pixels"):
        A.paste(photo, (10, 5, 30, 25), torch.zeros(3, 20, 21))
    with pytest.raises(ValueError, match="inside"):
        A.paste(photo, (40, 5, 60, 25), torch.zeros(3, 20, 20))


def test_crop_space_attack_maps_back_into_the_photo(sample_images: Path) -> None:
    photo = _load(sample_images / "astronaut.png")  # (3, 512, 512)
    before = photo.clone()
    # put a face-sized template footprint onto the photo (crop 150 px <- ~120 photo px)
    lm = A.apply_affine(A.invert_affine(_similarity(1.25, 0.15, -250, -100)), DLIB.tensor(torch.float64))[0]
    face = A.FaceWarp.build(lm, photo.shape[-2:], DLIB, margin=0.05, feather=0.1)
    roi = A.cut_roi(photo, face.roi_box)
    mask = face.mask
    delta = torch.zeros_like(roi, requires_grad=True)
    eps, start = 8 / 255, float(face.crop(roi).mean())
    for _ in range(5):
        crop = face.crop((roi + mask * delta).clamp(0, 1))
        (-crop.mean()).backward()
        with torch.no_grad():
            delta -= 2 / 255 * delta.grad.sign()  # descend on -brightness
            delta.clamp_(-eps, eps)
        delta.grad = None
    with torch.no_grad():
        new_roi = (roi + mask * delta).clamp(0, 1)
        out = A.paste(photo, face.roi_box, new_roi)
        brighter = float(face.crop(A.cut_roi(out, face.roi_box)).mean())
    assert torch.equal(photo, before)                         # input untouched
    assert brighter > start + 3 / 255                          # the crop got brighter
    x0, y0, x1, y1 = face.roi_box
    outside = torch.ones(photo.shape[-2:], dtype=torch.bool)
    outside[y0:y1, x0:x1] = mask[0] == 0
    assert torch.equal(out[:, outside], photo[:, outside])     # bit-identical outside the mask
    changed = (out != photo).any(0)
    assert float(changed.sum()) > 0.5 * float((mask[0] > 0.5).sum())
    assert float((out - photo).abs().max()) <= eps + 1e-6


# --------------------------------------------------------------------------- dlib chips

dlib = pytest.importorskip("dlib")


def _dlib_chip_matrix(details: dlib.chip_details) -> torch.Tensor:
    """Image -> chip matrix (1, 2, 3) of dlib's chip_details."""
    from advprotect.faces.dlib_native import chip_matrix

    return torch.from_numpy(chip_matrix(details))[None]


@pytest.fixture(scope="module")
def dlib_faces(sample_images: Path) -> list[tuple[torch.Tensor, np.ndarray, dlib.full_object_detection]]:
    from advprotect.models import registry, store

    sp = dlib.shape_predictor(str(store.extract_file(registry.DLIB_MODELS, registry.DLIB_SHAPE5_DAT)))
    det = dlib.get_frontal_face_detector()
    out = []
    for name in ("obama.jpg", "biden.jpg"):
        img = np.asarray(Image.open(sample_images / name).convert("RGB"))
        rect = max(det(img, 0), key=lambda r: r.area())
        out.append((torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255, img, sp(img, rect)))
    return out


def test_align_reproduces_dlib_chip_with_dlib_transform(dlib_faces) -> None:
    """The warp itself (given dlib's exact chip transform) matches dlib.get_face_chip."""
    for x, img, shape in dlib_faces:
        m = _dlib_chip_matrix(dlib.get_face_chip_details(shape, 150, 0.25)).float()
        chip = torch.from_numpy(dlib.get_face_chip(img, shape, 150, 0.25)).permute(2, 0, 1).float() / 255
        mine = A.align(x, m, 150, antialias=True)[0]
        mad = float((mine - chip).abs().mean()) * 255
        print(f"dlib chip, exact transform: mean |diff| {mad:.2f} / 255")
        assert mad < 3.0


def test_dlib_template_reproduces_dlib_chip_from_mtcnn_landmarks(dlib_faces) -> None:
    """With MTCNN's landmarks and the dlib template, the aligned crop is close to dlib's chip."""
    detect = pytest.importorskip("advprotect.faces.detect")
    from advprotect.models.store import ModelStoreError

    try:
        detector = detect.FaceDetector.load("cpu")
    except ModelStoreError as exc:  # pragma: no cover - model store unavailable
        pytest.skip(f"MTCNN unavailable: {exc}")
    for x, img, shape in dlib_faces:
        found = detector.detect([x])[0]
        assert len(found) >= 1
        lm = A.from_detector_coords(found.landmarks[0])
        face = A.FaceWarp.build(lm, x.shape[-2:], DLIB)
        mine = face.crop(A.cut_roi(x, face.roi_box))[0]
        chip = torch.from_numpy(dlib.get_face_chip(img, shape, 150, 0.25)).permute(2, 0, 1).float() / 255
        mad = float((mine - chip).abs().mean()) * 255
        # geometric error: where each chip puts dlib's own five landmarks, in chip pixels
        pts = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float64)
        exact = A.apply_affine(_dlib_chip_matrix(dlib.get_face_chip_details(shape, 150, 0.25)), pts)
        ours = A.apply_affine(face.matrix.double(), A.landmarks_in_roi(pts, face.roi_box))
        err = float((exact - ours).norm(dim=-1).mean())
        print(f"dlib chip from MTCNN landmarks + template: mean |diff| {mad:.2f} / 255, "
              f"landmark offset {err:.1f} chip px")
        assert mad < 25.0
        assert err < 8.0
