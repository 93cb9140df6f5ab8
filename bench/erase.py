"""Erasable protection targets (issue: ESR 100% and bit-exact on PNG; ESR >= 95% after JPEG q75
of the protected photo with the sidecar; 100% of wrong-key and tampered cases rejected).

ESR (ErasableMask, paper 002 Eq. 18): the fraction of restored photos whose face verifies, on the
native dlib black-box verifier (threshold 0.6), against another clean photo of the same person,
over the photos whose clean original verifies so.
Photos: the celebrity train/ split (--limit per person). Writes bench/results/erase.json.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from advprotect.erase import EraseError, erase_file, extract, generate_key, load_key, make_erasable, write_sidecar
from advprotect.evaluate.calibrate import identity_photos
from advprotect.faces.dlib_native import DlibVerifier
from advprotect.faces.embed import to_uint8
from advprotect.faces.protect import FaceProtector, ProtectConfig
from advprotect.io import read_image
from advprotect.models.registry import dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=2, help="photos per person")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    people = identity_photos(dataset("celebrity") / "train")
    verifier = DlibVerifier.load()
    protector = FaceProtector(ProtectConfig.from_preset("mid", steps=args.steps), "cpu", seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="erase-bench-"))
    generate_key(tmp / "key")
    generate_key(tmp / "other")
    key, other = load_key(tmp / "key"), load_key(tmp / "other")
    rows, t0 = [], time.perf_counter()
    outputs = []
    for person, paths in people.items():
        refs = [verifier.describe_largest(np.asarray(Image.open(p).convert("RGB"))) for p in paths[args.limit:args.limit + 3]]
        refs = [r for r in refs if r is not None]
        for p in paths[: args.limit]:
            clean = read_image(p).pixels
            prot = protector.protect([clean])[0].pixels
            u8 = to_uint8(clean)
            out = tmp / f"{person}-{p.stem[:20]}.png"
            Image.fromarray(to_uint8(prot)).save(out)
            make_erasable(u8, out, key)
            sidecar = write_sidecar(out, extract(out), tmp / "sidecars")
            row = {"photo": f"{person}/{p.name}"}

            def esr(img: np.ndarray) -> bool | None:
                d = verifier.describe_largest(img)
                if not refs:
                    return None
                return d is not None and min(verifier.distance(d, r) for r in refs) < verifier.threshold

            row["clean_verifies"] = esr(u8)
            row["protected_verifies"] = esr(to_uint8(prot))
            res = erase_file(out, tmp / "restored" / out.name, key, keep_pixels=True)
            row["png_bit_exact"] = bool(res.bit_exact and np.array_equal(res.restored[..., :3], u8))
            row["png_esr"] = esr(res.restored[..., :3])
            buf = io.BytesIO()
            Image.open(out).convert("RGB").save(buf, "JPEG", quality=75)
            jpg = tmp / "jpeg" / (out.stem + ".jpg")
            jpg.parent.mkdir(exist_ok=True)
            jpg.write_bytes(buf.getvalue())
            (tmp / "sidecars" / (jpg.name + ".advp")).write_bytes(sidecar.read_bytes())
            rj = erase_file(jpg, tmp / "restored-jpeg" / (out.stem + ".png"), key, sidecar_dir=tmp / "sidecars",
                            keep_pixels=True)
            row["jpeg75_esr"] = esr(rj.restored[..., :3])
            row["jpeg75_psnr_restored"] = round(float(10 * np.log10(255**2 / max(1e-9, np.mean((rj.restored[..., :3].astype(float) - u8) ** 2)))), 2)
            rejected = 0
            try:
                erase_file(out, tmp / "x" / out.name, other)
            except EraseError:
                rejected += 1
            data = bytearray(out.read_bytes())
            pos = data.find(b"apER") + 40
            data[pos] ^= 0xFF
            bad = tmp / "tampered.png"
            bad.write_bytes(bytes(data))
            try:
                erase_file(bad, tmp / "x" / "t.png", key)
            except EraseError:
                rejected += 1
            row["rejected_of_2"] = rejected
            rows.append(row)
            outputs.append(out)
    # a payload moved onto another protected image must be refused
    moved_rejected = 0
    for a, b in zip(outputs, outputs[1:]):
        payload = extract(a)
        target = tmp / ("moved-" + b.name)
        target.write_bytes(b.read_bytes())
        from advprotect.erase import embed

        embed(target, payload)
        try:
            erase_file(target, tmp / "x" / target.name, key, robust=False)
        except EraseError:
            moved_rejected += 1

    def rate(key_: str) -> float | None:
        # ESR counts the photos whose clean original verifies (a restored copy cannot do better)
        vals = [r[key_] for r in rows if r[key_] is not None and (key_ == "clean_verifies" or r["clean_verifies"])]
        return round(sum(vals) / len(vals), 4) if vals else None

    result = {
        "photos": len(rows), "seconds": round(time.perf_counter() - t0, 1),
        "clean_verifies": rate("clean_verifies"),
        "png_bit_exact_rate": rate("png_bit_exact"), "png_esr": rate("png_esr"),
        "jpeg75_sidecar_esr": rate("jpeg75_esr"), "protected_still_verifies": rate("protected_verifies"),
        "jpeg75_psnr_restored_mean": round(float(np.mean([r["jpeg75_psnr_restored"] for r in rows])), 2),
        "wrong_key_and_tampered_rejected": f"{sum(r['rejected_of_2'] for r in rows)}/{2 * len(rows)}",
        "moved_payload_rejected": f"{moved_rejected}/{max(0, len(outputs) - 1)}",
        "rows": rows,
    }
    path = Path(__file__).parent / "results" / "erase.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
