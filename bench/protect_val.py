"""Measure protect-faces against the issue's targets on the celebrity ``val/`` photos.

Pairs (APF Eq. 11): each protected photo vs every *other* clean photo of the same person.
For each model: ASR = (N_w/o - N_w) / N_total over all pairs, and the protection rate over the
pairs the model verified before protection. Thresholds: FAR 1e-2 (model zoo). Models in the
attacked ensemble are white-box, the others (native dlib included) black-box. Everything is also
measured after re-encoding the protected photo as JPEG q75 with Pillow.

    python bench/protect_val.py                         # default preset, ensemble
    python bench/protect_val.py --models facenet128     # leave-one-out transfer to dlib
    python bench/protect_val.py --limit 2               # quick look: 2 photos per person

Writes ``bench/results/protect_val[-NAME].json``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch
from PIL import Image

from advprotect.evaluate.calibrate import identity_photos
from advprotect.evaluate.quality import image_quality
from advprotect.faces.dlib_native import DlibVerifier
from advprotect.faces.embed import FaceAnalyzer, white_box_models
from advprotect.faces.protect import FaceProtector, ProtectConfig, to_uint8
from advprotect.io import read_image
from advprotect.models.registry import dataset
from advprotect.models.zoo import FACE_MODELS, embedding_distance


def jpeg75(px: torch.Tensor) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(px)).save(buf, "JPEG", quality=75)
    im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return torch.from_numpy(__import__("numpy").asarray(im).copy()).permute(2, 0, 1).float() / 255


def embed_all(analyzer: FaceAnalyzer, verifier, photos: list[torch.Tensor]) -> list[dict]:
    out = []
    for px in photos:
        faces = analyzer.embed_photos([px], white_box_models(), largest_only=True)[0]
        row = {m: faces[0]["embeddings"][m] for m in white_box_models()} if faces else {}
        if verifier is not None:
            d = verifier.describe_largest(to_uint8(px))
            if d is not None:
                row["dlib"] = torch.as_tensor(d)
        out.append(row)
    return out


def rates(clean: list[dict], prot: list[dict], ids: list[str], models: list[str]) -> dict:
    res = {}
    for m in models:
        info = FACE_MODELS[m]
        total = wo = w = w_among = 0
        for i in range(len(ids)):
            for j in range(len(ids)):
                if i == j or ids[i] != ids[j] or m not in clean[j]:
                    continue
                total += 1
                ref = clean[j][m][None].double()
                v_clean = m in clean[i] and float(embedding_distance(clean[i][m][None].double(), ref, info.distance)) < info.threshold
                v_prot = m in prot[i] and float(embedding_distance(prot[i][m][None].double(), ref, info.distance)) < info.threshold
                wo += v_clean
                w += v_prot
                w_among += v_clean and v_prot
        res[m] = {"pairs": total, "verified_clean": wo, "verified_protected": w,
                  "asr": round((wo - w) / total, 4) if total else None,
                  "protection_rate": round((wo - w_among) / wo, 4) if wo else None}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--models", default=None, help="comma-separated ensemble (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="photos per person")
    ap.add_argument("--split", default="val", choices=["val", "train"])
    ap.add_argument("--name", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE override of ProtectConfig (python literal)")
    args = ap.parse_args()
    over = {"steps": args.steps}
    import ast

    for kv in args.set:
        k, _, v = kv.partition("=")
        over[k] = ast.literal_eval(v)
    if args.models:
        over["models"] = tuple(args.models.split(","))
    cfg = ProtectConfig.from_preset(args.mode, **over)
    root = dataset("celebrity") / args.split
    people = identity_photos(root)
    ids, paths = [], []
    for person, ps in people.items():
        for p in ps[: args.limit]:
            ids.append(person)
            paths.append(p)
    photos = [read_image(p).pixels for p in paths]
    protector = FaceProtector(cfg, args.device, seed=0)
    verifier = DlibVerifier.load() if DlibVerifier.available() else None
    analyzer = protector.analyzer
    t0 = time.perf_counter()
    protected, faces, ssims = [], 0, []
    for px in photos:
        r = protector.protect([px])[0]
        faces += len(r.faces)
        protected.append(r.pixels)
        ssims.append(image_quality(px, r.pixels)["ssim"])
    seconds = time.perf_counter() - t0
    models = white_box_models() + (["dlib"] if verifier is not None else [])
    clean_e = embed_all(analyzer, verifier, photos)
    prot_e = embed_all(analyzer, verifier, protected)
    jpeg_e = embed_all(analyzer, verifier, [jpeg75(p) for p in protected])
    result = {
        "split": args.split, "photos": len(photos), "faces": faces, "config": cfg.settings(),
        "white_box": list(cfg.models), "black_box": [m for m in models if m not in cfg.models],
        "mean_ssim_photo": round(sum(ssims) / len(ssims), 4), "min_ssim_photo": round(min(ssims), 4),
        "seconds_per_face": round(seconds / max(1, faces), 2), "threads": torch.get_num_threads(),
        "protected": rates(clean_e, prot_e, ids, models),
        "protected_jpeg75": rates(clean_e, jpeg_e, ids, models),
    }
    out = Path(__file__).parent / "results" / f"protect_{args.split}{'-' + args.name if args.name else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
