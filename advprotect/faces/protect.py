"""Protect every face of a photo against face recognition (APF-style dodging or impersonation).

For each face found by MTCNN, a region of interest (ROI) of the full-resolution photo that holds
every pixel any model's aligned crop is made of is cut out, brought to a *working resolution*
(native for small faces; for large faces scaled so one crop pixel is about 1.25 ROI pixels, which
keeps the cost flat in megapixels and puts the perturbation in frequencies that survive the
attacker's own down-sampling), and perturbed by the shared attack engine. Each step warps the
perturbed ROI to every surrogate's aligned crop (differentiable similarity warp), embeds it and
pushes it away from the face's enrolled feature plus APF's random offset (Eq. 13). The
perturbation is limited to the face (feathered mask) and to a per-pixel budget (JND map), then
resampled to the ROI's full resolution and added to the photo's own pixels.

Faces from many photos are attacked together in batches of ``batch_size``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..attacks import EOT, Ensemble, attack_key, budget_map, make_attack
from ..models.zoo import FACE_MODELS, embedding_distance, face_model_info
from .detect import FaceDetector
from .align import _PYRAMID_BELOW
from .embed import FaceAnalyzer, FaceJob, crop_scales, stack_rois, to_uint8, warp_to_crops, white_box_models

#: Preset knobs; every one can also be set on its own.
PRESETS: dict[str, dict[str, Any]] = {
    "low": dict(eps=4 / 255, steps=10, attack="mifgsm", models=("facenet128",), robust="",
                eot_samples=1, mask="jnd", refine_steps=10),
    "mid": dict(eps=8 / 255, steps=30, attack="mdifgsm", models=("facenet128", "dlib-resnet"),
                robust="", eot_samples=1, mask="none"),
    "high": dict(eps=8 / 255, steps=60, attack="mdifgsm", models=("facenet128", "dlib-resnet"),
                 robust="jpeg,resize,blur", eot_samples=2, mask="none"),
}


@dataclass
class ProtectConfig:
    """Settings of a protect-faces run (defaults: the ``mid`` preset, APF section 4.1)."""

    attack: str = "mdifgsm"
    eps: float = 8 / 255
    alpha: Optional[float] = None  # default eps / 4 (2/255 at eps 8/255)
    steps: int = 30
    decay: float = 1.0
    diversity_prob: float = 0.5
    models: tuple[str, ...] = ("facenet128", "dlib-resnet")
    weights: str = "adaptive"
    robust: str = ""
    eot_samples: int = 1
    mask: str = "none"
    budget_floor: float = 0.25
    apf_offset: bool = True
    offset_fraction: float = 0.10
    offset_range: float = 0.07
    min_face: int = 20  # native dlib still recognises 20-40 px faces (bench: protect_train-t-mf20)
    batch_size: int = 8
    feather: float = 0.1
    jitter: float = 1.0  # alignment jitter per step (1.0: +-2% shift, +-3% scale, +-3 deg)
    margin: float = 1.5  # a face is done when every surrogate's distance is >= margin x threshold
    refine_steps: int = 30  # most extra steps for faces still short of the margin (0: none)

    @classmethod
    def from_preset(cls, mode: str = "mid", **overrides: Any) -> "ProtectConfig":
        if mode not in PRESETS:
            raise ValueError(f"unknown mode {mode!r}: use {', '.join(PRESETS)}")
        values = {**PRESETS[mode], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (e.g. 8/255 = {8 / 255:.4f}), got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.models:
            raise ValueError("at least one surrogate model is needed")
        for m in self.models:
            info = face_model_info(m)
            if info.native:
                raise ValueError(f"{m} is a native black-box model and cannot be attacked; "
                                 f"white-box models: {', '.join(white_box_models())}")
        if self.mask not in ("jnd", "none"):
            raise ValueError(f"mask must be jnd or none, got {self.mask!r}")
        if self.min_face < 12:
            raise ValueError(f"min_face must be >= 12 pixels, got {self.min_face}")
        if self.margin <= 0:
            raise ValueError(f"margin must be > 0 (in threshold units, e.g. 1.5), got {self.margin}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.offset_fraction <= 1:
            raise ValueError(f"offset_fraction must be in [0, 1], got {self.offset_fraction}")

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (for the resume manifest and reports)."""
        d = asdict(self)
        d["models"] = list(self.models)
        return d


@dataclass
class PhotoResult:
    pixels: torch.Tensor  # (3, H, W) protected photo, [0, 1]
    faces: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    warnings: list[str]


class FaceProtector:
    """Detect, align and protect faces (see module docstring).

    Args:
        config: a :class:`ProtectConfig`.
        device: torch device for detection and the attack.
        target: optional ``(3, H, W)`` photo of the identity to impersonate; without it, dodging.
        uap: optional universal perturbation ``(3, S, S)`` in the canonical ``facenet`` crop frame
            (from :func:`learn_uap`), used as the starting point of every face's perturbation.
        seed: seeds APF's random offsets and the attack's randomness.
    """

    def __init__(self, config: ProtectConfig, device: torch.device | str = "cpu", *,
                 target: torch.Tensor | None = None, uap: torch.Tensor | None = None,
                 seed: int | None = None, detector: FaceDetector | None = None) -> None:
        config.validate()
        self.config = config
        self.device = torch.device(device)
        self.analyzer = FaceAnalyzer(self.device, min_face=config.min_face, mask_models=config.models,
                                     feather=config.feather, detector=detector)
        self.models = self.analyzer.models(config.models)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed if seed is not None else torch.seed() % (2**63))
        self.templates = self.analyzer.templates
        self.uap = uap.to(self.device) if uap is not None else None
        self.target_embeddings: dict[str, torch.Tensor] | None = None
        if target is not None:
            self.target_embeddings = self._identity_embeddings(target)

    # ------------------------------------------------------------------ preparation

    def _identity_embeddings(self, photo: torch.Tensor) -> dict[str, torch.Tensor]:
        faces = self.analyzer.embed_photos([photo], self.models, largest_only=True)[0]
        if not faces:
            raise ValueError("no face found in the --target image")
        return faces[0]["embeddings"]

    def evaluators(self, native: bool = True) -> "Evaluators":
        """Evaluation models (cached): torch models outside the ensemble, native dlib if asked."""
        key = "_evaluators_native" if native else "_evaluators"
        if not hasattr(self, key):
            setattr(self, key, Evaluators.default(self, want_native=native))
        return getattr(self, key)

    # ------------------------------------------------------------------ attack

    def _jitter(self, mats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Random small similarity changes of the alignment (shift, scale, rotation about the crop
        centre), drawn anew each step: whoever analyses the photo detects and aligns the face
        again, never with exactly our landmarks, so the perturbation must survive that."""
        j = self.config.jitter
        if j <= 0:
            return mats
        n = mats.shape[0]
        r = lambda: (torch.rand(n, generator=self.generator) * 2 - 1) * j  # noqa: E731
        ang, sc = r() * math.radians(3.0), 1 + r() * 0.03
        tx, ty = r() * 0.02 * size[1], r() * 0.02 * size[0]
        cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2
        cos, sin = sc * torch.cos(ang), sc * torch.sin(ang)
        jit = torch.zeros(n, 3, 3)
        jit[:, 0, 0], jit[:, 0, 1], jit[:, 1, 0], jit[:, 1, 1] = cos, -sin, sin, cos
        jit[:, 0, 2] = cx - cos * cx + sin * cy + tx
        jit[:, 1, 2] = cy - sin * cx - cos * cy + ty
        jit[:, 2, 2] = 1
        full = torch.cat([mats, mats.new_tensor([0, 0, 1]).expand(n, 1, 3)], 1)
        return (jit.to(mats) @ full)[:, :2]

    def _offset(self, emb: torch.Tensor) -> torch.Tensor:
        """APF Eq. 13: 10% of the dimensions ~ U(-0.07, 0.07), the rest 0."""
        n, d = emb.shape
        chosen = torch.rand(n, d, generator=self.generator) < self.config.offset_fraction
        vals = (torch.rand(n, d, generator=self.generator) * 2 - 1) * self.config.offset_range
        return (vals * chosen).to(emb)

    def attack_jobs(self, jobs: list[FaceJob], callback: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Attack a batch of faces; returns each face's working-resolution perturbation (3, h, w).

        Every face gets ``steps`` iterations. Faces that end short of the margin on some model
        (:meth:`_margin_scores` below ``config.margin``) then get up to ``refine_steps`` more,
        from where they stand, each stopping as soon as it clears the margin: the hard faces
        (small, low-contrast) get the extra work, the easy ones cost nothing more."""
        if not jobs:
            return []
        cfg = self.config
        x = stack_rois([j.work for j in jobs])
        maskb = stack_rois([j.mask.expand(3, -1, -1) for j in jobs])[:, :1]
        budget = budget_map(x, cfg.eps, cfg.mask, cfg.budget_floor) * maskb
        clean = self.analyzer.clean_embeddings(jobs, self.models)  # cached on the jobs for measure()
        terms: dict[str, dict[str, Any]] = {}
        for m in self.models:
            mats = torch.stack([j.matrices[m] for j in jobs])
            size = self.templates[m].size
            # no face ever needs a pyramid level, whatever the jitter (scale >= 1 - 3% x jitter):
            # warp the batch in one call without testing each step
            batched = bool((crop_scales(mats) * (1 - 0.03 * max(0.0, cfg.jitter)) >= _PYRAMID_BELOW).all()) or None
            if self.target_embeddings is not None:
                ref = self.target_embeddings[m].expand_as(clean[m])
            else:
                ref = clean[m] + (self._offset(clean[m]) if cfg.apf_offset else 0.0)
            terms[m] = dict(mats=mats, size=size, batched=batched, ref=ref, clean=clean[m])
        init = self._uap_init(jobs, x.shape) if self.uap is not None else None
        step_cb = (lambda step, _loss: callback(step)) if callback else None
        attack = make_attack(cfg.attack, **self._attack_kwargs())
        x_adv = attack(x, self._objective(terms), eps_map=budget, init=init, callback=step_cb)
        if cfg.refine_steps > 0 and self._refinable():
            with torch.no_grad():
                lag = (self._margin_scores(x_adv, terms) < cfg.margin).nonzero().flatten()
            if len(lag):
                sub = {m: {k: (v[lag] if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                       for m, t in terms.items()}
                more = make_attack(cfg.attack, **{**self._attack_kwargs(), "steps": cfg.refine_steps,
                                                  "early_stop": True})
                x_adv = x_adv.detach().clone()
                x_adv[lag] = more(x[lag], self._objective(sub), eps_map=budget[lag], init=(x_adv - x)[lag],
                                  success=lambda xa: self._margin_scores(xa, sub) >= cfg.margin)
        delta = x_adv - x
        return [delta[i, :, : j.work.shape[1], : j.work.shape[2]] for i, j in enumerate(jobs)]

    def _refinable(self) -> bool:
        """Iterative sign-gradient attacks can continue from a point (not FGSM's single step, not
        CW-L2's own optimiser)."""
        return attack_key(self.config.attack) not in ("fgsm", "cwl2")

    def _objective(self, terms: dict[str, dict[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The attack's loss: per model, the distance of the (jittered) crops' embedding from the
        reference (enrolled feature + APF offset; the target when impersonating) in units of the
        model's threshold, negated to impersonate; an ensemble when there are several models."""
        sign = -1.0 if self.target_embeddings is not None else 1.0
        losses: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        for m, t in terms.items():
            net, info = self.models[m], FACE_MODELS[m]

            def loss(xa: torch.Tensor, net=net, info=info, t=t) -> torch.Tensor:
                crops = warp_to_crops(xa, self._jitter(t["mats"], t["size"]), t["size"], batched=t["batched"])
                return sign * embedding_distance(net(crops), t["ref"], info.distance) / info.threshold

            losses[m] = loss
        return Ensemble(losses, self.config.weights) if len(losses) > 1 else next(iter(losses.values()))

    def _margin_scores(self, xa: torch.Tensor, terms: dict[str, dict[str, Any]]) -> torch.Tensor:
        """(B,) how far each face is past every model's threshold, in threshold units, with the
        alignment as it is (no jitter): dodging, min over models of distance(clean) / threshold;
        impersonating, min of threshold / distance(target). Above 1 means no model verifies."""
        score = None
        for m, t in terms.items():
            info = FACE_MODELS[m]
            emb = self.models[m](warp_to_crops(xa, t["mats"], t["size"], batched=t["batched"]))
            if self.target_embeddings is None:
                s = embedding_distance(emb, t["clean"], info.distance) / info.threshold
            else:
                s = info.threshold / embedding_distance(emb, t["ref"], info.distance).clamp_min(1e-6)
            score = s if score is None else torch.minimum(score, s)
        return score

    def _attack_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = dict(eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha or cfg.eps / 4)
        name = attack_key(cfg.attack)
        if name in ("mifgsm", "mdifgsm", "tifgsm"):
            kw["decay"] = cfg.decay
        if name in ("difgsm", "mdifgsm", "tifgsm"):
            kw["diversity_prob"] = cfg.diversity_prob
        if name == "fgsm":
            kw = dict(eps=cfg.eps)
        if name == "cwl2":
            kw = dict(eps=cfg.eps, steps=cfg.steps)
        if cfg.robust and name != "cwl2":
            kw["eot"] = EOT(cfg.robust, samples=cfg.eot_samples)
        return kw

    def _uap_init(self, jobs: list[FaceJob], shape: torch.Size) -> torch.Tensor:
        """The universal perturbation warped into each face's working ROI (engine start point)."""
        from .uap import warp_uap

        return warp_uap(self.uap, jobs, shape)

    # ------------------------------------------------------------------ compose + measure

    def compose(self, photo: torch.Tensor, jobs: list[FaceJob], deltas: list[torch.Tensor]) -> torch.Tensor:
        """The protected photo: each face's perturbation resampled to full resolution, added.

        Only the bounding box of the faces' ROIs is touched (outside it the photo is copied),
        so the temporaries are face-sized whatever the photo's size."""
        out = photo.clone()
        if not jobs:
            return out
        bx0, by0 = min(j.roi_box[0] for j in jobs), min(j.roi_box[1] for j in jobs)
        bx1, by1 = max(j.roi_box[2] for j in jobs), max(j.roi_box[3] for j in jobs)
        canvas = photo.new_zeros(photo.shape[0], by1 - by0, bx1 - bx0)
        for j, d in zip(jobs, deltas):
            x0, y0, x1, y1 = j.roi_box
            d = d.to(photo.device, photo.dtype)
            if j.scale < 1.0:
                d = F.interpolate(d[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
            canvas[:, y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] += d
        canvas.clamp_(-self.config.eps, self.config.eps)
        region = out[:, by0:by1, bx0:bx1]
        region.add_(canvas).clamp_(0, 1)
        return out

    def protect(self, photos: Sequence[torch.Tensor], *, progress: Callable[[int], None] | None = None,
                evaluators: Optional["Evaluators"] = None) -> list[PhotoResult]:
        """Protect every face of every photo; photos are (3, H, W) float in [0, 1] (not modified)."""
        t0 = time.perf_counter()
        jobs, skipped = self.analyzer.prepare(photos)
        deltas: list[torch.Tensor] = []
        bs = self.config.batch_size
        for k in range(0, len(jobs), bs):
            deltas += self.attack_jobs(jobs[k:k + bs], callback=progress)
        results = []
        for pi, photo in enumerate(photos):
            mine = [(j, d) for j, d in zip(jobs, deltas) if j.photo == pi]
            if mine:
                out = self.compose(photo, [j for j, _ in mine], [d for _, d in mine])
                out.mul_(255).round_().div_(255)  # what an 8-bit file will hold (in place: no copies)
            else:
                out = photo.clone()
            warnings = [] if mine else [
                "no face to protect (all under --min-face): written unchanged" if skipped[pi]
                else "no face found: written unchanged"]
            results.append(PhotoResult(out, [], skipped[pi], warnings))
        elapsed = time.perf_counter() - t0
        rows = self.measure_many([(photo, results[pi].pixels, [j for j in jobs if j.photo == pi])
                                  for pi, photo in enumerate(photos)], evaluators)
        for pi in range(len(photos)):
            results[pi].faces = rows[pi]
            for f in results[pi].faces:
                f["seconds"] = round(elapsed / max(1, len(jobs)), 3)
        return results

    def measure(self, photo: torch.Tensor, protected: torch.Tensor, jobs: list[FaceJob],
                evaluators: Optional["Evaluators"] = None) -> list[dict[str, Any]]:
        """Per face: distance clean->protected and verified yes/no for every surrogate and every
        evaluation model (white-box = in the ensemble; black-box = not), SSIM/PSNR of the face."""
        return self.measure_many([(photo, protected, jobs)], evaluators)[0]

    @torch.no_grad()
    def measure_many(self, items: Sequence[tuple[torch.Tensor, torch.Tensor, list[FaceJob]]],
                     evaluators: Optional["Evaluators"] = None) -> list[list[dict[str, Any]]]:
        """:meth:`measure` of several ``(photo, protected, jobs)`` at once: the embeddings of every
        face of every photo come from one batched forward per model, and the clean ones are
        reused from the attack (cached on the jobs) instead of computed again."""
        from ..evaluate.quality import image_quality

        if not any(jobs for _, _, jobs in items):
            return [[] for _ in items]
        ev = evaluators or self.evaluators(native=False)
        torch_models = {**self.models, **ev.torch_models}
        all_jobs = [j for _, _, jobs in items for j in jobs]
        clean = self.analyzer.clean_embeddings(all_jobs, torch_models)
        after = self.analyzer.embed_works([self.analyzer.rework(prot, j) for _, prot, jobs in items for j in jobs],
                                          all_jobs, torch_models)
        out: list[list[dict[str, Any]]] = []
        i = 0
        for photo, protected, jobs in items:
            native = ev.native_pairs(photo, protected, jobs) if jobs and ev.native is not None else None
            rows = []
            for k, j in enumerate(jobs):
                x0, y0, x1, y1 = j.roi_box
                q = image_quality(photo[:, y0:y1, x0:x1], protected[:, y0:y1, x0:x1])
                models = {}
                for m in torch_models:
                    info = FACE_MODELS[m]
                    d = float(embedding_distance(after[m][i:i + 1], clean[m][i:i + 1], info.distance))
                    models[m] = {"white_box": m in self.models, "distance": round(d, 4),
                                 "threshold": info.threshold, "verified_before": True,
                                 "verified_after": d < info.threshold}
                if native is not None:
                    # once dlib's own network (its torch port) is attacked, native dlib is no black box
                    models["dlib"] = {"white_box": "dlib-resnet" in self.models, **native[k]}
                rows.append({"face": j.index, "box": [round(v, 1) for v in j.box],
                             "score": round(j.score, 4), "models": models,
                             "face_ssim": q["ssim"], "face_psnr": q["psnr"]})
                i += 1
            out.append(rows)
        return out

#: Photos with more pixels get the native dlib check on the region around their faces only.
NATIVE_WHOLE_PHOTO_PIXELS = 4_000_000
#: ... and dlib finds faces there on a copy at most this many pixels wide.
NATIVE_DETECT_MAX_SIDE = 2048


@dataclass
class Evaluators:
    """Models a protection is measured with beyond the attacked ensemble."""

    torch_models: dict[str, torch.nn.Module]
    native: Any = None  # DlibVerifier or None

    @classmethod
    def default(cls, protector: FaceProtector, want_native: bool = True) -> "Evaluators":
        extra = protector.analyzer.models(m for m in white_box_models() if m not in protector.models)
        native = None
        if want_native:
            from .dlib_native import DlibVerifier

            if DlibVerifier.available():
                native = DlibVerifier.load()
        return cls(extra, native)

    def native_pairs(self, photo: torch.Tensor, protected: torch.Tensor,
                     jobs: list[FaceJob]) -> list[dict[str, Any]]:
        """Native dlib on the clean and the protected photo; faces matched to jobs by box overlap.

        Photos up to :data:`NATIVE_WHOLE_PHOTO_PIXELS` are given to dlib whole (as an attacker
        running dlib would). In larger ones dlib looks at the region around the faces
        (:func:`native_region`), the same region of both photos, and finds faces on a copy of
        it at most :data:`NATIVE_DETECT_MAX_SIDE` pixels wide (landmarks and descriptor chips
        still come from full resolution), so the check does not grow with the megapixels."""
        h, w = photo.shape[-2:]
        verifier = self.native
        x0, y0, x1, y1 = 0, 0, w, h
        if h * w > NATIVE_WHOLE_PHOTO_PIXELS:
            x0, y0, x1, y1 = native_region([j.box for j in jobs], (h, w))
            verifier = copy.copy(self.native)
            verifier.detect_max_side = min(verifier.detect_max_side or NATIVE_DETECT_MAX_SIDE, NATIVE_DETECT_MAX_SIDE)
        clean = verifier.faces(to_uint8(photo[:, y0:y1, x0:x1]))
        prot = verifier.faces(to_uint8(protected[:, y0:y1, x0:x1]))
        rows = []
        for j in jobs:
            box = [j.box[0] - x0, j.box[1] - y0, j.box[2] - x0, j.box[3] - y0]
            c = _match(clean, box)
            p = _match(prot, box)
            if c is None:
                rows.append({"verified_before": False, "verified_after": False, "distance": None,
                             "note": "dlib found no face here in the clean photo"})
                continue
            if p is None:
                rows.append({"verified_before": True, "verified_after": False, "distance": None,
                             "note": "dlib found no face here in the protected photo"})
                continue
            d = float(self.native.distance(c.descriptor, p.descriptor))
            rows.append({"verified_before": True, "verified_after": d < self.native.threshold,
                         "distance": round(d, 4), "threshold": self.native.threshold})
        return rows


def native_region(boxes: Sequence[Sequence[float]], hw: Sequence[int], context: float = 1.5,
                  align: int = 8) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the union of the face ``boxes`` (photo pixels), each grown by
    ``context`` times its size on every side, clipped to the photo ``hw``; the corner is moved
    to a multiple of ``align`` pixels so dlib's HOG cells fall on the same grid as in the whole
    photo."""
    h, w = int(hw[0]), int(hw[1])
    x0, y0, x1, y1 = w, h, 0, 0
    for b in boxes:
        bw, bh = b[2] - b[0], b[3] - b[1]
        x0, y0 = min(x0, math.floor(b[0] - context * bw)), min(y0, math.floor(b[1] - context * bh))
        x1, y1 = max(x1, math.ceil(b[2] + context * bw)), max(y1, math.ceil(b[3] + context * bh))
    x0, y0 = max(0, x0 // align * align), max(0, y0 // align * align)
    x1, y1 = min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, w, h
    return x0, y0, x1, y1


def _match(faces: list, box: list[float]):
    best, best_iou = None, 0.2
    for f in faces:
        b = [float(v) for v in f.box]
        ix = max(0.0, min(b[2], box[2]) - max(b[0], box[0]))
        iy = max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
        inter = ix * iy
        union = (b[2] - b[0]) * (b[3] - b[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
        iou = inter / union if union > 0 else 0.0
        if iou > best_iou:
            best, best_iou = f, iou
    return best
