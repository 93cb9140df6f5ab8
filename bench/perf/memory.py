"""Memory: peak resident set size of ``advprotect protect-faces`` on a folder of 10 photos vs one of
1,000 (``--quick``: 40), generated from sample_images/ (resized, cropped and mirrored copies, JPEG,
100 per subfolder). Target: peak RSS(1,000) <= 1.2 x peak RSS(10), i.e. the pipeline streams and
keeps no per-photo state that grows with the folder beyond a small report entry.

Cheap settings keep 1,000 photos to a few minutes: ``--steps 1 --refine-steps 0 --models facenet128 --no-verify``.
Each run is a child process; its peak RSS is its own ``VmHWM`` (/proc/self/status), written at exit.
(Not ``ru_maxrss`` from ``wait4``: Linux carries the forking parent's high-water mark over into the
child's across exec, so a child of this benchmark process, which holds models, would report the
parent's RSS.)
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from .common import Context, r, sample_photos

CHEAP = ["--steps", "1", "--refine-steps", "0", "--models", "facenet128", "--no-verify"]


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    from PIL import Image, ImageOps

    rng = random.Random(seed)
    srcs = [Image.open(p).convert("RGB") for p in sample_photos()]
    for i in range(n):
        im = srcs[i % len(srcs)]
        longest = rng.randint(320, 480)
        s = longest / max(im.size)
        small = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
        dx, dy = rng.randint(0, small.width // 12), rng.randint(0, small.height // 12)
        small = small.crop((dx, dy, small.width - rng.randint(0, small.width // 12),
                            small.height - rng.randint(0, small.height // 12)))
        if rng.random() < 0.5:
            small = ImageOps.mirror(small)
        sub = folder / f"part{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        small.save(sub / f"photo{i:04d}.jpg", quality=90)


CHILD = """
import atexit, sys
def _hwm(path=sys.argv.pop(1)):
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(path, "w") as f:
        f.write(str(kb))
atexit.register(_hwm)
from advprotect.cli import main
sys.argv[0] = "advprotect"
main()
"""


def peak_rss(ctx: Context, src: Path, out: Path) -> dict:
    hwm = out.with_name(out.name + ".vmhwm")
    cmd = [sys.executable, "-c", CHILD, str(hwm), "--device", str(ctx.device), "--seed", "0", "--quiet",
           "protect-faces", str(src), "-o", str(out), *CHEAP]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ctx.work, env=ctx.child_env(), stdout=subprocess.DEVNULL)
    proc.wait()
    wall = time.perf_counter() - t0
    if not hwm.exists():
        raise RuntimeError(f"protect-faces on {src} ended with exit code {proc.returncode} and no VmHWM record")
    report = out / ".advprotect-report.json"
    manifest = out / ".advprotect-manifest.jsonl"
    return {"exit_code": proc.returncode, "peak_rss_mb": r(int(hwm.read_text()) / 1024, 1), "wall_s": r(wall, 2),
            "report_kb": r(report.stat().st_size / 1024, 1) if report.exists() else None,
            "manifest_kb": r(manifest.stat().st_size / 1024, 1) if manifest.exists() else None}


def run(ctx: Context) -> dict:
    small, large = 10, (40 if ctx.quick else 1000)
    res = {}
    for n in (small, large):
        src = ctx.work / f"memory-{n}"
        ctx.log(f"  memory: generating {n} photos")
        make_photos(src, n)
        ctx.log(f"  memory: protect-faces on {n} photos")
        res[n] = peak_rss(ctx, src, ctx.work / f"memory-{n}-out")
        res[n]["photos"] = n
        res[n]["s_per_photo"] = r(res[n]["wall_s"] / n, 3)
    ratio = res[large]["peak_rss_mb"] / res[small]["peak_rss_mb"]
    return {
        "settings": CHEAP,
        "runs": {str(k): v for k, v in res.items()},
        f"rss_ratio_{large}_vs_{small}": r(ratio, 3),
        "rss_ratio": r(ratio, 3),
        "large": large,
        "target": 1.2,
        "meets_target": ratio <= 1.2,
    }
