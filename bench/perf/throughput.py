"""Throughput: ``advprotect protect-faces`` with the default preset, end to end from files to files
(read, decode, detect, align, attack, measure and verify, encode, write), faces per second on this
run's threads, and each stage's share of the time.

The CLI runs in a child process (same thread count) with stage timers wrapped around the
functions of each stage (bench/perf/stages.py). ``faces_per_s`` divides the faces protected by the
pipeline's own wall time (models already loaded); ``faces_per_s_with_startup`` by the whole
invocation's (model loading included).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .common import ROOT, Context, default_mode, r, sample_photos


def photo_set(ctx: Context, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    srcs = list(sample_photos())
    if not ctx.quick:
        from advprotect.evaluate.calibrate import identity_photos
        from advprotect.models.registry import dataset

        for person, ps in identity_photos(dataset("celebrity") / "val").items():
            srcs += ps[:2]
    out = []
    for i, p in enumerate(srcs):
        dst = folder / f"{i:02d}_{p.name}"
        shutil.copyfile(p, dst)
        out.append(dst)
    return out


def run_cli(ctx: Context, runs: list[dict], tag: str) -> list[dict]:
    spec = ctx.work / f"{tag}-spec.json"
    res = ctx.work / f"{tag}-result.json"
    spec.write_text(json.dumps({"runs": runs}))
    subprocess.run([sys.executable, str(ROOT / "bench" / "perf" / "cli_child.py"), str(spec), str(res)],
                   check=True, cwd=ctx.work, env=ctx.child_env())
    return json.loads(res.read_text())["runs"]


def run(ctx: Context) -> dict:
    src = ctx.work / "throughput-in"
    photos = photo_set(ctx, src)
    out = ctx.work / "throughput-out"
    args = ["--device", str(ctx.device), "--seed", "0", "--quiet", "protect-faces", str(src), "-o", str(out)]
    extra = ["--steps", "1"] if ctx.quick else []
    runs = [{"name": "throughput", "args": args + extra, "out": str(out)}]
    if not ctx.quick:
        # the main loop alone (as before the refinement pass existed): the speed comparison with
        # older runs; the default's number above includes the extra steps of the hard faces
        out0 = ctx.work / "throughput-out-norefine"
        runs.append({"name": "no_refine", "args": [*args[:-1], str(out0), "--refine-steps", "0"], "out": str(out0)})
    res, *more = run_cli(ctx, runs, "throughput")
    faces = res["faces"]
    stages = res["stages"]
    no_refine = {}
    if more:
        m = more[0]
        no_refine = {"faces_per_s_no_refine": r(m["faces"] / m["pipeline_s"]) if m["pipeline_s"] else None,
                     "stage_seconds_no_refine": m["stages"]["seconds"]}
    return {
        "preset": default_mode(),
        "extra_args": extra,
        "photos": len(photos),
        "faces": faces,
        "exit_code": res["exit_code"],
        "pipeline_s": res["pipeline_s"],
        "wall_with_startup_s": res["wall_s"],
        "faces_per_s": r(faces / res["pipeline_s"]) if res["pipeline_s"] else None,
        "s_per_face": r(res["pipeline_s"] / faces, 3) if faces else None,
        "faces_per_s_with_startup": r(faces / res["wall_s"]) if res["wall_s"] else None,
        "stage_seconds": stages["seconds"],
        "stage_share": stages["share"],
        **no_refine,
    }
