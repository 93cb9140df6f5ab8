"""Universal adversarial perturbation for faces (APF section 3.5, Eq. 7).

One perturbation ``u`` in the canonical aligned-face frame (the ``facenet`` template, 160x160)
is learned over a folder of faces so that every face plus ``u`` moves away from every clean face
of the set: ``u = argmax sum_i sum_j d(f(x_i + u), f(x_j))`` with ``|u| <= eps``. For each face,
``u`` is warped into the face's own region of the photo through the inverse of its alignment, so
the same universal pattern lands on the same facial parts of every photo. ``protect-faces --uap``
then starts each image-specific attack from it.

The optimisation reuses the shared attack engine: ``u`` is the perturbation of a grey canvas
``x = 0.5`` and each batch of faces runs a few engine steps starting from the current ``u``.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
from kornia.geometry.transform import warp_affine

from ..attacks import make_attack
from ..models.zoo import FACE_MODELS, embedding_distance
from .align import invert_affine, roi_to_crop_matrix
from .embed import FaceAnalyzer, FaceJob, stack_rois
from .templates import get_template

CANONICAL = "facenet"


def warp_uap(uap: torch.Tensor, jobs: Sequence[FaceJob], shape: torch.Size) -> torch.Tensor:
    """``uap`` ``(3, S, S)`` in the canonical crop frame, warped into each job's working ROI and
    zero-padded to ``shape`` ``(N, 3, H, W)`` (differentiable with respect to ``uap``)."""
    canon = get_template(CANONICAL)
    mats = torch.stack([roi_to_crop_matrix(j.work_landmarks, canon)[0] for j in jobs]).float()
    mats = mats.to(uap.device)
    out = warp_affine(uap[None].expand(len(jobs), -1, -1, -1), invert_affine(mats),
                      tuple(shape[-2:]), align_corners=True)
    valid = stack_rois([torch.ones_like(j.work) for j in jobs]).to(out)
    return out * valid


def learn_uap(photos: Sequence[torch.Tensor], models: Sequence[str] = ("facenet128", "dlib-resnet"), *,
              eps: float = 8 / 255, epochs: int = 5, batch_size: int = 8, steps_per_batch: int = 2,
              device: torch.device | str = "cpu", seed: int = 0,
              progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict]:
    """Learn a universal face perturbation from ``photos`` ((3, H, W) floats in [0, 1]).

    Returns ``u`` ``(3, 160, 160)`` with ``|u| <= eps`` and a summary (faces, mean distance
    ratio to the threshold before/after per model)."""
    if epochs < 1 or batch_size < 1 or steps_per_batch < 1:
        raise ValueError("epochs, batch_size and steps_per_batch must be >= 1")
    analyzer = FaceAnalyzer(device, mask_models=models)
    nets = analyzer.models(models)
    jobs: list[FaceJob] = []
    for px in photos:
        found, _ = analyzer.prepare([px])
        jobs += found
    if len(jobs) < 2:
        raise ValueError(f"a universal perturbation needs at least 2 faces, found {len(jobs)}")
    with torch.no_grad():
        clean = {m: torch.cat([analyzer.embed(jobs[k:k + batch_size],
                                              stack_rois([j.work for j in jobs[k:k + batch_size]]), {m: nets[m]})[m]
                               for k in range(0, len(jobs), batch_size)]) for m in models}
    size = get_template(CANONICAL).size
    canvas = torch.full((1, 3, *size), 0.5, device=analyzer.device)
    attack = make_attack("mifgsm", eps=eps, alpha=eps / 4, steps=steps_per_batch)
    u = torch.zeros(3, *size, device=analyzer.device)
    rng = random.Random(seed)
    order = list(range(len(jobs)))
    total = epochs * ((len(jobs) + batch_size - 1) // batch_size)
    done = 0

    def objective_for(idx: list[int]):
        batch = [jobs[i] for i in idx]
        x = stack_rois([j.work for j in batch])
        mask = stack_rois([j.mask.expand(3, -1, -1) for j in batch])

        def objective(xa: torch.Tensor) -> torch.Tensor:
            delta = warp_uap(xa[0] - 0.5, batch, x.shape) * mask
            adv = (x + delta).clamp(0, 1)
            loss = adv.new_zeros(())
            for m, net in nets.items():
                info = FACE_MODELS[m]
                emb = analyzer.embed(batch, adv, {m: net})[m]
                # Eq. 7: distance of each perturbed face to every clean face of the set
                d = torch.cdist(emb, clean[m]) if info.distance == "l2" else 1 - emb @ clean[m].T
                loss = loss + d.mean() / info.threshold
            return loss[None]

        return objective

    for _ in range(epochs):
        rng.shuffle(order)
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            adv = attack(canvas, objective_for(idx), init=u[None])
            u = (adv[0] - 0.5).detach()
            done += 1
            if progress:
                progress(done, total)
    summary = {"faces": len(jobs), "models": list(models), "eps": eps, "epochs": epochs,
               "self_distance_over_threshold": {}}
    with torch.no_grad():
        for m in models:
            info = FACE_MODELS[m]
            ratios = []
            for k in range(0, len(jobs), batch_size):
                batch = jobs[k:k + batch_size]
                x = stack_rois([j.work for j in batch])
                mask = stack_rois([j.mask.expand(3, -1, -1) for j in batch])
                emb = analyzer.embed(batch, (x + warp_uap(u, batch, x.shape) * mask).clamp(0, 1), {m: nets[m]})[m]
                ratios.append(embedding_distance(emb, clean[m][k:k + batch_size], info.distance) / info.threshold)
            summary["self_distance_over_threshold"][m] = round(float(torch.cat(ratios).mean()), 4)
    return u.cpu(), summary
