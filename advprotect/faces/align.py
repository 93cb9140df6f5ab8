"""Differentiable face alignment on a photo's own pixels, and writing the result back.

The attack perturbs the pixels of the photo itself. For each face:

1. :func:`face_roi` picks a region of interest (ROI): an integer pixel box of the full-resolution
   photo that holds every pixel the aligned crop is made of, plus a margin.
2. :func:`roi_to_crop_matrix` estimates the similarity transform that takes the five landmarks
   (in ROI coordinates) onto a model's :class:`~advprotect.faces.templates.Template`.
3. :func:`align` warps ROI pixels to the model's crop (bilinear, differentiable with respect to
   the ROI pixels); ``antialias=True`` first blurs and halves a much larger ROI with a Gaussian
   pyramid so the crop does not alias, and gradients still reach every ROI pixel.
4. :func:`feather_mask` is the inverse warp of a soft-edged crop-space mask: the ROI pixels that
   feed the crop, with a smooth falloff. It multiplies the perturbation so only the face changes.
5. :func:`paste` writes the perturbed ROI back into a copy of the photo.

Conventions: images are float tensors in ``[0, 1]``, ``(C, H, W)`` or ``(N, C, H, W)``;
points are ``(x, y)`` pixels with pixel centres at integers (pixel ``(0, 0)`` covers
``[-0.5, 0.5]^2``, as in dlib and kornia's ``align_corners=True``). MTCNN's
:class:`~advprotect.faces.detect.FaceDetector` reports continuous coordinates instead (pixel
``(0, 0)`` covers ``[0, 1]^2``): convert its landmarks with :func:`from_detector_coords`
(``p - 0.5``) before using them here. Boxes are ``(x0, y0, x1, y1)``, with ``x1``/``y1``
exclusive for integer ROI boxes. Affine matrices are ``(N, 2, 3)`` mapping source pixels to destination pixels:
``dst = M[:, :2] @ src + M[:, 2]`` (kornia's ``warp_affine`` convention with
``align_corners=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from kornia.geometry.transform import pyrdown, warp_affine

from .templates import Template

__all__ = [
    "FaceWarp",
    "Template",
    "align",
    "apply_affine",
    "crop_footprint",
    "cut_roi",
    "estimate_similarity",
    "face_roi",
    "feather_mask",
    "from_detector_coords",
    "invert_affine",
    "landmarks_in_roi",
    "paste",
    "roi_to_crop_matrix",
]

RoiBox = tuple[int, int, int, int]


# --------------------------------------------------------------------------- affine helpers

def _as_points(points: object, name: str) -> torch.Tensor:
    t = points if isinstance(points, torch.Tensor) else torch.as_tensor(points)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim < 2 or t.shape[-1] != 2:
        raise ValueError(f"{name} must be (..., K, 2) points, got shape {tuple(t.shape)}")
    return t


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transform (rotation, uniform scale, translation) from ``src``
    to ``dst`` points.

    This is Umeyama's (1991) solution for 2-D with reflections excluded, written in closed form:
    with centred points as complex numbers ``s``, ``d``, the optimal ``scale * e^{i angle}`` is
    ``sum(conj(s) d) / sum(|s|^2)``. It needs no SVD, so it is differentiable everywhere.

    Args:
        src: ``(N, K, 2)`` or ``(K, 2)`` source points ``(x, y)``, ``K >= 2``.
        dst: ``(K, 2)`` (shared) or ``(N, K, 2)`` destination points.

    Returns:
        ``(N, 2, 3)`` matrices ``M`` with ``dst ~= M[:, :, :2] @ src + M[:, :, 2]``, in the
        floating dtype of ``src``.

    Raises:
        ValueError: on mismatched shapes, fewer than two points, or source points that all
            coincide.
    """
    src = _as_points(src, "src")
    if src.ndim == 2:
        src = src.unsqueeze(0)
    if src.ndim != 3:
        raise ValueError(f"src must be (N, K, 2) or (K, 2), got shape {tuple(src.shape)}")
    n, k, _ = src.shape
    if k < 2:
        raise ValueError(f"need at least two point pairs, got {k}")
    dst = _as_points(dst, "dst").to(device=src.device, dtype=src.dtype)
    if dst.ndim == 2:
        dst = dst.unsqueeze(0).expand(n, -1, -1)
    if dst.ndim != 3 or dst.shape[1:] != (k, 2) or dst.shape[0] not in (1, n):
        raise ValueError(
            f"dst must be ({k}, 2) or ({n}, {k}, 2) to match src, got shape {tuple(dst.shape)}"
        )
    dst = dst.expand(n, -1, -1)
    mu_s = src.mean(dim=1, keepdim=True)
    mu_d = dst.mean(dim=1, keepdim=True)
    s = src - mu_s
    d = dst - mu_d
    var = (s * s).sum(dim=(1, 2))
    if bool((var <= torch.finfo(src.dtype).tiny).any()):
        raise ValueError("source points coincide: a similarity transform is undefined")
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(dim=1) / var  # scale * cos
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / var  # scale * sin
    rot = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=1)
    t = mu_d.squeeze(1) - (rot @ mu_s.squeeze(1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([rot, t.unsqueeze(-1)], dim=-1)


def _as_matrices(matrix: torch.Tensor, name: str = "matrix") -> torch.Tensor:
    m = matrix if isinstance(matrix, torch.Tensor) else torch.as_tensor(matrix)
    if not m.is_floating_point():
        m = m.to(torch.float64)
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3 or m.shape[1:] != (2, 3):
        raise ValueError(f"{name} must be (N, 2, 3) or (2, 3), got shape {tuple(m.shape)}")
    return m


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points through affine matrices.

    Args:
        matrix: ``(N, 2, 3)`` or ``(2, 3)``.
        points: ``(N, K, 2)`` or ``(K, 2)`` (shared by every matrix).

    Returns:
        ``(N, K, 2)`` mapped points.
    """
    m = _as_matrices(matrix)
    p = _as_points(points, "points").to(device=m.device, dtype=m.dtype)
    if p.ndim == 2:
        p = p.unsqueeze(0)
    return p @ m[:, :, :2].transpose(1, 2) + m[:, :, 2].unsqueeze(1)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``(N, 2, 3)`` (or ``(2, 3)``) affine matrices, returned as ``(N, 2, 3)``.

    Raises:
        ValueError: when a matrix is singular.
    """
    m = _as_matrices(matrix)
    a = m[:, :, :2]
    det = torch.linalg.det(a)
    if bool((det.abs() <= torch.finfo(m.dtype).eps).any()):
        raise ValueError("affine matrix is singular and cannot be inverted")
    inv = torch.linalg.inv(a)
    t = -(inv @ m[:, :, 2:])
    return torch.cat([inv, t], dim=-1)


# --------------------------------------------------------------------------- ROI geometry

def _size_hw(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or (H, W), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def crop_footprint(landmarks: torch.Tensor, template: Template) -> torch.Tensor:
    """Corners, in image pixels, of the crop that ``template`` takes from an image whose five
    landmarks are ``landmarks``.

    Args:
        landmarks: ``(5, 2)`` landmark ``(x, y)`` in image pixels.
        template: the target template.

    Returns:
        ``(4, 2)`` image positions of the crop's outer corners (top-left, top-right,
        bottom-right, bottom-left pixel edges), in float64.
    """
    lm = _as_points(landmarks, "landmarks").to(torch.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2), got shape {tuple(lm.shape)}")
    m = estimate_similarity(lm, template.tensor(torch.float64, lm.device))
    h, w = template.size
    corners = torch.tensor(
        [[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]],
        dtype=torch.float64, device=lm.device,
    )
    return apply_affine(invert_affine(m), corners)[0]


def face_roi(points: object, image_hw: Sequence[int], margin: float = 0.25, *,
             template: Template | None = None) -> RoiBox:
    """Integer region of interest around a face, clipped to the photo.

    Args:
        points: a face box ``(4,)`` as ``(x0, y0, x1, y1)``, or ``(K, 2)`` points (e.g. the five
            landmarks) in image pixels.
        image_hw: the photo's ``(H, W)``.
        margin: added on every side, as a fraction of the longer side of the box. ``>= 0``.
        template: with five landmarks, also take in the whole crop the template cuts from the
            photo (:func:`crop_footprint`), so every pixel that feeds the aligned crop is in the
            ROI (up to the photo's edge).

    Returns:
        ``(x0, y0, x1, y1)`` Python ints with ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``
        (``x1``/``y1`` exclusive), so ``photo[:, y0:y1, x0:x1]`` is the ROI.

    Raises:
        ValueError: on bad shapes, a negative margin, or a face entirely outside the photo.
    """
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    img_h, img_w = _size_hw(tuple(image_hw), "image_hw")
    p = points if isinstance(points, torch.Tensor) else torch.as_tensor(points)
    p = p.detach().to(torch.float64).cpu()
    if p.shape == (4,):
        if template is not None:
            raise ValueError("template needs the five landmarks, not a box")
        x0, y0, x1, y1 = p.tolist()
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box must be (x0, y0, x1, y1) with x1 >= x0, y1 >= y0, got {p.tolist()}")
    elif p.ndim == 2 and p.shape[1] == 2 and p.shape[0] >= 1:
        if template is not None:
            if p.shape[0] != 5:
                raise ValueError(f"template needs (5, 2) landmarks, got shape {tuple(p.shape)}")
            p = torch.cat([p, crop_footprint(p, template)], dim=0)
        x0, y0 = p.min(dim=0).values.tolist()
        x1, y1 = p.max(dim=0).values.tolist()
    else:
        raise ValueError(f"points must be a (4,) box or (K, 2) points, got shape {tuple(p.shape)}")
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError("face box or landmarks are not finite")
    pad = margin * max(x1 - x0, y1 - y0)
    bx0 = max(0, math.floor(x0 - pad))
    by0 = max(0, math.floor(y0 - pad))
    bx1 = min(img_w, math.ceil(x1 + pad) + 1)
    by1 = min(img_h, math.ceil(y1 + pad) + 1)
    if bx1 <= bx0 or by1 <= by0:
        raise ValueError(
            f"face region ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) lies outside the "
            f"{img_w}x{img_h} photo"
        )
    return int(bx0), int(by0), int(bx1), int(by1)


def landmarks_in_roi(landmarks: torch.Tensor, roi_box: Sequence[int]) -> torch.Tensor:
    """Photo landmarks ``(..., 2)`` shifted into the coordinates of ``roi_box``."""
    lm = _as_points(landmarks, "landmarks")
    offset = torch.tensor([float(roi_box[0]), float(roi_box[1])], dtype=lm.dtype, device=lm.device)
    return lm - offset


def from_detector_coords(points: torch.Tensor) -> torch.Tensor:
    """Points in continuous image coordinates (pixel ``(i, j)`` covers ``[j, j + 1) x
    [i, i + 1)``, as :class:`~advprotect.faces.detect.FaceDetector` reports its boxes and
    landmarks) shifted into this module's convention (pixel centres at integers): ``p - 0.5``."""
    return _as_points(points, "points") - 0.5


def roi_to_crop_matrix(landmarks_in_roi: torch.Tensor, template: Template) -> torch.Tensor:
    """Similarity matrices from ROI pixels to the template's crop pixels.

    Args:
        landmarks_in_roi: ``(5, 2)`` or ``(N, 5, 2)`` landmarks in ROI coordinates.
        template: the recognition model's template.

    Returns:
        ``(N, 2, 3)`` matrices (float dtype of the landmarks, float64 for integer input).
    """
    lm = _as_points(landmarks_in_roi, "landmarks_in_roi")
    if lm.shape[-2:] != (5, 2) or lm.ndim not in (2, 3):
        raise ValueError(f"landmarks must be (5, 2) or (N, 5, 2), got shape {tuple(lm.shape)}")
    return estimate_similarity(lm, template.tensor(lm.dtype, lm.device))


# --------------------------------------------------------------------------- warping

#: Pyramid levels are taken while the crop has fewer than this many pixels per ROI pixel.
_PYRAMID_BELOW = 0.5


def _pyramid_for(img: torch.Tensor, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Halve ``img`` (1, C, h, w) with a Gaussian pyramid until the warp ``matrix`` (1, 2, 3) no
    longer shrinks it by more than 2x; return the smaller image and the matching matrix."""
    scale = float(torch.linalg.det(matrix[0, :, :2].detach()).abs().sqrt())
    m = matrix
    while scale < _PYRAMID_BELOW and min(img.shape[-2:]) >= 4:
        h, w = img.shape[-2:]
        small = pyrdown(img, border_type="reflect", align_corners=False)
        sh, sw = small.shape[-2:]
        # F.interpolate(align_corners=False, size=...) samples the blurred input at
        # x_in = (x_out + 0.5) * (w / sw) - 0.5, so x_out = (x_in + 0.5) * (sw / w) - 0.5.
        fx, fy = w / sw, h / sh
        # ROI -> level matrix D; new matrix = M @ D^-1 (points: level -> ROI -> crop).
        d_inv = torch.tensor(
            [[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]],
            dtype=m.dtype, device=m.device,
        )
        m = m @ d_inv
        img = small
        scale *= math.sqrt(fx * fy)
    return img, m


def align(roi: torch.Tensor | Sequence[torch.Tensor], matrices: torch.Tensor,
          size: int | Sequence[int], *, antialias: bool = False,
          padding_mode: str = "zeros") -> torch.Tensor:
    """Warp ROI pixels to aligned crops, differentiably with respect to the ROI pixels.

    Args:
        roi: ``(N, C, h, w)`` tensor, or a list of ``N`` tensors ``(C, h_i, w_i)`` (or
            ``(1, C, h_i, w_i)``) of different sizes. Values typically in ``[0, 1]``.
        matrices: ``(N, 2, 3)`` (or ``(2, 3)`` when ``N == 1``) ROI-to-crop pixel matrices,
            e.g. from :func:`roi_to_crop_matrix`.
        size: crop size, ``S`` or ``(H, W)``.
        antialias: when a ROI is more than twice the crop's resolution, blur and halve it with
            kornia's Gaussian pyramid first (exactly compensated in the matrix), so large
            photos do not alias. Every ROI pixel still receives gradient.
        padding_mode: what crop pixels outside the ROI read (``"zeros"``, ``"border"``,
            ``"reflection"``), as in :func:`kornia.geometry.transform.warp_affine`.

    Returns:
        ``(N, C, H, W)`` crops in the dtype of the ROI.
    """
    out_hw = _size_hw(size if isinstance(size, int) else tuple(size))
    if isinstance(roi, torch.Tensor):
        if roi.ndim == 3:
            roi = roi.unsqueeze(0)
        if roi.ndim != 4:
            raise ValueError(f"roi must be (N, C, h, w) or (C, h, w), got shape {tuple(roi.shape)}")
        items: list[torch.Tensor] = list(roi.split(1, dim=0))
        batched = roi
    else:
        items = []
        for i, r in enumerate(roi):
            if not isinstance(r, torch.Tensor):
                raise ValueError(f"roi[{i}] is not a tensor")
            if r.ndim == 3:
                r = r.unsqueeze(0)
            if r.ndim != 4 or r.shape[0] != 1:
                raise ValueError(f"roi[{i}] must be (C, h, w) or (1, C, h, w), got {tuple(r.shape)}")
            items.append(r)
        if not items:
            raise ValueError("roi is an empty list")
        if len({r.shape[1] for r in items}) != 1:
            raise ValueError("every ROI must have the same number of channels")
        batched = None
    n = len(items)
    m = _as_matrices(matrices, "matrices")
    if m.shape[0] != n:
        raise ValueError(f"got {n} ROIs but {m.shape[0]} matrices")
    if not items[0].is_floating_point():
        raise ValueError(f"roi must be a floating tensor, got {items[0].dtype}")
    m = m.to(device=items[0].device, dtype=items[0].dtype)
    if batched is not None and not antialias:
        return warp_affine(batched, m, out_hw, mode="bilinear", padding_mode=padding_mode,
                           align_corners=True)
    crops = []
    for i, r in enumerate(items):
        mi = m[i:i + 1]
        if antialias:
            r, mi = _pyramid_for(r, mi)
        crops.append(warp_affine(r, mi, out_hw, mode="bilinear", padding_mode=padding_mode,
                                 align_corners=True))
    return torch.cat(crops, dim=0)


def _crop_space_mask(size_hw: tuple[int, int], feather: float, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """(1, 1, H, W) mask: 0 on the outermost pixel ring, rising smoothly (smoothstep) to 1 over
    ``feather * min(H, W)`` pixels."""
    h, w = size_hw
    ramp = max(feather * min(h, w), 1.0)

    def profile(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=dtype, device=device)
        dist = torch.minimum(i, (n - 1) - i)  # 0 on the border pixel
        t = (dist / ramp).clamp(0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    return (profile(h)[:, None] * profile(w)[None, :])[None, None]


def feather_mask(roi_hw: Sequence[int], matrix: torch.Tensor, template_size: int | Sequence[int],
                 feather: float = 0.1) -> torch.Tensor:
    """Soft mask, in ROI space, of the pixels that feed the aligned crop.

    A crop-space mask that is 0 on the crop's border pixels and rises smoothly to 1 over
    ``feather * min(crop H, W)`` pixels is warped back to the ROI with the inverse of
    ``matrix``. ROI pixels that do not reach the crop get exactly 0.

    Args:
        roi_hw: ``(h, w)`` of the ROI.
        matrix: ``(2, 3)`` or ``(1, 2, 3)`` ROI-to-crop matrix.
        template_size: crop size ``S`` or ``(H, W)``.
        feather: falloff width as a fraction of the crop's shorter side, in ``[0, 0.5]``.

    Returns:
        ``(1, h, w)`` mask in ``[0, 1]`` (dtype of ``matrix``, float32 for non-float input),
        without gradient.
    """
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather must be in [0, 0.5], got {feather}")
    h, w = _size_hw(tuple(roi_hw), "roi_hw")
    m = _as_matrices(matrix).detach()
    if m.shape[0] != 1:
        raise ValueError(f"feather_mask takes one matrix, got {m.shape[0]}")
    if m.dtype not in (torch.float32, torch.float64):
        m = m.float()
    crop_hw = _size_hw(template_size if isinstance(template_size, int) else tuple(template_size),
                       "template_size")
    mask = _crop_space_mask(crop_hw, feather, m.dtype, m.device)
    back = warp_affine(mask, invert_affine(m), (h, w), mode="bilinear", padding_mode="zeros",
                       align_corners=True)
    return back[0].clamp(0.0, 1.0)


# --------------------------------------------------------------------------- photo <-> ROI

def _check_box(photo: torch.Tensor, roi_box: Sequence[int]) -> RoiBox:
    if photo.ndim != 3:
        raise ValueError(f"photo must be (C, H, W), got shape {tuple(photo.shape)}")
    if len(roi_box) != 4:
        raise ValueError(f"roi_box must be (x0, y0, x1, y1), got {roi_box!r}")
    x0, y0, x1, y1 = (int(v) for v in roi_box)
    _, h, w = photo.shape
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"roi_box {(x0, y0, x1, y1)} is not inside the {w}x{h} photo")
    return x0, y0, x1, y1


def cut_roi(photo: torch.Tensor, roi_box: Sequence[int]) -> torch.Tensor:
    """Copy of ``photo[:, y0:y1, x0:x1]`` (``(C, h, w)``) for ``roi_box = (x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = _check_box(photo, roi_box)
    return photo[:, y0:y1, x0:x1].clone()


def paste(photo: torch.Tensor, roi_box: Sequence[int], roi_pixels: torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """A new photo with ``roi_pixels`` written at ``roi_box``; ``photo`` is not modified.

    Args:
        photo: ``(C, H, W)`` float photo.
        roi_box: ``(x0, y0, x1, y1)`` integer box, ``x1``/``y1`` exclusive.
        roi_pixels: ``(C, y1 - y0, x1 - x0)`` new ROI pixels.
        mask: optional ``(1, h, w)`` or ``(h, w)`` blend weights in ``[0, 1]``: the ROI becomes
            ``old * (1 - mask) + new * mask`` (pixels where ``mask == 0`` keep their exact bits).

    Returns:
        ``(C, H, W)`` new photo (differentiable with respect to ``roi_pixels``).
    """
    x0, y0, x1, y1 = _check_box(photo, roi_box)
    expect = (photo.shape[0], y1 - y0, x1 - x0)
    if tuple(roi_pixels.shape) != expect:
        raise ValueError(f"roi_pixels must be {expect} for roi_box {tuple(roi_box)}, "
                         f"got {tuple(roi_pixels.shape)}")
    new = roi_pixels.to(dtype=photo.dtype, device=photo.device)
    if mask is not None:
        mk = mask if mask.ndim == 3 else mask.unsqueeze(0)
        if mk.shape != (1, y1 - y0, x1 - x0):
            raise ValueError(f"mask must be (1, {y1 - y0}, {x1 - x0}), got {tuple(mask.shape)}")
        old = photo[:, y0:y1, x0:x1]
        mk = mk.to(dtype=photo.dtype, device=photo.device)
        new = torch.where(mk > 0, old * (1 - mk) + new * mk, old)
    out = photo.clone()
    out[:, y0:y1, x0:x1] = new
    return out


# --------------------------------------------------------------------------- one face

@dataclass
class FaceWarp:
    """Everything needed to attack one face of a photo through one model's alignment.

    Attributes:
        roi_box: ``(x0, y0, x1, y1)`` ROI in the photo.
        matrix: ``(1, 2, 3)`` ROI-to-crop similarity (float32).
        mask: ``(1, h, w)`` feathered mask of the ROI pixels that feed the crop.
        template: the model's template.
    """

    roi_box: RoiBox
    matrix: torch.Tensor
    mask: torch.Tensor
    template: Template

    @classmethod
    def build(cls, landmarks: torch.Tensor, image_hw: Sequence[int], template: Template, *,
              margin: float = 0.05, feather: float = 0.1) -> FaceWarp:
        """Set up a face from its five photo landmarks ``(5, 2)`` (pixel-centre convention:
        pass MTCNN landmarks through :func:`from_detector_coords`).

        The ROI holds the template's whole crop footprint (clipped to the photo) plus
        ``margin``; the mask falls off over ``feather`` of the crop size.
        """
        lm = _as_points(landmarks, "landmarks").detach().to(torch.float64).cpu()
        roi_box = face_roi(lm, image_hw, margin, template=template)
        matrix = roi_to_crop_matrix(landmarks_in_roi(lm, roi_box), template)
        h, w = roi_box[3] - roi_box[1], roi_box[2] - roi_box[0]
        mask = feather_mask((h, w), matrix, template.size, feather).float()
        return cls(roi_box, matrix.float(), mask, template)

    @property
    def roi_hw(self) -> tuple[int, int]:
        return self.roi_box[3] - self.roi_box[1], self.roi_box[2] - self.roi_box[0]

    def crop(self, roi_pixels: torch.Tensor, *, antialias: bool = True) -> torch.Tensor:
        """Aligned ``(1, C, H, W)`` crop of ``(C, h, w)`` ROI pixels (differentiable)."""
        return align(roi_pixels, self.matrix, self.template.size, antialias=antialias)
