"""Ratio of one protect-faces attack step (default preset: warp + ensemble forward/backward +
diversity + momentum + projection) to a bare forward+backward of the same ensemble on the same
aligned crops, measured interleaved in one process. Writes bench/results/step_ratio.json.

    python bench/step_ratio.py [--faces 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from advprotect.faces.embed import stack_rois
from advprotect.faces.align import align
from advprotect.faces.protect import FaceProtector, ProtectConfig
from advprotect.io import read_image
from advprotect.models.registry import dataset
from advprotect.evaluate.calibrate import identity_photos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    people = identity_photos(dataset("celebrity") / "train")
    photos = [read_image(p).pixels for ps in people.values() for p in ps[:2]]
    prot = FaceProtector(ProtectConfig.from_preset("mid", refine_steps=0), "cpu", seed=0)
    jobs, _ = prot.analyzer.prepare(photos)
    jobs = jobs[: args.faces]
    x = stack_rois([j.work for j in jobs])
    crops = {m: align(x, torch.stack([j.matrices[m] for j in jobs]), prot.templates[m].size, antialias=True).detach()
             for m in prot.models}

    def bare():
        for m, net in prot.models.items():
            c = crops[m].clone().requires_grad_(True)
            net(c).sum().backward()

    def one_step(steps: int):
        prot.config.steps = steps
        prot.attack_jobs(jobs)

    def best(fn, *a) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn(*a)
            times.append(time.perf_counter() - t)
        return min(times)

    bare()
    one_step(1)
    t_bare = best(bare)
    # per-step cost = (T(6 steps) - T(1 step)) / 5: removes the once-per-batch setup
    t1, t6 = best(one_step, 1), best(one_step, 6)
    step = (t6 - t1) / 5
    out = {"faces": len(jobs), "threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "bare_forward_backward_s": round(t_bare, 4), "attack_step_s": round(step, 4),
           "setup_s": round(t1 - step, 4), "floor_ratio": round(step / t_bare, 3)}
    path = Path(__file__).parent / "results" / "step_ratio.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
