"""Peer ratio: our MI-FGSM (the shared engine, ``make_attack("mifgsm")``) vs torchattacks'
``MIFGSM`` on facenet128, same aligned face crops, eps, alpha, steps, decay, batch and loss.
Target: ours <= 1.0x its time per batch.

The loss is protect-faces' dodging distance ``||f(x_adv) - (f(x) + o)||_2`` to each face's clean
embedding moved by APF's random offset ``o`` (Eq. 13: 10% of the dimensions ~ U(-0.07, 0.07); without
it the distance starts at 0, where its gradient is 0, and neither attack would move).
torchattacks takes a classifier and ``nn.CrossEntropyLoss``; the wrapper below gives it logits
``[0, d]`` with label 0, whose cross-entropy ``log(1 + e^d)`` grows with ``d`` and whose gradient is
``sigmoid(d) / B`` times that of ``d``: a positive per-sample factor, which the per-sample L1
normalisation of MI-FGSM removes, so both attacks take the same steps (the agreement of the two
outputs is reported). torchattacks is only in the bench environment (bench/requirements.txt).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import Context, interleaved, median, paired_ratio, r


class DodgeLogits(nn.Module):
    """``x -> [0, d(x)]`` logits with ``d`` the L2 distance of the embedding to ``ref``."""

    def __init__(self, net: nn.Module, ref: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("ref", ref)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (self.net(x) - self.ref).norm(dim=1)
        return torch.stack([torch.zeros_like(d), d], dim=1)


def run(ctx: Context) -> dict:
    try:
        import torchattacks
    except ImportError as exc:
        return {"skipped": f"torchattacks is not installed ({exc}); pip install --no-deps -r bench/requirements.txt"}
    from advprotect.attacks import make_attack
    from advprotect.faces.align import align
    from advprotect.faces.embed import stack_rois
    from advprotect.models.zoo import FACE_MODELS, embedding_distance

    from .floor import load_faces

    batch, steps, rounds = (2, 2, 2) if ctx.quick else (8, 10, 5)
    eps, alpha, decay = 8 / 255, 2 / 255, 1.0
    prot, jobs = load_faces(ctx, batch)
    name = "facenet128"
    net = prot.models.get(name) or prot.analyzer.models([name])[name]
    x = stack_rois([j.work for j in jobs])
    mats = torch.stack([j.matrices[name] for j in jobs]).to(x.device)
    crops = align(x, mats, prot.templates[name].size, antialias=True).detach().contiguous()
    with torch.inference_mode():
        clean = net(crops).clone()
    gen = torch.Generator().manual_seed(0)
    chosen = torch.rand(clean.shape, generator=gen) < 0.10
    offset = (torch.rand(clean.shape, generator=gen) * 2 - 1) * 0.07 * chosen
    ref = clean + offset.to(clean)
    info = FACE_MODELS[name]

    ours = make_attack("mifgsm", eps=eps, alpha=alpha, steps=steps, decay=decay)

    def objective(xa: torch.Tensor) -> torch.Tensor:
        return embedding_distance(net(xa), ref, info.distance)

    theirs = torchattacks.MIFGSM(DodgeLogits(net, ref).eval(), eps=eps, alpha=alpha, steps=steps, decay=decay)
    labels = torch.zeros(len(crops), dtype=torch.long, device=crops.device)
    outs: dict[str, torch.Tensor] = {}

    def run_ours() -> None:
        outs["ours"] = ours(crops, objective)

    def run_theirs() -> None:
        outs["theirs"] = theirs(crops, labels)

    t = interleaved({"ours": run_ours, "torchattacks": run_theirs}, rounds, sync=ctx.sync)
    same = (outs["ours"] - outs["theirs"]).abs() < 1e-6
    with torch.no_grad():
        d_ours = embedding_distance(net(outs["ours"]), ref, info.distance).mean()
        d_theirs = embedding_distance(net(outs["theirs"]), ref, info.distance).mean()
    out = {
        "model": name,
        "batch": len(crops),
        "crop_hw": list(crops.shape[-2:]),
        "steps": steps,
        "eps": r(eps, 6),
        "alpha": r(alpha, 6),
        "decay": decay,
        "rounds": rounds,
        "torchattacks_version": torchattacks.__version__,
        "ours_s_per_batch": r(median(t["ours"])),
        "torchattacks_s_per_batch": r(median(t["torchattacks"])),
        "peer_ratio": r(paired_ratio(t["ours"], t["torchattacks"]), 3),
        "target": 1.0,
        "outputs_equal_fraction": r(float(same.float().mean()), 4),
        "mean_distance_start": r(float(embedding_distance(clean, ref, info.distance).mean())),
        "mean_distance_ours": r(float(d_ours)),
        "mean_distance_torchattacks": r(float(d_theirs)),
    }
    out["meets_target"] = out["peer_ratio"] <= out["target"]
    return out
