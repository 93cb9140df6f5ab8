"""Calibrate each face model's verification thresholds at fixed false-accept rates.

Protocol (reproduced by ``advprotect models calibrate``): the largest face (MTCNN, faces of at least 40 px, the protect-faces default) of every photo of the
5-celebrity ``train/`` split (never ``val/``) is embedded; every pair of photos of different people
is an impostor pair; the threshold at FAR ``f`` is the ``f``-quantile of impostor distances (a pair
closer than it is accepted as the same person). Genuine pairs (same person, different photos) give
the true-accept rate and the pair accuracy at each threshold.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..models.zoo import FACE_MODELS, embedding_distance, threshold_at_far

FARS = {"far1e-2": 1e-2, "far1e-3": 1e-3}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def identity_photos(root: Path) -> dict[str, list[Path]]:
    """``{identity: [photos]}`` for a folder with one subfolder per identity."""
    return {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir()) if d.is_dir()
    }


def pair_distances(embeddings: list[tuple[str, torch.Tensor]], distance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Genuine and impostor distances over all unordered pairs of ``(identity, embedding)``."""
    genuine, impostor = [], []
    for (ia, ea), (ib, eb) in itertools.combinations(embeddings, 2):
        d = float(embedding_distance(ea[None].double(), eb[None].double(), distance))
        (genuine if ia == ib else impostor).append(d)
    return torch.tensor(genuine), torch.tensor(impostor)


def summarise(genuine: torch.Tensor, impostor: torch.Tensor) -> dict:
    out: dict = {"genuine_pairs": int(genuine.numel()), "impostor_pairs": int(impostor.numel()),
                 "thresholds": {}, "true_accept": {}, "accuracy": {}}
    for key, far in FARS.items():
        thr = threshold_at_far(impostor, far)
        out["thresholds"][key] = round(thr, 4)
        out["true_accept"][key] = round(float((genuine < thr).double().mean()), 4)
        correct = int((genuine < thr).sum()) + int((impostor >= thr).sum())
        out["accuracy"][key] = round(correct / (genuine.numel() + impostor.numel()), 4)
    return out


def calibrate(photos: dict[str, list[Path]], models: Iterable[str], *, device="cpu", min_face: int = 40,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run the protocol above for ``models`` (white-box names and/or ``dlib``)."""
    from ..faces.embed import FaceAnalyzer
    from ..io import read_image

    say = progress or (lambda _m: None)
    models = list(models)
    torch_names = [m for m in models if not FACE_MODELS[m].native]
    native = [m for m in models if FACE_MODELS[m].native]
    per_model: dict[str, list[tuple[str, torch.Tensor]]] = {m: [] for m in models}
    missed: dict[str, int] = {m: 0 for m in models}
    analyzer = FaceAnalyzer(device, min_face=min_face) if torch_names else None
    verifier = None
    if native:
        from ..faces.dlib_native import DlibVerifier

        verifier = DlibVerifier.load()
    total = sum(len(v) for v in photos.values())
    done = 0
    for ident, paths in photos.items():
        for path in paths:
            done += 1
            say(f"{done}/{total} {ident}/{path.name}")
            px = read_image(path).pixels
            if analyzer is not None:
                faces = analyzer.embed_photos([px], torch_names, largest_only=True)[0]
                for m in torch_names:
                    if faces:
                        per_model[m].append((ident, faces[0]["embeddings"][m].cpu()))
                    else:
                        missed[m] += 1
            if verifier is not None:
                desc = verifier.describe_largest(px)
                for m in native:
                    if desc is None:
                        missed[m] += 1
                    else:
                        per_model[m].append((ident, torch.as_tensor(desc)))
    report = {"photos": total, "models": {}}
    for m in models:
        genuine, impostor = pair_distances(per_model[m], FACE_MODELS[m].distance)
        report["models"][m] = {"faces": len(per_model[m]), "missed": missed[m],
                               "distance": FACE_MODELS[m].distance, **summarise(genuine, impostor)}
    return report
