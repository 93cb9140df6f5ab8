"""The classifiers a K-anonymity protection is computed against (paper 003 needs white-box logits).

Three kinds, one interface (:class:`Classifier`):

* ``imagenet``: EfficientNet-Lite0 (:mod:`advprotect.models.efficientnet_lite`), 1000 ImageNet
  classes; the whole photo is resized to 224 x 224 (bicubic, antialiased, differentiable) and
  normalised inside the network. Class names are not shipped: labels are class indices 0..999.
* ``faces``: face identification over a gallery folder (one subfolder per identity). The largest
  face of a photo is found by MTCNN, aligned (differentiable similarity warp) and embedded with a
  white-box face model (default FaceNet); its logits are ``scale * cos(embedding, mean_c)`` with
  ``mean_c`` the mean of the L2-normalised embeddings of identity ``c``'s gallery photos (cached).
  The attack works on the face's region of interest and only inside the face crop (feathered
  mask), like ``protect-faces``.
* a path: a TorchScript classifier ``(B, 3, S, S) -> (B, C)`` with the given input size and
  normalisation ``(x - mean) / std`` (x in [0, 1]).

A :class:`Sample` is what an attack perturbs for one photo: ``x`` ``(3, h, w)`` in [0, 1], an
optional budget mask ``(1, h, w)`` in [0, 1] and classifier-specific context.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CLASSIFIER_KINDS",
    "Classifier",
    "FaceGalleryClassifier",
    "ImageClassifier",
    "Sample",
    "load_classifier",
]

CLASSIFIER_KINDS = ("faces", "imagenet")


@dataclass
class Sample:
    """One photo's attackable region (see module docstring)."""

    photo: int  #: index of the photo in the list given to ``prepare``
    x: Tensor  #: (3, h, w) in [0, 1]: what the attack perturbs
    mask: Tensor | None = None  #: (1, h, w) in [0, 1]: budget multiplier, None = whole image
    context: Any = None  #: classifier-specific (a face job)
    info: dict = field(default_factory=dict)  #: JSON-able facts for the report


class Classifier:
    """Interface of the k-anon classifiers.

    ``name``; ``num_classes``; ``label_names`` (list or None); ``prepare(photos) -> (samples,
    reasons)`` (``reasons[photo] = why no sample``); ``batch_logits(samples) -> fn`` mapping a
    stacked batch ``(B, 3, H, W)`` of those samples' regions to ``(B, C)`` logits;
    ``stack(samples) -> (B, 3, H, W)``; ``compose(photo, sample, region_adv, eps) -> photo'``;
    ``region_of(photo, sample) -> (3, h, w)`` (the same region cut from another version of the
    photo); ``classify(photo) -> (C,) logits or None`` (a fresh analysis, as a third party would
    run it).
    """

    name: str = "classifier"
    region_is_photo: bool = True  #: the attacked region is the whole photo at full resolution
    num_classes: int = 0
    label_names: list[str] | None = None
    device: torch.device = torch.device("cpu")

    # ---- labels
    def label_index(self, label: str | int) -> int:
        """Class index of ``label`` (an index, or a name when the classifier has names)."""
        text = str(label).strip()
        if self.label_names is not None and text in self.label_names:
            return self.label_names.index(text)
        try:
            idx = int(text)
        except ValueError:
            known = f"; known: {', '.join(self.label_names)}" if self.label_names else ""
            raise ValueError(f"unknown label {text!r} for classifier {self.name}{known}") from None
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"label {idx} out of range for classifier {self.name} ({self.num_classes} classes)")
        return idx

    def label_name(self, idx: int) -> str:
        return self.label_names[idx] if self.label_names is not None else str(int(idx))

    # ---- defaults for whole-image classifiers
    def prepare(self, photos: Sequence[Tensor]) -> tuple[list[Sample], dict[int, str]]:
        return [Sample(i, p.to(self.device, torch.float32)) for i, p in enumerate(photos)], {}

    def stack(self, samples: Sequence[Sample]) -> Tensor:
        shapes = {tuple(s.x.shape) for s in samples}
        if len(shapes) != 1:
            raise ValueError(f"samples of a batch must share one shape, got {sorted(shapes)}")
        return torch.stack([s.x for s in samples])

    def batch_logits(self, samples: Sequence[Sample]) -> Callable[[Tensor], Tensor]:
        return self.logits

    def attack_logits(self, samples: Sequence[Sample]) -> Callable[[Tensor], Tensor]:
        """The (possibly randomised) logits the attack differentiates; default: ``batch_logits``."""
        return self.batch_logits(samples)

    def check_logits(self, samples: Sequence[Sample]) -> list[Callable[[Tensor], Tensor]]:
        """Deterministic logits the ranking constraint must hold under (all of them)."""
        return [self.batch_logits(samples)]

    def logits(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def compose(self, photo: Tensor, sample: Sample, region_adv: Tensor, eps: float) -> Tensor:
        return region_adv.to(photo.device, photo.dtype).clamp(0, 1)

    def region_of(self, photo: Tensor, sample: Sample) -> Tensor:
        return photo.to(self.device, torch.float32)

    @torch.no_grad()
    def classify(self, photo: Tensor) -> Tensor | None:
        return self.logits(photo.to(self.device, torch.float32)[None])[0]


class ImageClassifier(Classifier):
    """A whole-image classifier: resize to ``input_size`` then ``(x - mean) / std`` then ``model``.

    Args:
        model: ``(B, 3, S, S) -> (B, C)``; parameters are frozen here.
        input_size: ``(height, width)`` the model expects.
        mean, std: per-channel normalisation (None: none, the model normalises itself).
        resize: interpolation mode (``bicubic`` or ``bilinear``; antialiased when shrinking).
        name: for reports.
    """

    def __init__(self, model: torch.nn.Module, input_size: tuple[int, int], *, mean=None, std=None,
                 resize: str = "bicubic", name: str = "classifier", device: torch.device | str = "cpu",
                 num_classes: int | None = None) -> None:
        self.model = model.eval()
        for p in getattr(model, "parameters", list)():
            p.requires_grad_(False)
        self.device = torch.device(device)
        h, w = (int(input_size[0]), int(input_size[1]))
        if h < 8 or w < 8:
            raise ValueError(f"input size must be at least 8 x 8, got {h} x {w}")
        self.input_size = (h, w)
        if resize not in ("bicubic", "bilinear"):
            raise ValueError(f"resize must be bicubic or bilinear, got {resize!r}")
        self.resize = resize
        self.mean = None if mean is None else _channel_vector(mean, "mean", self.device)
        self.std = None if std is None else _channel_vector(std, "std", self.device)
        if self.std is not None and bool((self.std <= 0).any()):
            raise ValueError("std must be > 0 for every channel")
        self.name = name
        if num_classes is None:
            with torch.no_grad():
                out = self.logits(torch.full((1, 3, h, w), 0.5, device=self.device))
            num_classes = int(out.shape[1])
        self.num_classes = num_classes

    def preprocess(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> the model input ``(B, 3, S, S)`` (differentiable)."""
        if tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode=self.resize, align_corners=False,
                              antialias=shrink)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x

    def logits(self, x: Tensor) -> Tensor:
        out = self.model(self.preprocess(x))
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"classifier {self.name} must return (B, C) logits, got {got}")
        return out


def _channel_vector(values, name: str, device) -> Tensor:
    t = torch.as_tensor([float(v) for v in values], dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        raise ValueError(f"{name} needs 1 or 3 values, got {t.numel()}")
    return t.view(1, 3, 1, 1).clone()


# --------------------------------------------------------------------------------- faces

#: (degrees, scale, x shift, y shift as fractions of the crop) the constraint is checked at.
CHECK_JITTERS: tuple[tuple[float, float, float, float], ...] = (
    (2.0, 1.02, 0.01, -0.01),
    (-2.0, 0.98, -0.01, 0.01),
)


def jitter_alignment(mats: Tensor, size: tuple[int, int], degrees: Tensor, scale: Tensor,
                     tx: Tensor, ty: Tensor) -> Tensor:
    """Compose photo-to-crop matrices ``(N, 2, 3)`` with a similarity about the crop centre:
    rotation ``degrees``, ``scale``, shifts ``tx, ty`` as fractions of the crop width/height
    (each ``(N,)``)."""
    n = mats.shape[0]
    h, w = size
    ang = torch.deg2rad(degrees.double())
    cos, sin = scale.double() * torch.cos(ang), scale.double() * torch.sin(ang)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    jit = torch.zeros(n, 3, 3, dtype=torch.float64)
    jit[:, 0, 0], jit[:, 0, 1], jit[:, 1, 0], jit[:, 1, 1] = cos, -sin, sin, cos
    jit[:, 0, 2] = cx - cos * cx + sin * cy + tx.double() * w
    jit[:, 1, 2] = cy - sin * cx - cos * cy + ty.double() * h
    jit[:, 2, 2] = 1
    full = torch.cat([mats.double().cpu(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 1, 3)], 1)
    return (jit @ full)[:, :2].to(mats.dtype).to(mats.device)

class FaceGalleryClassifier(Classifier):
    """Face identification against a gallery (see module docstring).

    Args:
        gallery: folder with one subfolder of photos per identity.
        device: torch device.
        face_model: a white-box model of :data:`advprotect.models.zoo.FACE_MODELS`.
        scale: logit scale ``> 0`` applied to the cosine similarities (default 10).
        min_face: smallest face side in pixels.
        jitter: alignment jitter in ``[0, 3]`` (1: up to +-3 degrees, +-3% scale, +-2% shift)
            drawn anew at every attack step; the ranking constraint must also hold at the fixed
            alignments :data:`CHECK_JITTERS`. 0 attacks our own alignment only (fragile: a fresh
            detection of the protected photo may undo a minimal perturbation).
        seed: seeds the jitter.
    """

    def __init__(self, gallery: str | os.PathLike, device: torch.device | str = "cpu", *,
                 face_model: str = "facenet128", scale: float = 10.0, min_face: int = 40,
                 jitter: float = 1.0, seed: int = 0, detector=None) -> None:
        from ..faces.embed import FaceAnalyzer, white_box_models

        if face_model not in white_box_models():
            raise ValueError(f"face model must be one of {', '.join(white_box_models())}, got {face_model!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not 0 <= jitter <= 3:
            raise ValueError(f"jitter must be in [0, 3], got {jitter}")
        self.device = torch.device(device)
        self.region_is_photo = False
        self.face_model = face_model
        self.scale = float(scale)
        self.jitter = float(jitter)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.name = f"faces:{face_model}"
        self.analyzer = FaceAnalyzer(self.device, min_face=min_face, mask_models=[face_model],
                                     detector=detector)
        self.net = self.analyzer.models([face_model])[face_model]
        root = Path(gallery).expanduser()
        if not root.is_dir():
            raise ValueError(f"gallery folder not found: {root}")
        self.gallery_root = root
        names, means, counts, skipped = self._gallery(root)
        self.label_names = names
        self.num_classes = len(names)
        self.means = means.to(self.device)
        self.gallery_counts = dict(zip(names, counts))
        self.gallery_skipped = skipped

    # ---- gallery
    def _gallery(self, root: Path) -> tuple[list[str], Tensor, list[int], list[str]]:
        from ..io import IMAGE_EXTENSIONS, ImageReadError, read_image
        from ..models import store

        exts = {e.lower().lstrip(".") for e in IMAGE_EXTENSIONS}
        files: dict[str, list[Path]] = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            photos = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in exts)
            if photos:
                files[d.name] = photos
        if len(files) < 2:
            raise ValueError(f"gallery {root} needs at least 2 identity subfolders with photos, found {len(files)}")
        h = hashlib.sha256(f"kanon-gallery/1\0{self.face_model}".encode())
        for name, photos in files.items():
            for p in photos:
                st = p.stat()
                h.update(f"\0{name}/{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        cache = store.home() / "kanon" / f"gallery-{h.hexdigest()[:24]}.pt"
        if cache.is_file():
            try:
                data = torch.load(cache, map_location="cpu", weights_only=True)
                return list(data["names"]), data["means"], list(data["counts"]), list(data["skipped"])
            except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
                pass
        names, means, counts, skipped = [], [], [], []
        for name, photos in files.items():
            embs = []
            for p in photos:
                try:
                    img = read_image(p).pixels
                except ImageReadError as exc:
                    skipped.append(f"{name}/{p.name}: {exc}")
                    continue
                faces = self.analyzer.embed_photos([img], [self.face_model], largest_only=True)[0]
                if not faces:
                    skipped.append(f"{name}/{p.name}: no face found")
                    continue
                embs.append(F.normalize(faces[0]["embeddings"][self.face_model].float().cpu(), dim=0))
            if not embs:
                raise ValueError(f"gallery identity {name!r}: no face found in any of its {len(photos)} photos")
            names.append(name)
            means.append(torch.stack(embs).mean(0))
            counts.append(len(embs))
        mean_t = torch.stack(means)
        import io as _io

        from ..io import atomic_write_bytes

        buf = _io.BytesIO()
        torch.save({"names": names, "means": mean_t, "counts": counts, "skipped": skipped}, buf)
        atomic_write_bytes(cache, buf.getvalue())
        return names, mean_t, counts, skipped

    # ---- classification
    def _logits_from_embeddings(self, emb: Tensor) -> Tensor:
        return self.scale * F.normalize(emb, dim=1) @ F.normalize(self.means, dim=1).T

    def prepare(self, photos: Sequence[Tensor]) -> tuple[list[Sample], dict[int, str]]:
        jobs, skipped = self.analyzer.prepare([p.to(self.device, torch.float32) for p in photos])
        best: dict[int, Any] = {}
        for j in jobs:  # the largest face of each photo is the one identified
            area = (j.box[2] - j.box[0]) * (j.box[3] - j.box[1])
            if j.photo not in best or area > best[j.photo][0]:
                best[j.photo] = (area, j)
        samples, reasons = [], {}
        for i in range(len(photos)):
            if i not in best:
                reasons[i] = ("faces under --min-face only" if skipped[i] else "no face found")
                continue
            j = best[i][1]
            others = sum(1 for jj in jobs if jj.photo == i) - 1
            samples.append(Sample(i, j.work, j.mask, j, {"face_box": [round(v, 1) for v in j.box],
                                                          "other_faces": others}))
        return samples, reasons

    def stack(self, samples: Sequence[Sample]) -> Tensor:
        from ..faces.embed import stack_rois

        return stack_rois([s.x for s in samples])

    def stack_masks(self, samples: Sequence[Sample]) -> Tensor:
        from ..faces.embed import stack_rois

        return stack_rois([s.mask.expand(3, -1, -1) for s in samples])[:, :1]

    def batch_logits(self, samples: Sequence[Sample]) -> Callable[[Tensor], Tensor]:
        return self._aligned_logits(samples, None)

    def attack_logits(self, samples: Sequence[Sample]) -> Callable[[Tensor], Tensor]:
        """Logits under a fresh random alignment jitter per call: whoever identifies the photo
        detects and aligns the face again, never with exactly our landmarks."""
        if self.jitter <= 0:
            return self.batch_logits(samples)
        return self._aligned_logits(samples, "random")

    def check_logits(self, samples: Sequence[Sample]) -> list[Callable[[Tensor], Tensor]]:
        """The constraint must hold at our alignment and at :data:`CHECK_JITTERS`."""
        fns = [self.batch_logits(samples)]
        if self.jitter > 0:
            fns += [self._aligned_logits(samples, j) for j in CHECK_JITTERS]
        return fns

    def _aligned_logits(self, samples: Sequence[Sample], jitter) -> Callable[[Tensor], Tensor]:
        from ..faces.align import align

        mats = torch.stack([s.context.matrices[self.face_model] for s in samples])
        size = tuple(self.analyzer.templates[self.face_model].size)
        n = mats.shape[0]
        if jitter is not None and jitter != "random":
            mats = jitter_alignment(mats, size, *(torch.full((n,), float(v)) for v in jitter))

        def fn(x: Tensor) -> Tensor:
            m = mats
            if jitter == "random":
                r = lambda: (torch.rand(n, generator=self.generator) * 2 - 1) * self.jitter
                m = jitter_alignment(mats, size, r() * 3.0, 1 + r() * 0.03, r() * 0.02, r() * 0.02)
            emb = self.net(align(x, m.to(x.device, x.dtype), size, antialias=True))
            return self._logits_from_embeddings(emb)

        return fn

    def compose(self, photo: Tensor, sample: Sample, region_adv: Tensor, eps: float) -> Tensor:
        """Add the region's perturbation (resampled to full resolution) to the photo."""
        j = sample.context
        x0, y0, x1, y1 = j.roi_box
        h, w = j.work.shape[-2:]
        d = (region_adv[:, :h, :w] - j.work).to(photo.device, photo.dtype)
        if j.scale < 1.0:
            d = F.interpolate(d[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
        out = photo.clone()
        out[:, y0:y1, x0:x1] = (out[:, y0:y1, x0:x1] + d.clamp(-eps, eps)).clamp(0, 1)
        return out

    def region_of(self, photo: Tensor, sample: Sample) -> Tensor:
        return self.analyzer.rework(photo.to(self.device, torch.float32), sample.context)

    @torch.no_grad()
    def classify(self, photo: Tensor) -> Tensor | None:
        samples, _ = self.prepare([photo])
        if not samples:
            return None
        return self.batch_logits(samples)(self.stack(samples))[0]


# --------------------------------------------------------------------------------- loading

def load_classifier(spec: str, device: torch.device | str = "cpu", *, gallery: str | None = None,
                    input_size: int | tuple[int, int] | None = None, mean=None, std=None,
                    face_model: str = "facenet128", face_scale: float = 10.0,
                    min_face: int = 40, seed: int | None = 0) -> Classifier:
    """Build the classifier named by ``spec``: ``imagenet``, ``faces`` (needs ``gallery``) or the
    path of a TorchScript file (needs nothing else; ``input_size`` default 224, ``mean``/``std``
    default none). Raises ``ValueError`` with a clear message for a bad spec or file."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("classifier must be faces, imagenet or the path of a TorchScript file")
    spec = spec.strip()
    device = torch.device(device)
    if spec == "imagenet":
        from ..models.efficientnet_lite import INPUT_SIZE, load_efficientnet_lite0

        if gallery is not None:
            raise ValueError("--gallery only applies to --classifier faces")
        model = load_efficientnet_lite0(device)
        return ImageClassifier(model, INPUT_SIZE, name="imagenet:efficientnet-lite0", device=device,
                               num_classes=1000)
    if spec == "faces":
        if gallery is None:
            raise ValueError("--classifier faces needs --gallery DIR (one subfolder of photos per identity)")
        return FaceGalleryClassifier(gallery, device, face_model=face_model, scale=face_scale,
                                     min_face=min_face, seed=seed or 0)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"classifier {spec!r} is neither faces, imagenet nor an existing TorchScript file")
    if gallery is not None:
        raise ValueError("--gallery only applies to --classifier faces")
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - any load failure is a usage error
        raise ValueError(f"{path} is not a loadable TorchScript model: {str(exc).splitlines()[0][:200]}") from None
    size = input_size if input_size is not None else 224
    size_t = (size, size) if isinstance(size, int) else tuple(size)
    clf = None
    try:
        clf = ImageClassifier(model, size_t, mean=mean, std=std, resize="bilinear",
                              name=f"torchscript:{path.name}", device=device)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        raise ValueError(f"{path}: running the model on a {size_t[0]}x{size_t[1]} input failed "
                         f"(check --input-size): {lines[-1][:200]}") from None
    if clf.num_classes < 2:
        raise ValueError(f"{path}: the model returns {clf.num_classes} class score(s); K-anonymity needs at least 2")
    return clf
