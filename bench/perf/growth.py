"""Cost growth of ``advprotect protect-faces`` (default preset, end to end, per stage):

* vs photo size: one face (sample_images/obama.jpg) scaled to 0.3, 1, 12 and 24 megapixels
  (``--quick``: 0.3, 1, 2; one attack step). Expected: detection, decoding and encoding grow with the pixels; the
  rest (alignment, attack, compose, measurement, native verification, quality) stays near flat.
* vs faces per photo: 1, 2, 4 and 8 faces (``--quick``: 1, 2) pasted on one 2-megapixel canvas.
  Expected: linear in faces.

Each photo is its own CLI run (one child process for all, models loaded once). ``core_s`` is the
time of every stage except reading, decoding, detection and writing.
"""

from __future__ import annotations


from .common import Context, default_mode, r, sample_photos
from .throughput import run_cli

IO_DETECT = ("read", "decode", "detect", "write")


def _scaled(src, mp: float):
    from PIL import Image

    s = (mp * 1e6 / (src.width * src.height)) ** 0.5
    return src.resize((round(src.width * s), round(src.height * s)), Image.BICUBIC)


def _canvas(faces: int):
    """``faces`` portrait cells of 400x600 on a 1600x1200 canvas (grey background)."""
    from PIL import Image, ImageOps

    from advprotect.evaluate.calibrate import identity_photos
    from advprotect.models.registry import dataset

    people = identity_photos(dataset("celebrity") / "val")
    srcs = [Image.open(ps[0]).convert("RGB") for ps in people.values()]
    srcs += [Image.open(p).convert("RGB") for p in sample_photos()]
    canvas = Image.new("RGB", (1600, 1200), (128, 128, 128))
    for k in range(faces):
        cell = ImageOps.fit(srcs[k % len(srcs)], (400, 600), Image.BICUBIC)
        canvas.paste(cell, ((k % 4) * 400, (k // 4) * 600))
    return canvas


def _summary(run: dict) -> dict:
    st = run["stages"]["seconds"]
    core = sum(v for k, v in st.items() if k not in IO_DETECT)
    return {"faces": run["faces"], "pipeline_s": run["pipeline_s"], "core_s": r(core, 3),
            "detect_s": r(st.get("detect", 0.0), 3),
            "decode_write_s": r(st.get("decode", 0.0) + st.get("write", 0.0) + st.get("read", 0.0), 3),
            "stage_seconds": st}


def run(ctx: Context) -> dict:
    from PIL import Image

    mps = (0.3, 1, 2) if ctx.quick else (0.3, 1, 12, 24)
    nfaces = (1, 2) if ctx.quick else (1, 2, 4, 8)
    extra = ["--steps", "1"] if ctx.quick else []
    obama = Image.open(next(p for p in sample_photos() if p.stem == "obama")).convert("RGB")
    runs = []

    def add(name: str, im) -> None:
        folder = ctx.work / f"growth-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{name}.jpg", quality=92)
        out = ctx.work / f"growth-{name}-out"
        args = ["--device", str(ctx.device), "--seed", "0", "--quiet", "protect-faces", str(folder),
                "-o", str(out), *extra]
        runs.append({"name": name, "args": args, "out": str(out)})

    add("warmup", _scaled(obama, 1))  # first run pays one-off costs (kernel set-up): not reported
    for mp in mps:
        add(f"mp{mp:g}", _scaled(obama, mp))
    for n in nfaces:
        add(f"faces{n}", _canvas(n))
    ctx.log(f"  growth: {len(runs)} photos")
    res = {x["name"]: x for x in run_cli(ctx, runs, "growth")}
    by_mp = {f"{mp:g}": _summary(res[f"mp{mp:g}"]) for mp in mps}
    by_faces = {str(n): _summary(res[f"faces{n}"]) for n in nfaces}
    base, big = by_mp["1"], by_mp[f"{mps[-1]:g}"]
    f1, fn = by_faces[str(nfaces[0])], by_faces[str(nfaces[-1])]
    per_face = [v["pipeline_s"] / v["faces"] for v in by_faces.values() if v["faces"]]
    return {
        "preset": default_mode(),
        "extra_args": extra,
        "by_megapixels": by_mp,
        "by_faces": by_faces,
        f"core_ratio_{mps[-1]:g}mp_vs_1mp": r(big["core_s"] / base["core_s"], 3),
        f"pipeline_ratio_{mps[-1]:g}mp_vs_1mp": r(big["pipeline_s"] / base["pipeline_s"], 3),
        f"pipeline_ratio_{nfaces[-1]}faces_vs_1": r(fn["pipeline_s"] / f1["pipeline_s"], 3),
        "s_per_face_by_faces": [r(v, 3) for v in per_face],
    }
