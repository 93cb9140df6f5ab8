"""MTCNN face detection: weights, detection rate on real photos, landmarks against dlib,
extreme image sizes, batching, parameter checks."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from advprotect.faces import detect as detect_mod
from advprotect.faces.detect import Detections, FaceDetector, nms
from advprotect.models import registry, store
from advprotect.models.mtcnn import MEMBERS, MTCNN, convert

pytestmark = pytest.mark.slow


def _load(path: Path) -> torch.Tensor:
    """(3, H, W) float RGB in [0, 1]."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    lt = torch.maximum(a[:2], b[:2])
    rb = torch.minimum(a[2:], b[2:])
    inter = (rb - lt).clamp(min=0).prod()
    area = lambda x: (x[2:] - x[:2]).prod()
    return float(inter / (area(a) + area(b) - inter))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module: MTCNN runs many small tensors, which gain little
    from a second thread, and on a busy shared machine OpenMP waiting made this file 3-4x
    slower (about 100 s instead of 25 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector.load()


@pytest.fixture(scope="module")
def small_face_detector() -> FaceDetector:
    """min_face=20: the celebrity set has full-length shots whose faces are 20-30 px."""
    return FaceDetector.load(min_face=20)


@pytest.fixture(scope="module")
def samples(sample_images: Path) -> dict[str, torch.Tensor]:
    return {n: _load(sample_images / n) for n in ("astronaut.png", "obama.jpg", "biden.jpg")}


@pytest.fixture(scope="module")
def celebrity_results(celebrity_train, small_face_detector):
    paths = [p for person in sorted(celebrity_train) for p in celebrity_train[person]]
    images = [_load(p) for p in paths]
    return paths, small_face_detector.detect(images)  # all sizes in one call


# --------------------------------------------------------------------------- weights

def test_weights_load_every_key():
    raw_dist = store.fetch_distribution(registry.FACENET_PYTORCH)
    files = {m: store.read_member(raw_dist, m) for m in MEMBERS.values()}
    state = convert(files)
    net = MTCNN()
    result = net.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(state) == set(net.state_dict())
    for name in ("pnet", "rnet", "onet"):  # every original tensor kept, unchanged
        orig = torch.load(io.BytesIO(files[MEMBERS[name]]), weights_only=True)
        assert len(orig) == sum(k.startswith(name + ".") for k in state)
        for k, v in orig.items():
            assert torch.equal(state[f"{name}.{k}"], v.float())
    # the store's cached copy is the same state dict
    cached = store.load_state_dict(registry.get("mtcnn"))
    assert set(cached) == set(state) and all(torch.equal(cached[k], state[k]) for k in state)


def test_convert_rejects_missing_member():
    with pytest.raises(ValueError, match="onet"):
        convert({"facenet_pytorch/data/pnet.pt": b"", "facenet_pytorch/data/rnet.pt": b""})


# --------------------------------------------------------------------------- detection

def test_celebrity_detection_rate(celebrity_results):
    paths, results = celebrity_results
    found = [len(r) > 0 for r in results]
    rate = sum(found) / len(found)
    missed = [f"{p.parent.name}/{p.name}" for p, f in zip(paths, found) if not f]
    print(f"\nMTCNN (min_face=20) found a face in {sum(found)}/{len(found)} = {rate:.1%} "
          f"of the celebrity train photos; missed: {missed}")
    assert len(found) >= 80
    assert rate >= 0.98
    for r in results:
        if len(r):
            assert torch.all(r.scores[:-1] >= r.scores[1:])  # sorted by score
            assert r.scores.min() >= 0.7 and r.scores.max() <= 1.0


@pytest.mark.parametrize("name", ["astronaut.png", "obama.jpg", "biden.jpg"])
def test_sample_faces(detector, samples, name):
    img = samples[name]
    (res,) = detector.detect([img])
    assert len(res) == 1, f"{name}: expected one face, got {len(res)}"
    box, lm = res.boxes[0], res.landmarks[0]
    assert res.boxes.shape == (1, 4) and res.scores.shape == (1,) and res.landmarks.shape == (1, 5, 2)
    assert res.boxes.dtype == torch.float32 and res.scores[0] > 0.99
    w, h = box[2] - box[0], box[3] - box[1]
    assert 0.05 * img.shape[2] < w < img.shape[2] and 0.5 < h / w < 2
    # landmarks inside the box and in anatomical order
    assert torch.all(lm[:, 0] > box[0]) and torch.all(lm[:, 0] < box[2])
    assert torch.all(lm[:, 1] > box[1]) and torch.all(lm[:, 1] < box[3])
    assert lm[0, 0] < lm[2, 0] < lm[1, 0]  # left eye, nose, right eye
    assert lm[3, 0] < lm[4, 0]  # mouth corners left to right
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])  # eyes, nose, mouth


def test_results_are_plain_tensors(detector, samples):
    (res,) = detector.detect(samples["astronaut.png"])  # a single (3, H, W) image
    assert not res.boxes.is_inference() and not res.landmarks.is_inference()
    x = torch.ones(2, requires_grad=True)
    (x * res.boxes[0, :2]).sum().backward()  # usable as constants in autograd code
    assert torch.equal(x.grad, res.boxes[0, :2])


def test_mirror_consistency(detector, samples):
    """Flipping the image flips the face: its left eye becomes the mirrored right eye."""
    img = samples["obama.jpg"]
    width = img.shape[2]
    a, b = detector.detect(torch.stack([img, img.flip(-1)]))
    mirror = b.landmarks[0].clone()
    mirror[:, 0] = width - mirror[:, 0]
    mirror = mirror[[1, 0, 2, 4, 3]]  # swap left/right points
    iod = (a.landmarks[0, 1] - a.landmarks[0, 0]).norm()
    assert (mirror - a.landmarks[0]).norm(dim=1).max() < 0.1 * iod


def _dlib_eye_centres(dlib_mod, detector_d, predictor, rgb: np.ndarray) -> list[np.ndarray]:
    """dlib 5-point landmarks -> per face the (2, 2) eye centres (mid-corner), image-left first."""
    out = []
    for rect in detector_d(rgb, 1):
        shape = predictor(rgb, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
        eyes = sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda e: e[0])
        out.append(np.stack(eyes))
    return out


def test_landmarks_match_dlib(celebrity_results, detector, samples, sample_images):
    dlib = pytest.importorskip("dlib")
    d_det = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(store.extract_file(registry.DLIB_MODELS, registry.DLIB_SHAPE5_DAT)))
    paths, results = celebrity_results
    pairs = list(zip(paths, results))
    pairs += [(sample_images / n, r) for n, r in zip(samples, detector.detect(list(samples.values())))]
    norm_err, px_err = [], []
    for path, res in pairs:
        if not len(res):
            continue
        rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        ours = res.landmarks[:, :2].numpy().astype(np.float64)  # (N, 2, 2) eyes
        for eyes in _dlib_eye_centres(dlib, d_det, predictor, rgb):
            k = int(np.argmin(np.linalg.norm(ours.mean(1) - eyes.mean(0), axis=1)))
            iod = np.linalg.norm(eyes[1] - eyes[0])
            err = np.linalg.norm(ours[k] - eyes, axis=1)  # left, right eye
            if err.mean() > iod:  # dlib found a face MTCNN did not: not a landmark comparison
                continue
            px_err.extend(err.tolist())
            norm_err.append(err.mean() / iod)
    norm_err, px_err = np.array(norm_err), np.array(px_err)
    print(f"\nMTCNN eye centres vs dlib 5-point (mid-corner) on {len(norm_err)} faces: "
          f"normalised error mean {norm_err.mean():.3f} median {np.median(norm_err):.3f} "
          f"p90 {np.percentile(norm_err, 90):.3f}; pixel error mean {px_err.mean():.2f} "
          f"median {np.median(px_err):.2f} max {px_err.max():.1f}")
    assert len(norm_err) >= 80
    assert norm_err.mean() < 0.1
    assert np.median(norm_err) < 0.08
    assert np.mean(norm_err < 0.15) > 0.9


# --------------------------------------------------------------------------- sizes

def test_huge_and_tiny_photos(detector, samples):
    img = samples["obama.jpg"]
    (ref,) = detector.detect([img])
    h, w = img.shape[1:]
    # ~6000 px longest side
    big_h, big_w = 6000, round(6000 * w / h)
    big = F.interpolate(img[None], size=(big_h, big_w), mode="bilinear", align_corners=False)[0]
    (res,) = detector.detect([big.clamp_(0, 1)])
    del big
    s = big_h / h
    assert len(res) == 1 and res.scores[0] > 0.99
    assert _iou(res.boxes[0] / s, ref.boxes[0]) > 0.9
    iod = (ref.landmarks[0, 1] - ref.landmarks[0, 0]).norm()
    assert (res.landmarks[0] / s - ref.landmarks[0]).norm(dim=1).max() < 0.1 * iod
    # ~100 px longest side: the face is ~25 px, so search from 20 px
    small = F.interpolate(img[None], size=(100, round(100 * w / h)), mode="bilinear",
                          antialias=True, align_corners=False)[0].clamp(0, 1)
    (res,) = FaceDetector(detector.net, min_face=20).detect([small])
    s = 100 / h
    assert len(res) == 1 and res.scores[0] > 0.9
    assert _iou(res.boxes[0] / s, ref.boxes[0]) > 0.7


def test_no_faces(detector):
    blank = torch.zeros(3, 480, 640)
    grey = torch.full((3, 300, 200), 0.5)
    tiny = torch.rand(3, 10, 10)  # smaller than P-Net's window
    out = detector.detect([blank, grey, tiny])
    assert [len(d) for d in out] == [0, 0, 0]
    assert out[0].boxes.shape == (0, 4) and out[0].landmarks.shape == (0, 5, 2)
    assert detector.detect([]) == []


def test_min_face_filter(samples, detector):
    img = samples["astronaut.png"]  # her face box is ~116 px high

    def sides(d: Detections) -> torch.Tensor:
        return torch.maximum(d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1])

    for min_face in (100, 120):
        strict = FaceDetector(detector.net, min_face=min_face)
        loose = FaceDetector(detector.net, min_face=min_face, enforce_min_face=False)
        (a,), (b,) = strict.detect([img]), loose.detect([img])
        assert torch.all(sides(a) >= min_face) and len(b) == 1
        assert len(a) == (1 if min_face == 100 else 0)  # at 120 only the filter drops it


# --------------------------------------------------------------------------- batching

def _assert_same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.landmarks, b.landmarks, atol=1e-2, rtol=0)


def test_batched_equals_one_by_one(detector, samples, fr_images):
    images = list(samples.values()) + [_load(fr_images / "obama_partial_face.jpg"),
                                       _load(fr_images / "obama2.jpg"), torch.zeros(3, 64, 64)]
    images.insert(3, samples["obama.jpg"].clone())  # same size as [1]: P-Net runs them as a batch
    batched = detector.detect(images)
    single = [detector.detect([im])[0] for im in images]
    assert [len(d) for d in batched][-1] == 0 and sum(len(d) for d in batched) >= 5
    for a, b in zip(batched, single):
        _assert_same(a, b)
    # a (B, 3, H, W) batch of one size
    obama = samples["obama.jpg"]
    stack = torch.stack([obama, obama.flip(-1), obama.flip(-2), obama])
    for a, b in zip(detector.detect(stack), [detector.detect(x)[0] for x in stack]):
        _assert_same(a, b)


def test_pnet_strips_equal_one_pass(detector, samples, monkeypatch):
    x = detect_mod.normalise(samples["biden.jpg"][None, :, :301, :257])
    with torch.inference_mode():
        prob, reg = detector.net.pnet(x)
        monkeypatch.setattr(detect_mod, "_PNET_STRIP_PIXELS", 257 * 40)  # 40-row strips
        prob_t, reg_t = detector._pnet(detector.net, x)
    assert prob_t.shape == prob.shape and reg_t.shape == reg.shape
    torch.testing.assert_close(prob_t, prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(reg_t, reg, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- nms and checks

def test_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 8, 8],
                          [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.8, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]  # [0] and [4] overlap [1] by IoU > 0.5
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [1, 2]  # [3] lies inside [1]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 3, 2]  # [4] duplicates [0]
    # blocked processing gives the same answer as one block
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 200
    many = torch.cat([xy, xy + 5 + torch.rand(500, 2, generator=g) * 40], dim=1)
    sc = torch.rand(500, generator=g)
    assert torch.equal(nms(many, sc, 0.3, block=37), nms(many, sc, 0.3, block=4096))
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    # groups: boxes of different groups never suppress each other; each group as if alone
    groups = torch.tensor([0, 1, 0, 1, 0])
    kept = nms(boxes, scores, 0.5, groups=groups).tolist()
    assert kept == [1, 0, 3, 2]
    for g in (0, 1):
        sel = (groups == g).nonzero().squeeze(1)
        alone = sel[nms(boxes[sel], scores[sel], 0.5)].tolist()
        assert [k for k in kept if groups[k] == g] == alone


def test_bad_parameters(detector):
    net = detector.net
    for kwargs in ({"min_face": 5}, {"min_face": float("nan")}, {"thresholds": (0.6, 0.7)},
                   {"thresholds": (0.6, 0.7, 1.2)}, {"factor": 1.0}, {"factor": 0.0}):
        with pytest.raises(ValueError):
            FaceDetector(net, **kwargs)
    with pytest.raises(ValueError, match="3, H, W"):
        detector.detect([torch.rand(1, 50, 50)])
    with pytest.raises(ValueError, match="float"):
        detector.detect([torch.zeros(3, 50, 50, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detector.detect([torch.rand(3, 50, 50) * 255])
    with pytest.raises(ValueError):
        detector.detect(torch.rand(50, 50))
    with pytest.raises(ValueError, match="mode"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5, mode="max")
    assert math.isclose(detector.factor, 0.709) and detector.thresholds == (0.6, 0.7, 0.7)
