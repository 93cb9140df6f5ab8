"""Derive the five-point alignment templates of ``advprotect/faces/templates.py`` empirically.

Protocol (celebrity ``train/`` split only; ``val/`` is never read):

* Every photo goes through the project's MTCNN (:class:`advprotect.faces.detect.FaceDetector`);
  the highest-scoring face is kept. MTCNN reports continuous coordinates (pixel centres at
  ``+0.5``); they are shifted by ``-0.5`` into the pixel-centre convention of
  :mod:`advprotect.faces.align`.
* ``dlib`` (150x150): dlib's HOG detector (upsample 1) and 5-point shape predictor find the same
  face (the dlib box must contain the MTCNN landmarks' centre); ``dlib.get_face_chip_details(
  shape, 150, 0.25)`` gives the chip rectangle and angle, i.e. the exact image-to-chip
  similarity of ``dlib.get_face_chip``. The MTCNN landmarks are mapped into chip pixels; the
  template is their mean.
* ``facenet`` (160x160): the Keras FaceNet was fed MTCNN box crops resized to 160x160. For a box
  margin ``m`` (fraction of the box's width/height added on each side) the MTCNN landmarks are
  mapped into the crop; the template is their mean. With ``--facenet-pairs`` every candidate
  margin is also scored by FaceNet's same/different separation (ROC AUC over all train pairs) on
  crops aligned with that template, next to the plain box crops, and the best margin is chosen.

Run from the repository root::

    python bench/derive_templates.py [--facenet-pairs] [--margins 0 0.1 0.2]

It prints the sample counts, spreads, dlib-chip reproduction errors and the constants to paste
into ``templates.py``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from advprotect.faces import align as A
from advprotect.faces.templates import Template
from advprotect.models import registry, store


def dlib_chip_matrix(details) -> np.ndarray:
    """(2, 3) image -> chip pixel matrix of a ``dlib.chip_details``."""
    from advprotect.faces.dlib_native import chip_matrix

    return chip_matrix(details)


def photos(root: Path) -> list[tuple[str, Path]]:
    out = []
    for d in sorted((root / "train").iterdir()):
        if d.is_dir():
            out += [(d.name, p) for p in sorted(d.iterdir())
                    if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    return out


def auc(same: np.ndarray, diff: np.ndarray) -> float:
    """P(distance of a same pair < distance of a different pair), ties counted half."""
    greater = (diff[None, :] > same[:, None]).sum()
    ties = (diff[None, :] == same[:, None]).sum()
    return float((greater + 0.5 * ties) / (len(same) * len(diff)))


def best_accuracy(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """Best balanced accuracy over thresholds, and that threshold."""
    best = (0.0, 0.0)
    for t in np.unique(np.concatenate([same, diff])):
        acc = 0.5 * ((same <= t).mean() + (diff > t).mean())
        if acc > best[0]:
            best = (float(acc), float(t))
    return best


def fmt_points(points: np.ndarray) -> str:
    return "\n".join(f"        ({x:.2f}, {y:.2f})," for x, y in points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    ap.add_argument("--facenet-pairs", action="store_true",
                    help="score each FaceNet margin by pair separation (loads FaceNet)")
    args = ap.parse_args()

    import dlib

    from advprotect.faces.detect import FaceDetector

    torch.set_grad_enabled(False)
    root = registry.dataset("celebrity")
    items = photos(root)
    detector = FaceDetector.load("cpu")
    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(store.extract_file(registry.DLIB_MODELS, registry.DLIB_SHAPE5_DAT)))

    recs = []  # dicts: person, image tensor, lm (5,2) pixel-centre, box (4,) continuous, dlib stuff
    t0 = time.time()
    for person, path in items:
        img = np.asarray(Image.open(path).convert("RGB"))
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        det = detector.detect([x])[0]
        if len(det) == 0:
            print(f"  no MTCNN face: {path.name}", file=sys.stderr)
            continue
        lm = det.landmarks[0].double() - 0.5
        rec = {"person": person, "path": path, "img": img, "x": x, "lm": lm,
               "box": det.boxes[0].double()}
        centre = lm.mean(0).tolist()
        rects = [r for r in hog(img, 1)
                 if r.left() <= centre[0] <= r.right() and r.top() <= centre[1] <= r.bottom()]
        if rects:
            shape = sp(img, max(rects, key=lambda r: r.width() * r.height()))
            rec["shape"] = shape
            rec["chip_m"] = dlib_chip_matrix(dlib.get_face_chip_details(shape, 150, 0.25))
        recs.append(rec)
    print(f"{len(items)} train photos, {len(recs)} with an MTCNN face, "
          f"{sum('shape' in r for r in recs)} also found by dlib ({time.time() - t0:.0f} s)")

    # ---- dlib template
    with_dlib = [r for r in recs if "shape" in r]
    pts = np.stack([A.apply_affine(torch.tensor(r["chip_m"]), r["lm"])[0].numpy() for r in with_dlib])
    dlib_pts = pts.mean(0)
    print(f"\ndlib template from {len(pts)} faces; per-point std (chip px): "
          + ", ".join(f"{s:.1f}" for s in np.sqrt(pts.var(0).sum(1))))
    dlib_t = Template("dlib", (150, 150), tuple(map(tuple, dlib_pts)))
    mads, mads_exact = [], []
    for r in with_dlib:
        chip = torch.from_numpy(dlib.get_face_chip(r["img"], r["shape"], 150, 0.25)).permute(2, 0, 1).float() / 255
        m = A.roi_to_crop_matrix(r["lm"].float(), dlib_t)
        mine = A.align(r["x"][None], m, 150, antialias=True)[0]
        exact = A.align(r["x"][None], torch.tensor(r["chip_m"]).float()[None], 150, antialias=True)[0]
        mads.append(float((mine - chip).abs().mean()) * 255)
        mads_exact.append(float((exact - chip).abs().mean()) * 255)
    print(f"dlib chip reproduction, mean |diff| in 0..255: MTCNN landmarks + template "
          f"{np.mean(mads):.2f} (median {np.median(mads):.2f}, max {np.max(mads):.2f}); "
          f"dlib's own chip transform {np.mean(mads_exact):.2f}")

    # ---- facenet templates, one per margin
    fn_templates = {}
    for mg in args.margins:
        rows = []
        for r in recs:
            b = r["box"]
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            x0, y0 = float(b[0]) - mg * w, float(b[1]) - mg * h
            cw, ch = w * (1 + 2 * mg), h * (1 + 2 * mg)
            lmc = r["lm"] + 0.5  # continuous coords, like the box
            u = (lmc[:, 0] - x0) * 160 / cw - 0.5
            v = (lmc[:, 1] - y0) * 160 / ch - 0.5
            rows.append(torch.stack([u, v], 1).numpy())
        rows = np.stack(rows)
        fn_templates[mg] = rows.mean(0)
        print(f"\nfacenet margin {mg:.2f}: {len(rows)} faces; per-point std (crop px): "
              + ", ".join(f"{s:.1f}" for s in np.sqrt(rows.var(0).sum(1))))

    chosen = args.margins[0]
    if args.facenet_pairs:
        from advprotect.models.zoo import load_face_model

        net = load_face_model("facenet128")
        people = [r["person"] for r in recs]
        scores = {}

        def evaluate(crops: torch.Tensor, label: str) -> float:
            emb = torch.cat([net(crops[i:i + 8]) for i in range(0, len(crops), 8)]).double()
            same, diff = [], []
            for i, j in itertools.combinations(range(len(recs)), 2):
                d = float((emb[i] - emb[j]).norm())
                (same if people[i] == people[j] else diff).append(d)
            same_a, diff_a = np.array(same), np.array(diff)
            a = auc(same_a, diff_a)
            acc, thr = best_accuracy(same_a, diff_a)
            print(f"  {label}: AUC {a:.4f}, best balanced accuracy {acc:.3f} at {thr:.3f} "
                  f"({len(same)} same / {len(diff)} different pairs)")
            return a

        print("\nFaceNet pair separation on train photos:")
        for mg in args.margins:
            t = Template("facenet", (160, 160), tuple(map(tuple, fn_templates[mg])))
            crops = torch.cat([A.align(r["x"][None], A.roi_to_crop_matrix(r["lm"].float(), t), 160,
                                       antialias=True) for r in recs])
            scores[mg] = evaluate(crops, f"aligned, margin {mg:.2f}")
            boxes = []
            for r in recs:  # the plain box crop (anisotropic), for reference
                b = r["box"]
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                x0, y0 = float(b[0]) - mg * w, float(b[1]) - mg * h
                sx, sy = 160 / (w * (1 + 2 * mg)), 160 / (h * (1 + 2 * mg))
                m = torch.tensor([[[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5]]])
                boxes.append(A.align(r["x"][None], m.float(), 160, antialias=True))
            evaluate(torch.cat(boxes), f"box crop, margin {mg:.2f}")
        chosen = max(scores, key=scores.get)
        print(f"best margin: {chosen:.2f}")

    print("\n# ---- paste into advprotect/faces/templates.py")
    print(f"# dlib: {len(pts)} celebrity-train faces; facenet: {len(recs)} faces, margin {chosen}")
    print("DLIB points=(\n" + fmt_points(dlib_pts) + "\n)")
    print(f"FACENET_BOX_MARGIN = {chosen}")
    print("FACENET points=(\n" + fmt_points(fn_templates[chosen]) + "\n)")


if __name__ == "__main__":
    main()
