"""Find, align and embed faces: shared by protect-faces, evaluate and model calibration.

A :class:`FaceJob` is one face of one photo: its region of interest (ROI) of the full-resolution
photo, brought to a *working resolution* (native for small faces; for large faces scaled so one
aligned-crop pixel is about ``1 / WORK_CROP_SCALE`` ROI pixels), its landmarks there and, for every
white-box model, the similarity matrix from the working ROI to that model's aligned crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..models.zoo import FACE_MODELS, load_face_model
from .align import _PYRAMID_BELOW, align, crop_footprint, face_roi, feather_mask, from_detector_coords, roi_to_crop_matrix
from .detect import Detections, FaceDetector
from .templates import get_template

#: Working resolution: crop pixels per working-ROI pixel is at most this.
WORK_CROP_SCALE = 0.8


def white_box_models() -> list[str]:
    """Names of the torch face models (the ones an attack can differentiate through)."""
    return [n for n, m in FACE_MODELS.items() if not m.native]


@dataclass
class FaceJob:
    """One face of one photo, ready to be embedded or attacked."""

    photo: int
    index: int
    box: list[float]
    score: float
    landmarks: torch.Tensor  # (5, 2) photo pixels
    roi_box: tuple[int, int, int, int]
    scale: float  # working-ROI pixels per photo pixel
    work: torch.Tensor  # (3, h, w) working ROI, [0, 1]
    work_landmarks: torch.Tensor  # (5, 2) in working-ROI pixels
    matrices: dict[str, torch.Tensor] = field(default_factory=dict)  # model -> (2, 3)
    mask: torch.Tensor | None = None  # (1, h, w) feathered mask of the ``mask_models`` crops
    #: embeddings ``{model: (D,)}`` of the clean working ROI, filled by
    #: :meth:`FaceAnalyzer.clean_embeddings` (the attack's reference, reused by the measurement)
    clean: dict[str, torch.Tensor] = field(default_factory=dict)


class FaceAnalyzer:
    """MTCNN detection + alignment + embedding with the white-box models of the zoo.

    Args:
        device: torch device.
        min_face: smallest face side (pixels) that gets a job; smaller ones are reported.
        mask_models: the models whose crops define the editable face mask and the working scale
            (the attacked ensemble); default all white-box models.
        feather: mask falloff as a fraction of the crop size.
    """

    def __init__(self, device: torch.device | str = "cpu", *, min_face: int = 40,
                 mask_models: Iterable[str] | None = None, feather: float = 0.1,
                 detector: FaceDetector | None = None) -> None:
        self.device = torch.device(device)
        self.min_face = min_face
        self.feather = feather
        self.detector = detector or FaceDetector.load(self.device, min_face=min_face)
        self.templates = {m: get_template(FACE_MODELS[m].template) for m in white_box_models()}
        self.mask_models = list(mask_models) if mask_models is not None else white_box_models()

    def models(self, names: Iterable[str]) -> dict[str, torch.nn.Module]:
        """The zoo's (process-wide cached, frozen, eval-mode) torch modules, made faster in place
        by :func:`optimise_for_inference`."""
        return {m: optimise_for_inference(load_face_model(m, self.device)) for m in names}

    def prepare(self, photos: Sequence[torch.Tensor]) -> tuple[list[FaceJob], list[list[dict]]]:
        """Detect faces and build one :class:`FaceJob` per face >= ``min_face``.

        Returns the jobs (highest detector score first within a photo) and, per photo, the
        faces that were found but left alone, each with a reason."""
        dets: list[Detections] = self.detector.detect([p.to(self.device) for p in photos])
        jobs: list[FaceJob] = []
        skipped: list[list[dict]] = [[] for _ in photos]
        all_templates = list(self.templates.values())
        for pi, (photo, det) in enumerate(zip(photos, dets)):
            h, w = photo.shape[-2:]
            for fi in range(len(det)):
                box = det.boxes[fi].tolist()
                side = min(box[2] - box[0], box[3] - box[1])
                if side < self.min_face:
                    skipped[pi].append({"box": [round(v, 1) for v in box],
                                        "reason": f"face of {side:.0f} px is under --min-face {self.min_face}"})
                    continue
                # MTCNN's coordinates put pixel centres at +0.5; alignment uses integer centres
                lm = from_detector_coords(det.landmarks[fi].detach().cpu().double())
                pts = torch.cat([lm] + [crop_footprint(lm, t) for t in all_templates])
                try:
                    roi = face_roi(pts, (h, w), margin=0.02)
                except ValueError as exc:
                    skipped[pi].append({"box": [round(v, 1) for v in box], "reason": str(exc)})
                    continue
                jobs.append(self._job(pi, fi, photo, box, float(det.scores[fi]), lm, roi))
        return jobs, skipped

    def _job(self, pi: int, fi: int, photo: torch.Tensor, box: list[float], score: float,
             lm: torch.Tensor, roi: tuple[int, int, int, int]) -> FaceJob:
        x0, y0, x1, y1 = roi
        lm_roi = lm - torch.tensor([x0, y0], dtype=lm.dtype)
        crop_scale = max(
            float(torch.linalg.det(roi_to_crop_matrix(lm_roi, self.templates[m])[0, :, :2]).abs().sqrt())
            for m in self.mask_models
        )
        scale = min(1.0, crop_scale / WORK_CROP_SCALE)
        work = self.work_roi(photo, roi, scale)
        sy, sx = work.shape[1] / (y1 - y0), work.shape[2] / (x1 - x0)
        lm_work = torch.stack([(lm_roi[:, 0] + 0.5) * sx - 0.5, (lm_roi[:, 1] + 0.5) * sy - 0.5], 1)
        job = FaceJob(pi, fi, box, score, lm, roi, scale, work, lm_work)
        hw = tuple(work.shape[-2:])
        mask = torch.zeros(1, *hw, device=self.device)
        for m, t in self.templates.items():
            mat = roi_to_crop_matrix(lm_work, t).float().to(self.device)
            job.matrices[m] = mat[0]
            if m in self.mask_models:  # only these models' crops may change
                mask = torch.maximum(mask, feather_mask(hw, mat, t.size, self.feather).to(self.device))
        job.mask = mask
        return job

    def work_roi(self, photo: torch.Tensor, roi: tuple[int, int, int, int], scale: float,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
        """The ROI of ``photo`` at working resolution ``(3, h, w)`` (antialiased when scaled)."""
        x0, y0, x1, y1 = roi
        cut = photo[:, y0:y1, x0:x1].to(self.device, torch.float32)
        if scale >= 1.0 and size is None:
            return cut.contiguous()
        if size is None:
            size = (max(8, round((y1 - y0) * scale)), max(8, round((x1 - x0) * scale)))
        return F.interpolate(cut[None], size=size, mode="bilinear", align_corners=False,
                             antialias=True)[0].clamp(0, 1)

    def rework(self, photo: torch.Tensor, job: FaceJob) -> torch.Tensor:
        """The same face region cut from another version of the photo (e.g. the protected one)."""
        return self.work_roi(photo, job.roi_box, job.scale, tuple(job.work.shape[-2:]))

    def embed(self, jobs: list[FaceJob], x: torch.Tensor, models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """Embeddings ``{model: (N, D)}`` of the working ROIs ``x`` ``(N, 3, h, w)`` of ``jobs``
        (differentiable with respect to ``x`` when grad mode is on)."""
        out = {}
        for m, net in models.items():
            mats = torch.stack([j.matrices[m] for j in jobs])
            out[m] = net(warp_to_crops(x, mats, self.templates[m].size))
        return out

    def embed_works(self, works: list[torch.Tensor], jobs: list[FaceJob], models: dict[str, torch.nn.Module],
                    chunk: int = 32) -> dict[str, torch.Tensor]:
        """Embeddings ``{model: (N, D)}`` of working ROIs ``works[i]`` ``(3, h_i, w_i)`` aligned with
        ``jobs[i]``'s matrices, without gradient, in batched forwards of at most ``chunk`` faces."""
        if not works:
            return {m: torch.zeros(0, FACE_MODELS[m].embedding_size, device=self.device) for m in models}
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in models}
        with torch.inference_mode():
            for k in range(0, len(works), chunk):
                emb = self.embed(jobs[k:k + chunk], stack_rois(works[k:k + chunk]), models)
                for m, e in emb.items():
                    parts[m].append(e)
        # plain tensors (not inference tensors), so callers may use them in autograd graphs
        return {m: torch.cat(p).clone() for m, p in parts.items()}

    def clean_embeddings(self, jobs: list[FaceJob], models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """Embeddings ``{model: (N, D)}`` of the clean working ROIs of ``jobs``, computed once per
        job and model (one batched forward for every face still missing) and cached on the job."""
        for m, net in models.items():
            todo = [j for j in jobs if m not in j.clean]
            if todo:
                emb = self.embed_works([j.work for j in todo], todo, {m: net})[m]
                for j, e in zip(todo, emb):
                    j.clean[m] = e
        return {m: torch.stack([j.clean[m] for j in jobs]) for m in models}

    @torch.no_grad()
    def embed_photos(self, photos: Sequence[torch.Tensor], model_names: Iterable[str],
                     largest_only: bool = False) -> list[list[dict]]:
        """Per photo, its faces: ``{"job": FaceJob, "embeddings": {model: (D,)}}``."""
        jobs, _ = self.prepare(photos)
        if largest_only:
            firsts = {}
            for j in jobs:
                firsts.setdefault(j.photo, j)
            jobs = list(firsts.values())
        out: list[list[dict]] = [[] for _ in photos]
        if not jobs:
            return out
        models = self.models(model_names)
        emb = self.clean_embeddings(jobs, models)
        for i, j in enumerate(jobs):
            out[j.photo].append({"job": j, "embeddings": {m: e[i] for m, e in emb.items()}})
        return out


def _fold_scale_into_conv(conv: torch.nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> torch.nn.Conv2d:
    """A copy of ``conv`` computing ``conv(x) * scale + shift`` (per output channel)."""
    fused = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                            padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        fused.bias.copy_(bias * scale + shift)
    return fused.requires_grad_(False)


def optimise_for_inference(net: torch.nn.Module) -> torch.nn.Module:
    """Make a frozen eval-mode face model cheaper to run forward and backward (to its input),
    in place, with the same function up to float rounding:

    * every per-channel normalisation that directly follows a convolution (FaceNet's eval-mode
      BatchNorm, dlib's ``affine`` layers) is folded into that convolution's weights and bias:
      the normalisations' forward and backward were about a quarter of an attack step;
    * on the CPU the weights are put in channels-last layout, which oneDNN convolves about 18%
      faster (crops are handed over in that layout by :func:`warp_to_crops`).

    Models in training mode are left alone (their BatchNorm statistics would still change)."""
    if getattr(net, "_advprotect_optimised", False) or net.training:
        return net
    from ..models.dlib_resnet import Affine, DlibResNet, ResidualUnit
    from ..models.facenet import ConvBNReLU

    for mod in list(net.modules()):
        if isinstance(mod, ConvBNReLU) and isinstance(mod.bn, torch.nn.BatchNorm2d):
            bn = mod.bn
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            mod.conv, mod.bn = _fold_scale_into_conv(mod.conv, scale.detach(), shift.detach()), torch.nn.Identity()
        elif isinstance(mod, (ResidualUnit, DlibResNet)):
            for c, a in (("conv1", "affine1"), ("conv2", "affine2")):
                conv, aff = getattr(mod, c, None), getattr(mod, a, None)
                if isinstance(conv, torch.nn.Conv2d) and isinstance(aff, Affine):
                    setattr(mod, c, _fold_scale_into_conv(conv, aff.weight.detach(), aff.bias.detach()))
                    setattr(mod, a, torch.nn.Identity())
    if next(net.parameters()).device.type == "cpu":
        net.to(memory_format=torch.channels_last)
    net._advprotect_optimised = True
    return net


def crop_scales(matrices: torch.Tensor) -> torch.Tensor:
    """Crop pixels per ROI pixel ``(N,)`` of ROI-to-crop ``matrices`` ``(N, 2, 3)``."""
    m = matrices.detach()
    return (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]).abs().sqrt()


def warp_to_crops(x: torch.Tensor, matrices: torch.Tensor, size: int | tuple[int, int], *,
                  batched: bool | None = None) -> torch.Tensor:
    """:func:`~advprotect.faces.align.align` with ``antialias=True`` of a batch ``x`` ``(N, 3, h, w)``
    with ROI-to-crop ``matrices`` ``(N, 2, 3)``; when no ROI is reduced by more than 2x (the working
    resolution makes this the usual case) no pyramid level is needed and all faces are warped in
    one batched call, which gives the same crops as the per-face loop. ``batched=True`` says the
    caller already knows this (no test, no host synchronisation on a GPU)."""
    if batched is None:  # the scale test of align's per-face path, in the ROI's dtype
        batched = bool((crop_scales(matrices.to(x.dtype)) >= _PYRAMID_BELOW).all())
    crops = align(x, matrices, size, antialias=not batched)
    if crops.device.type == "cpu":  # the layout the models' weights are in (see FaceAnalyzer.models)
        crops = crops.contiguous(memory_format=torch.channels_last)
    return crops


def to_uint8(photo: torch.Tensor):
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8 numpy, as native libraries want."""
    return (photo.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def stack_rois(works: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad ``(3, h_i, w_i)`` ROIs at the bottom/right into one ``(N, 3, H, W)`` batch
    (the ROI-to-crop matrices stay valid)."""
    hmax = max(w.shape[1] for w in works)
    wmax = max(w.shape[2] for w in works)
    x = works[0].new_zeros(len(works), 3, hmax, wmax)
    for i, w in enumerate(works):
        x[i, :, : w.shape[1], : w.shape[2]] = w
    return x
