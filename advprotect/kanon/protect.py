"""K-anonymity protection of photos (paper 003) through the shared attack engine.

:class:`KAnonProtector` takes photos ``(3, H, W)`` in [0, 1], their true labels (or None: the
classifier's clean top-1) and their target ranks ``k`` (2..K+1, see
:func:`advprotect.kanon.ranking.assign_target_ranks`), and returns protected photos where the true
label sits at rank ``>= k``. Each batch of same-shape regions is attacked with the
:class:`~advprotect.kanon.objective.KAnonObjective` by one engine attack (default ``cwl2``: Adam
on ``||p||_2^2 - c * objective``, the closest engine relative of the paper's L-BFGS-style
optimisation) with ``early_stop`` so each sample stops the step its constraint holds. The result
is rounded to 8 bits and the rank is measured again on exactly those pixels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..attacks import EOT, make_attack
from ..attacks.base import check_int, check_range
from .classifiers import Classifier, Sample
from .objective import KAnonObjective
from .ranking import true_rank

__all__ = ["KAnonConfig", "KAnonProtector", "KAnonResult"]

SIGN_ATTACKS = ("fgsm", "ifgsm", "mifgsm", "difgsm", "mdifgsm", "tifgsm", "pgd")


@dataclass
class KAnonConfig:
    """Attack settings (validated by :meth:`validate`).

    ``attack``: an engine attack name (default cwl2; sign attacks overshoot the target rank
    because their smallest step already changes every pixel by 1/255); ``eps``: L-inf budget;
    ``steps``: iterations (early stop ends most samples much sooner); ``lr``: cwl2 learning rate;
    ``c``: cwl2 weight of the objective against its squared L2 norm; ``alpha``: step of the sign
    attacks; ``l2_weight``/``ssim_weight``: weights of ``||p||_2`` and ``1 - SSIM`` in Eq. 6;
    ``margin``: logit margin of the constraint; ``robust``/``eot_samples``: EOT transforms;
    ``search``: extra rounds for samples that miss their constraint, each weighting the
    classification losses 10x more against the L2 and SSIM terms, the last one without them (the paper's "line search" on the
    trade-off; 0: a single round with the given weights).
    """

    attack: str = "cwl2"
    eps: float = 8 / 255
    steps: int = 100
    lr: float = 0.01
    c: float = 1.0
    alpha: float = 1 / 255
    l2_weight: float = 1.0
    ssim_weight: float = 1.0
    margin: float = 0.0
    robust: str = ""
    eot_samples: int = 1
    batch_size: int = 4
    search: int = 3

    def reg_scales(self) -> list[float]:
        """Regulariser weight scales tried in turn on the samples still failing: 1, 0.1, ...,
        10^-(search-1), then 0 (classification losses only)."""
        if self.search == 0:
            return [1.0]
        return [10.0 ** -i for i in range(self.search)] + [0.0]

    def validate(self) -> KAnonConfig:
        check_range("eps", self.eps, 0.0, 1.0, lo_open=True)
        check_int("steps", self.steps, 1)
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("c", self.c, 0.0, lo_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0, lo_open=True)
        check_range("l2_weight", self.l2_weight, 0.0)
        check_range("ssim_weight", self.ssim_weight, 0.0)
        check_range("margin", self.margin, 0.0)
        check_int("eot_samples", self.eot_samples, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("search", self.search, 0, 6)
        self.build_attack()
        return self

    def key(self) -> str:
        return self.attack.strip().lower().replace("-", "").replace("_", "")

    def build_attack(self, boost: float = 1.0):
        """The engine attack; ``boost`` multiplies cwl2's ``c`` (the objective's weight against
        its own squared L2 norm) in the later search rounds."""
        name = self.key()
        eot = EOT(self.robust, samples=self.eot_samples) if self.robust and self.robust.strip() else None
        if name == "cwl2":
            return make_attack("cwl2", eps=self.eps, steps=self.steps, lr=self.lr, c=self.c * boost,
                               binary_search_steps=1, eot=eot, early_stop=True)
        if name == "fgsm":
            raise ValueError("fgsm is a single step and cannot stop when the ranking constraint holds; "
                             "use cwl2 (default), ifgsm, pgd or another iterative attack")
        kw: dict[str, Any] = dict(eps=self.eps, steps=self.steps, alpha=self.alpha, eot=eot, early_stop=True)
        if name == "pgd":
            kw["random_start"] = False  # start at the clean image: the constraint is met with least change
        return make_attack(name, **kw)

    def settings(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KAnonResult:
    """Outcome for one photo."""

    pixels: Tensor  #: (3, H, W) protected photo (8-bit values), or the input unchanged
    info: dict[str, Any]
    warnings: list[str]
    error: str | None = None


class KAnonProtector:
    """Protect photos so the true label lands at rank ``>= k`` (see module docstring)."""

    def __init__(self, classifier: Classifier, config: KAnonConfig | None = None) -> None:
        self.classifier = classifier
        self.config = (config or KAnonConfig()).validate()

    def protect(self, photos: Sequence[Tensor], labels: Sequence[int | None],
                targets: Sequence[int]) -> list[KAnonResult]:
        """Protect ``photos`` (each ``(3, H, W)`` in [0, 1]; not modified).

        Args:
            photos: the photos.
            labels: true class index per photo, or None for the clean top-1.
            targets: target rank ``k >= 2`` per photo (``k <= number of classes``).
        """
        if not (len(photos) == len(labels) == len(targets)):
            raise ValueError("photos, labels and targets must have the same length")
        clf = self.classifier
        for t in targets:
            if not 2 <= int(t) <= clf.num_classes:
                raise ValueError(f"target rank {t} outside [2, {clf.num_classes}] for {clf.name}")
        t0 = time.perf_counter()
        samples, reasons = clf.prepare(photos)
        results: list[KAnonResult | None] = [None] * len(photos)
        for i, why in reasons.items():
            results[i] = KAnonResult(photos[i].clone(), {"analysed": False, "reason": why},
                                     [f"{why}: written unchanged"])
        # batches of samples whose regions can be stacked
        groups: dict[Any, list[Sample]] = {}
        for s in samples:
            key = "any" if hasattr(clf, "stack_masks") else tuple(s.x.shape)
            groups.setdefault(key, []).append(s)
        bs = self.config.batch_size
        for group in groups.values():
            for k in range(0, len(group), bs):
                batch = group[k:k + bs]
                for s, r in zip(batch, self._attack(photos, batch, labels, targets)):
                    results[s.photo] = r
        elapsed = time.perf_counter() - t0
        for r in results:
            if r is not None and r.info.get("analysed"):
                r.info["seconds"] = round(elapsed / max(1, len(samples)), 3)
        return [r for r in results if r is not None]

    def _attack(self, photos: Sequence[Tensor], batch: list[Sample], labels, targets) -> list[KAnonResult]:
        from ..evaluate.quality import image_quality

        clf, cfg = self.classifier, self.config
        x = clf.stack(batch)
        fn = clf.batch_logits(batch)
        with torch.no_grad():
            clean = fn(x)
        top1 = clean.argmax(1)
        lab = torch.tensor([top1[i].item() if labels[s.photo] is None else int(labels[s.photo])
                            for i, s in enumerate(batch)], device=x.device)
        tgt = torch.tensor([int(targets[s.photo]) for s in batch], device=x.device)
        # the paper sets its trade-off "empirically using line search": samples that miss their
        # constraint are attacked again from the clean image with the classification losses
        # weighted 10x more against the L2 and SSIM terms (and, for cwl2, against its own
        # squared L2 norm), the last round with the classification losses alone
        adv: list[Tensor] = list(x)
        scales: list[float] = [1.0] * len(batch)
        todo = list(range(len(batch)))
        for r, scale in enumerate(self.config.reg_scales()):
            if not todo:
                break
            sub = [batch[i] for i in todo]
            xs = clf.stack(sub)
            # quantising is only meaningful when the region is the photo itself (a face region
            # at working resolution is resampled into the photo, then checked below)
            objective = KAnonObjective(clf.attack_logits(sub), xs, lab[todo], tgt[todo],
                                       l2_weight=cfg.l2_weight * scale, ssim_weight=cfg.ssim_weight * scale,
                                       margin=cfg.margin, check_fns=clf.check_logits(sub),
                                       quantise=clf.region_is_photo)
            eps_map = None
            if hasattr(clf, "stack_masks"):
                eps_map = (cfg.eps * clf.stack_masks(sub)).expand_as(xs).contiguous()
            xa = cfg.build_attack(boost=10.0 ** r)(xs, objective, success=objective.success, eps_map=eps_map)
            # the constraint must hold on the 8-bit photo as it will be written
            regions = []
            for j, i in enumerate(todo):
                adv[i], scales[i] = xa[j], scale
                prot = (clf.compose(photos[batch[i].photo], batch[i], xa[j], cfg.eps) * 255).round() / 255
                regions.append(Sample(batch[i].photo, clf.region_of(prot, batch[i]), batch[i].mask, batch[i].context))
            objective.quantise = False
            ok = objective.success(clf.stack(regions))
            todo = [i for j, i in enumerate(todo) if not bool(ok[j])]
        x_adv = adv
        rank_before = true_rank(clean, lab)
        out: list[KAnonResult] = []
        for i, s in enumerate(batch):
            photo = photos[s.photo]
            prot = clf.compose(photo, s, x_adv[i], cfg.eps)
            prot = (prot * 255).round() / 255  # what an 8-bit file holds
            with torch.no_grad():
                region = clf.region_of(prot, s)
                z = clf.batch_logits([s])(clf.stack([Sample(s.photo, region, s.mask, s.context)]))
            r_after = int(true_rank(z, lab[i:i + 1])[0])
            q = image_quality(photo.to(prot.device), prot)
            diff = (prot - photo.to(prot.device))
            k = int(tgt[i])
            info = {
                "analysed": True,
                "classifier": clf.name,
                "true_label": int(lab[i]),
                "true_label_name": clf.label_name(int(lab[i])),
                "label_source": "clean top-1" if labels[s.photo] is None else "given",
                "clean_top1": int(top1[i]),
                "rank_before": int(rank_before[i]),
                "target_rank": k,
                "rank_after": r_after,
                "top1_after": int(z.argmax(1)[0]),
                "success": r_after >= k,
                "regulariser_scale": scales[i],
                "exact": r_after == k,
                "ssim": q["ssim"],
                "psnr": q["psnr"],
                "mse": round(float(diff.pow(2).mean()), 8),
                "linf_255": q["linf_255"],
                **s.info,
            }
            warns = []
            if r_after < k:
                warns.append(f"ranking constraint not met: true label at rank {r_after}, target >= {k} "
                             "(try more --steps or a larger --eps)")
            if int(rank_before[i]) > 1:
                warns.append(f"the classifier already ranks the true label {int(rank_before[i])} on the clean photo")
            out.append(KAnonResult(prot.to(photo.device), info, warns))
        return out
