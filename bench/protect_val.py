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


def rates(clean: list[dict], prot: list[dict], ids: list[str], models: list[str],
          refs: list[dict] | None = None, ref_ids: list[str] | None = None,
          names: list[str] | None = None, ref_names: list[str] | None = None,
          skip: set[str] | None = None) -> dict:
    """Pairs: protected photo i vs every other clean reference photo of the same person (by
    default the clean versions of the protected photos themselves). Photos in ``skip`` (no face
    was protected: every face under --min-face, reported and left alone by design) are left out
    and counted apart."""
    refs, ref_ids = (clean, ids) if refs is None else (refs, ref_ids)
    names = names or [str(i) for i in range(len(ids))]
    ref_names = ref_names or names
    res = {}
    for m in models:
        info = FACE_MODELS[m]
        total = wo = w = w_among = 0
        still: list[str] = []
        for i in range(len(ids)):
            for j in range(len(ref_ids)):
                if names[i] == ref_names[j] or ids[i] != ref_ids[j] or m not in refs[j]:
                    continue
                if skip and names[i] in skip:
                    continue
                total += 1
                ref = refs[j][m][None].double()
                v_clean = m in clean[i] and float(embedding_distance(clean[i][m][None].double(), ref, info.distance)) < info.threshold
                v_prot = m in prot[i] and float(embedding_distance(prot[i][m][None].double(), ref, info.distance)) < info.threshold
                wo += v_clean
                w += v_prot
                w_among += v_clean and v_prot
                if v_clean and v_prot:
                    still.append(f"{names[i]} ~ {ref_names[j]}")
        res[m] = {"pairs": total, "verified_clean": wo, "verified_protected": w,
                  "asr": round((wo - w) / total, 4) if total else None,
                  "protection_rate": round((wo - w_among) / wo, 4) if wo else None,
                  "still_verified": still}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--models", default=None, help="comma-separated ensemble (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="photos per person to protect")
    ap.add_argument("--refs", default="protected", choices=["protected", "all"],
                    help="pair with the other protected photos' clean versions (default, as in the issue) "
                         "or with every clean photo of the person in the split (more pairs, for tuning)")
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
    ids, paths, ref_ids, ref_paths = [], [], [], []
    for person, ps in people.items():
        for p in ps[: args.limit]:
            ids.append(person)
            paths.append(p)
        for p in ps:
            ref_ids.append(person)
            ref_paths.append(p)
    photos = [read_image(p).pixels for p in paths]
    protector = FaceProtector(cfg, args.device, seed=0)
    verifier = DlibVerifier.load() if DlibVerifier.available() else None
    analyzer = protector.analyzer
    t0 = time.perf_counter()
    protected, faces, ssims, unprotected = [], 0, [], set()
    for px, path in zip(photos, paths):
        r = protector.protect([px])[0]
        faces += len(r.faces)
        if not r.faces:
            unprotected.add(path.name)
        protected.append(r.pixels)
        ssims.append(image_quality(px, r.pixels)["ssim"])
    seconds = time.perf_counter() - t0
    models = white_box_models() + (["dlib"] if verifier is not None else [])
    clean_e = embed_all(analyzer, verifier, photos)
    prot_e = embed_all(analyzer, verifier, protected)
    jpeg_e = embed_all(analyzer, verifier, [jpeg75(p) for p in protected])
    names = [p.name for p in paths]
    if args.refs == "all":
        ref_e = embed_all(analyzer, verifier, [read_image(p).pixels for p in ref_paths])
        pair_kw = dict(refs=ref_e, ref_ids=ref_ids, names=names, ref_names=[p.name for p in ref_paths])
    else:
        pair_kw = dict(names=names)
    pair_kw["skip"] = unprotected
    result = {
        "split": args.split, "photos": len(photos), "faces": faces, "config": cfg.settings(),
        "white_box": list(cfg.models), "black_box": [m for m in models if m not in cfg.models],
        "mean_ssim_photo": round(sum(ssims) / len(ssims), 4), "min_ssim_photo": round(min(ssims), 4),
        "seconds_per_face": round(seconds / max(1, faces), 2), "device": args.device, "threads": torch.get_num_threads(),
        "refs": args.refs,
        "unprotected_photos": sorted(unprotected),
        "protected": rates(clean_e, prot_e, ids, models, **pair_kw),
        "protected_jpeg75": rates(clean_e, jpeg_e, ids, models, **pair_kw),
        "per_photo": [{"photo": n, "ssim": round(s_, 4)} for n, s_ in zip(names, ssims)],
    }
    out = Path(__file__).parent / "results" / f"protect_{args.split}{'-' + args.name if args.name else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
