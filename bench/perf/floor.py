"""Floor ratio: one attack step of the default protect-faces preset (jittered warp of the working
ROIs to every surrogate's crop, input diversity, ensemble forward + backward, momentum, sign step,
projection) over a bare forward + backward of the same surrogate ensemble on the same faces
(already aligned crops, no warp). Target <= 1.10.

A step is timed between two consecutive calls of the engine's per-step callback, so the
once-per-batch setup (clean embeddings, budget map) is not part of it. Rounds interleave one bare
forward + backward with one short attack; the ratio is the median over rounds of
(median step of the round) / (bare time of the round).
"""

from __future__ import annotations

import time

import torch

from .common import Context, default_mode, interleaved, median, r


def load_faces(ctx: Context, faces: int):
    """A protector with the default preset and ``faces`` prepared jobs from the celebrity photos."""
    from advprotect.evaluate.calibrate import identity_photos
    from advprotect.faces.protect import FaceProtector, ProtectConfig
    from advprotect.io import read_image
    from advprotect.models.registry import dataset

    people = identity_photos(dataset("celebrity") / "train")
    photos = [read_image(p).pixels for ps in people.values() for p in ps[:3]]
    prot = FaceProtector(ProtectConfig.from_preset(default_mode()), ctx.device, seed=0)
    jobs: list = []
    for k in range(0, len(photos), 4):
        jobs += prot.analyzer.prepare(photos[k:k + 4])[0]
        if len(jobs) >= faces:
            break
    return prot, jobs[:faces]


def run(ctx: Context) -> dict:
    from advprotect.faces import embed
    from advprotect.faces.align import align
    from advprotect.faces.embed import stack_rois

    # the crops in the layout the attack feeds the models (channels-last on the CPU since #9)
    warp = getattr(embed, "warp_to_crops", lambda x, m, s: align(x, m, s, antialias=True))

    faces, rounds, steps = (2, 2, 3) if ctx.quick else (8, 9, 4)
    prot, jobs = load_faces(ctx, faces)
    faces = len(jobs)
    x = stack_rois([j.work for j in jobs])
    crops = {m: warp(x, torch.stack([j.matrices[m] for j in jobs]).to(x.device), prot.templates[m].size).detach()
             for m in prot.models}

    def bare() -> None:
        for m, net in prot.models.items():
            c = crops[m].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(net(c).sum(), c)

    step_times: list[float] = []

    def attack() -> None:
        marks: list[float] = []

        def cb(_step: int) -> None:
            ctx.sync()
            marks.append(time.perf_counter())

        prot.config.steps = steps
        prot.config.refine_steps = 0  # the main loop's steps only (refinement: extra early-stopped steps)
        prot.attack_jobs(jobs, callback=cb)
        step_times.append(median([b - a for a, b in zip(marks, marks[1:])]))

    t = interleaved({"bare": bare, "attack": attack}, rounds, sync=ctx.sync)
    steps_only = step_times[1:]  # the first comes from the warm-up round
    ratios = [s / b for s, b in zip(steps_only, t["bare"])]
    out = {
        "preset": default_mode(),
        "models": list(prot.models),
        "attack": prot.config.attack,
        "faces": faces,
        "work_roi_hw": list(x.shape[-2:]),
        "rounds": rounds,
        "bare_forward_backward_s": r(median(t["bare"])),
        "attack_step_s": r(median(steps_only)),
        "attack_call_s": r(median(t["attack"])),
        "steps_per_call": steps,
        "floor_ratio": r(median(ratios), 3),
        "floor_ratio_rounds": [r(v, 3) for v in ratios],
        "target": 1.10,
    }
    out["meets_target"] = out["floor_ratio"] <= out["target"]
    return out
