"""Face detection with the MTCNN cascade (Zhang et al. 2016).

:class:`FaceDetector` runs the three stages of the paper on RGB images in ``[0, 1]``:

1. **P-Net** slides over an image pyramid (first scale ``12 / min_face``, each next one
   ``factor`` times smaller, down to 12 px) and proposes windows whose face probability reaches
   ``thresholds[0]``; proposals are thinned by non-maximum suppression (IoU 0.5 per scale, 0.7
   across scales), moved by the regressed offsets and made square.
2. **R-Net** scores 24x24 crops of those squares (from all images in one forward), keeps the
   ones above ``thresholds[1]``, suppresses overlaps (IoU 0.7), regresses and squares again.
3. **O-Net** scores 48x48 crops, keeps those above ``thresholds[2]``, predicts five landmarks,
   regresses the boxes and suppresses boxes mostly inside a better one (intersection over the
   smaller area > 0.7).

Coordinates are continuous pixel coordinates: pixel ``(i, j)`` (row, column) covers
``[j, j + 1) x [i, i + 1)``, so a box ``(x1, y1, x2, y2)`` is ``x2 - x1`` pixels wide. Boxes are
not clipped to the image: a face cut by the border gets a box that reaches past it.

Resampling is done in torch on the input's device. Pyramid levels and crops are taken from a
mip chain (the image averaged over 2x2, 4x4, ... blocks) and resampled bilinearly from the level
nearest the target size, so even a 6000 px photo is cheap and downscaling does not alias; crops
reaching past the image are padded with black (zeros), as in the original method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from advprotect.models.mtcnn import MTCNN, normalise
from advprotect.runtime import shape_varying

__all__ = ["Detections", "FaceDetector", "nms"]

#: IoU thresholds of the non-maximum suppressions (per pyramid scale, across scales, R-Net) and
#: the intersection-over-minimum threshold after O-Net.
NMS_SCALE, NMS_PNET, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
#: Input pixels (times batch) per P-Net strip: bounds memory on very large pyramid levels.
_PNET_STRIP_PIXELS = 1 << 21
#: Most proposals kept (by score) from one pyramid scale of one image before NMS.
_MAX_PROPOSALS_PER_SCALE = 20000
_RNET_CHUNK, _ONET_CHUNK = 2048, 512
#: Images of one size up to this many pixels share P-Net forwards (larger ones run alone).
_STACK_PIXELS = 1 << 20


@dataclass
class Detections:
    """Faces found in one image, sorted by ``scores`` descending.

    ``boxes``: ``(N, 4)`` float ``(x1, y1, x2, y2)`` in input pixels (may reach past the image).
    ``scores``: ``(N,)`` O-Net face probability in ``[0, 1]``.
    ``landmarks``: ``(N, 5, 2)`` float ``(x, y)`` pixels: left eye, right eye, nose tip, left
    mouth corner, right mouth corner (left/right as seen in the image).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.landmarks.to(device))

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> Detections:
        return Detections(
            torch.zeros(0, 4, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, 5, 2, device=device),
        )


# --------------------------------------------------------------------------- box helpers

def _overlap(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Pairwise overlap of boxes ``a`` ``(n, 4)`` and ``b`` ``(m, 4)`` -> ``(n, m)`` in ``[0, 1]``:
    intersection over union (``"union"``) or over the smaller area (``"min"``)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    if mode == "union":
        denom = area_a[:, None] + area_b[None, :] - inter
    else:
        denom = torch.minimum(area_a[:, None], area_b[None, :])
    return inter / denom.clamp(min=1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union",
        groups: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """Greedy non-maximum suppression.

    ``boxes`` ``(N, 4)`` ``(x1, y1, x2, y2)``, ``scores`` ``(N,)``; a box is dropped when its
    overlap (``mode`` ``"union"``: IoU, ``"min"``: intersection over the smaller area) with a
    kept, higher-scoring box exceeds ``threshold``. ``groups`` ``(N,)`` (optional, integer):
    boxes only suppress boxes of their own group (e.g. image index); the answer for each group
    is exactly the one it would get alone. Returns the kept indices ``(K,)`` (int64, on the
    boxes' device), highest score first; ties keep input order. Memory stays bounded by
    processing the sorted boxes in blocks of ``block``.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', not {mode!r}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms wants boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    if groups is not None and groups.shape != scores.shape:
        raise ValueError(f"nms groups must have shape {tuple(scores.shape)}, got {tuple(groups.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    grp = groups[order] if groups is not None else None
    kept: list[torch.Tensor] = []  # positions in `ordered`
    kept_pos = torch.zeros(0, dtype=torch.long, device=boxes.device)

    def suppresses(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        over = _overlap(ordered[rows], ordered[cols], mode) > threshold
        if grp is not None:
            over &= grp[rows][:, None] == grp[cols][None, :]
        return over

    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block), device=boxes.device)
        alive = torch.ones(rows.shape[0], dtype=torch.bool, device=boxes.device)
        if kept_pos.shape[0]:
            alive &= ~suppresses(rows, kept_pos).any(dim=1)
        over = suppresses(rows, rows).cpu().numpy()
        alive_np = alive.cpu().numpy()
        for i in range(rows.shape[0]):
            if alive_np[i]:
                alive_np[i + 1:] &= ~over[i, i + 1:]
        idx = torch.from_numpy(alive_np.nonzero()[0]).to(boxes.device) + start
        kept.append(idx)
        kept_pos = torch.cat([kept_pos, idx])
    return order[torch.cat(kept)]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes ``(N, 4)`` -> squares with the same centre and side ``max(w, h)``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    cx = boxes[:, 0] + w / 2
    cy = boxes[:, 1] + h / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Move box edges by offsets ``reg`` ``(N, 4)`` given as fractions of the box width/height."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


# --------------------------------------------------------------------------- resampling

class _MipChain:
    """An image batch ``(B, 3, H, W)`` and its 2x2 block averages, made on demand.

    Level ``L`` pixel ``(i, j)`` is the mean of the input block ``[2^L i, 2^L (i+1)) x
    [2^L j, 2^L (j+1))`` (partial blocks at the bottom/right edge average what is there).
    """

    def __init__(self, images: torch.Tensor) -> None:
        self.levels = [images]

    def level(self, k: int) -> tuple[int, torch.Tensor]:
        """``(k', level k')`` with ``k'`` = ``k`` or the last level when a side reaches 1 px."""
        while len(self.levels) <= k and min(self.levels[-1].shape[-2:]) > 1:
            self.levels.append(F.avg_pool2d(self.levels[-1], 2, ceil_mode=True))
        k = min(k, len(self.levels) - 1)
        return k, self.levels[k]

    def resized(self, size: tuple[int, int]) -> tuple[torch.Tensor, float, float]:
        """The batch resampled to ``size`` ``(h, w)`` (downscaling), anti-aliased, from the
        nearest larger mip level. Returns ``(images, sx, sy)``: output pixels per input pixel
        along x and y (a level with a partial last block spans a little more than the input)."""
        h0, w0 = self.levels[0].shape[-2:]
        ratio = min(h0 / size[0], w0 / size[1])
        k = max(0, math.floor(math.log2(ratio))) if ratio >= 1 else 0
        k, src = self.level(k)
        hk, wk = src.shape[-2:]
        sx, sy = size[1] / (wk * 2 ** k), size[0] / (hk * 2 ** k)
        if (hk, wk) != tuple(size):
            src = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
        return src, sx, sy

    def crops(self, index: int, boxes: torch.Tensor, out: int) -> torch.Tensor:
        """Crops of image ``index`` in ``boxes`` ``(N, 4)`` (input pixels) resampled to
        ``(N, 3, out, out)``, bilinear from the mip level where the box is ``out..2*out`` px;
        parts outside the image are zeros."""
        n = boxes.shape[0]
        res = boxes.new_zeros(n, 3, out, out)
        if n == 0:
            return res
        side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        lv = torch.floor(torch.log2((side / out).clamp(min=1.0))).long().clamp(min=0)
        t = (torch.arange(out, device=boxes.device, dtype=boxes.dtype) + 0.5) / out  # (out,)
        for k in torch.unique(lv).tolist():
            sel = (lv == k).nonzero().squeeze(1)
            got, img = self.level(k)
            img = img[index:index + 1]
            hk, wk = img.shape[-2:]
            b = boxes[sel] / float(2 ** got)
            xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t  # (n, out) level pixels
            ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t
            gx = (2 * xs / wk - 1)[:, None, :].expand(-1, out, -1)
            gy = (2 * ys / hk - 1)[:, :, None].expand(-1, -1, out)
            grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, out, 2)
            sampled = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (1, 3, m*out, out)
            res[sel] = sampled.view(3, -1, out, out).permute(1, 0, 2, 3)
        return res


# --------------------------------------------------------------------------- detector

class FaceDetector:
    """MTCNN face detector.

    ``net``: an :class:`~advprotect.models.mtcnn.MTCNN` with loaded weights. ``min_face``: the
    smallest face side searched for, in pixels (>= 12). ``thresholds``: face-probability
    thresholds of P-Net, R-Net and O-Net, each in ``(0, 1)``. ``factor``: pyramid scale step in
    ``[0.1, 0.95]`` (0.709 halves the area per step). ``enforce_min_face``: also drop final
    faces whose box is smaller than ``min_face`` on both sides (the pyramid alone lets faces a
    little smaller than ``min_face`` through).
    """

    def __init__(self, net: MTCNN, *, min_face: float = 40, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, enforce_min_face: bool = True) -> None:
        if not isinstance(net, MTCNN):
            raise TypeError(f"net must be an MTCNN, not {type(net).__name__}")
        if not (isinstance(min_face, (int, float)) and math.isfinite(min_face) and min_face >= 12):
            raise ValueError(f"min_face must be a number of pixels >= 12 (P-Net's window), got {min_face!r}")
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities in (0, 1), got {thresholds!r}")
        if not (isinstance(factor, (int, float)) and 0.1 <= factor <= 0.95):
            raise ValueError(f"factor (pyramid scale step) must be in [0.1, 0.95], got {factor!r}")
        self.net = net.eval()
        self.min_face = float(min_face)
        self.thresholds = thresholds
        self.factor = float(factor)
        self.enforce_min_face = bool(enforce_min_face)
        self._nets: dict[torch.device, MTCNN] = {}
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, device: torch.device | str = "cpu", min_face: float = 40,
             thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
             enforce_min_face: bool = True) -> FaceDetector:
        """Build the detector with the MTCNN weights of the model store (pulled on first use)."""
        from advprotect.models import registry, store

        net = MTCNN()
        net.load_state_dict(store.load_state_dict(registry.get("mtcnn")))
        return cls(net.to(device), min_face=min_face, thresholds=thresholds, factor=factor,
                   enforce_min_face=enforce_min_face)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _net_on(self, device: torch.device) -> MTCNN:
        if device == self.device:
            return self.net
        if device not in self._nets:
            import copy

            self._nets[device] = copy.deepcopy(self.net).to(device)
        return self._nets[device]

    # ------------------------------------------------------------------ API

    def detect(self, images: torch.Tensor | Sequence[torch.Tensor]) -> list[Detections]:
        """Find faces in each image.

        ``images``: a list of ``(3, H, W)`` float RGB tensors in ``[0, 1]`` of any sizes, a
        ``(B, 3, H, W)`` batch, or one ``(3, H, W)`` image. Returns one :class:`Detections` per
        image, on that image's device, sorted by score (highest first). The results are ordinary
        tensors (usable in autograd code), computed under ``torch.inference_mode``.
        """
        imgs = self._check(images)
        if not imgs:
            return []
        batch = images if isinstance(images, torch.Tensor) and images.ndim == 4 else None
        with torch.inference_mode(), shape_varying(imgs[0].device):
            found = self._detect(imgs, batch)
        return [Detections(d.boxes.clone(), d.scores.clone(), d.landmarks.clone()) for d in found]

    __call__ = detect

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = [images]
            elif images.ndim == 4:
                images = list(images.unbind(0))
            else:
                raise ValueError(f"images must be (B, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")
        out = []
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.ndim != 3 or im.shape[0] != 3:
                shape = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
                raise ValueError(f"image {i}: expected a (3, H, W) RGB tensor, got {shape}")
            if not im.is_floating_point():
                raise ValueError(f"image {i}: expected a float tensor in [0, 1], got dtype {im.dtype} "
                                 "(divide uint8 images by 255)")
            if im.numel():
                lo, hi = torch.aminmax(im.detach())
                if not (lo.item() >= -1e-3 and hi.item() <= 1 + 1e-3):
                    raise ValueError(f"image {i}: values must be in [0, 1], found "
                                     f"[{lo.item():.3g}, {hi.item():.3g}]")
            out.append(im.detach())
        return out

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face
        scales, side = [], min(h, w) * m
        k = 0
        while side >= 12:
            scales.append(m * self.factor ** k)
            side *= self.factor
            k += 1
        return scales

    def _pnet(self, net: MTCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net on normalised ``(B, 3, H, W)`` in row strips of bounded size; equal to one pass."""
        b, _, h, w = x.shape
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.5x faster on CPU
        rows = max(22, (_PNET_STRIP_PIXELS // max(1, w * b)) // 2 * 2)
        if h <= rows:
            return net.pnet(x)
        probs, regs, r0 = [], [], 0
        while r0 + rows < h:  # strip rows [r0, r0 + rows) -> output rows [r0/2, r0/2 + rows/2 - 5)
            p, r = net.pnet(x[:, :, r0:r0 + rows])
            probs.append(p)
            regs.append(r)
            r0 += rows - 10
        p, r = net.pnet(x[:, :, r0:])
        probs.append(p)
        regs.append(r)
        return torch.cat(probs, dim=1), torch.cat(regs, dim=2)

    def _proposals(self, net: MTCNN, mip: _MipChain) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Stage 1 for one same-size batch: per image, squared candidate boxes ``(K, 4)`` and
        their P-Net scores ``(K,)``."""
        batch = mip.levels[0]
        nb, _, h, w = batch.shape
        dev = batch.device
        boxes_all, scores_all, img_all = [], [], []
        for scale in self._scales(h, w):
            hs, ws = math.ceil(h * scale), math.ceil(w * scale)
            level, sx, sy = mip.resized((hs, ws))
            prob, reg = self._pnet(net, normalise(level))
            mask = prob >= self.thresholds[0]
            idx = mask.nonzero()  # (K, 3): image, row, column
            if idx.shape[0] == 0:
                continue
            score = prob[mask]
            if idx.shape[0] > _MAX_PROPOSALS_PER_SCALE * nb:
                top = torch.topk(score, _MAX_PROPOSALS_PER_SCALE * nb).indices
                idx, score = idx[top], score[top]
            gi, gy, gx = idx[:, 0], idx[:, 1].to(prob.dtype), idx[:, 2].to(prob.dtype)
            boxes = torch.stack([2 * gx / sx, 2 * gy / sy, (2 * gx + 12) / sx, (2 * gy + 12) / sy], 1)
            offs = reg[gi, :, idx[:, 1], idx[:, 2]]  # (K, 4)
            # NMS in the level's pixel grid: exact small integers, so ties at the threshold
            # (common on a 2 px grid) are decided the same way on every device.
            grid = torch.stack([2 * gx, 2 * gy, 2 * gx + 12, 2 * gy + 12], 1)
            keep = nms(grid, score, NMS_SCALE, groups=gi)
            boxes_all.append(torch.cat([boxes[keep], offs[keep]], dim=1))
            scores_all.append(score[keep])
            img_all.append(gi[keep])
        result = []
        if not boxes_all:
            empty = torch.zeros(0, 4, device=dev)
            return [(empty, torch.zeros(0, device=dev))] * nb
        cand, score, gi = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(img_all)
        keep = nms(cand[:, :4], score, NMS_PNET, groups=gi)
        cand, score, gi = cand[keep], score[keep], gi[keep]
        boxes = _square(_regress(cand[:, :4], cand[:, 4:]))
        for i in range(nb):
            sel = gi == i
            result.append((boxes[sel], score[sel]))
        return result

    def _detect(self, imgs: list[torch.Tensor], batch: torch.Tensor | None = None) -> list[Detections]:
        """``imgs``: checked ``(3, H, W)`` images; ``batch``: the ``(B, 3, H, W)`` tensor they
        come from, if any (used as is, without stacking a copy)."""
        n = len(imgs)
        # Stage 1 (P-Net), images of one size and device batched together.
        # Stacking copies, so only small images of one size are stacked; a (B, 3, H, W) input
        # is used as it is.
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(imgs):
            small = batch is not None or im.shape[1] * im.shape[2] <= _STACK_PIXELS
            groups.setdefault((tuple(im.shape), im.device, -1 if small else i), []).append(i)
        mips: list[tuple[_MipChain, int]] = [None] * n  # type: ignore[list-item]
        cand: list[tuple[torch.Tensor, torch.Tensor]] = [None] * n  # type: ignore[list-item]
        for (_, device, _), members in groups.items():
            if batch is not None:
                stacked = batch.detach()
            elif len(members) == 1:
                stacked = imgs[members[0]][None]
            else:
                stacked = torch.stack([imgs[i] for i in members])
            mip = _MipChain(stacked.to(torch.float32))
            props = self._proposals(self._net_on(device), mip)
            for j, i in enumerate(members):
                mips[i] = (mip, j)
                cand[i] = props[j]
        # Stages 2 and 3 per device (usually one), crops of all images in one forward.
        results: list[Detections] = [None] * n  # type: ignore[list-item]
        for device in {im.device for im in imgs}:
            ids = [i for i in range(n) if imgs[i].device == device]
            for i, d in zip(ids, self._refine(self._net_on(device), ids, mips, cand, device)):
                results[i] = d
        return results

    def _crops(self, ids: list[int], mips: list[tuple[_MipChain, int]], boxes: torch.Tensor,
               owner: torch.Tensor, out: int) -> torch.Tensor:
        """Normalised ``(N, 3, out, out)`` crops of ``boxes`` from image ``ids[owner]``."""
        crops = boxes.new_zeros(boxes.shape[0], 3, out, out)
        for k, i in enumerate(ids):
            sel = (owner == k).nonzero().squeeze(1)
            if sel.numel():
                mip, j = mips[i]
                crops[sel] = mip.crops(j, boxes[sel], out)
        crops = normalise(crops)
        if crops.device.type == "cpu":  # about twice as fast on CPU
            crops = crops.contiguous(memory_format=torch.channels_last)
        return crops

    def _refine(self, net: MTCNN, ids: list[int], mips: list[tuple[_MipChain, int]],
                cand: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> list[Detections]:
        boxes = torch.cat([cand[i][0] for i in ids])
        owner = torch.cat([torch.full((cand[i][0].shape[0],), k, device=device, dtype=torch.long)
                           for k, i in enumerate(ids)])
        # Stage 2: R-Net on 24x24 crops.
        if boxes.shape[0]:
            crops = self._crops(ids, mips, boxes, owner, 24)
            outs = [net.rnet(c) for c in crops.split(_RNET_CHUNK)]
            prob = torch.cat([o[0] for o in outs])
            reg = torch.cat([o[1] for o in outs])
            keep = (prob >= self.thresholds[1]).nonzero().squeeze(1)
            boxes, owner, prob, reg = boxes[keep], owner[keep], prob[keep], reg[keep]
            keep = nms(boxes, prob, NMS_RNET, groups=owner)
            boxes = _square(_regress(boxes[keep], reg[keep]))
            owner = owner[keep]
        # Stage 3: O-Net on 48x48 crops.
        marks = boxes.new_zeros(0, 5, 2)
        prob = boxes.new_zeros(0)
        if boxes.shape[0]:
            crops = self._crops(ids, mips, boxes, owner, 48)
            outs = [net.onet(c) for c in crops.split(_ONET_CHUNK)]
            prob = torch.cat([o[0] for o in outs])
            reg = torch.cat([o[1] for o in outs])
            rel = torch.cat([o[2] for o in outs])
            keep = (prob >= self.thresholds[2]).nonzero().squeeze(1)
            boxes, owner, prob, reg, rel = boxes[keep], owner[keep], prob[keep], reg[keep], rel[keep]
            wh = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
            marks = boxes[:, None, :2] + rel * wh
            boxes = _regress(boxes, reg)
            keep = nms(boxes, prob, NMS_ONET, mode="min", groups=owner)
            boxes, owner, prob, marks = boxes[keep], owner[keep], prob[keep], marks[keep]
            if self.enforce_min_face:
                size = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
                big = size >= self.min_face
                boxes, owner, prob, marks = boxes[big], owner[big], prob[big], marks[big]
        out = []
        for k in range(len(ids)):
            sel = (owner == k).nonzero().squeeze(1)  # already sorted by score within an image
            out.append(Detections(boxes[sel], prob[sel], marks[sel]))
        return out
