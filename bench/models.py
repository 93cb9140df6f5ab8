"""Images/s of each face model's batched forward and forward+backward (to the input) on this
machine's CPU threads (or --device cuda). Writes bench/results/models.json.

    python bench/models.py [--batch 8] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from advprotect.faces.detect import FaceDetector
from advprotect.models.zoo import FACE_MODELS, load_face_model


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {"device": str(dev), "threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "batch": args.batch, "models": {}}
    for name, info in FACE_MODELS.items():
        if info.native:
            continue
        net = load_face_model(name, dev)
        x = torch.rand(args.batch, 3, *info.input_size, device=dev)

        def fwd():
            with torch.inference_mode():
                net(x)
            sync()

        def fwd_bwd():
            xi = x.clone().requires_grad_(True)
            net(xi).sum().backward()
            sync()

        tf, tb = timeit(fwd, args.repeats), timeit(fwd_bwd, args.repeats)
        out["models"][name] = {"forward_images_per_s": round(args.batch / tf, 2),
                               "forward_backward_images_per_s": round(args.batch / tb, 2),
                               "forward_s_per_batch": round(tf, 4), "forward_backward_s_per_batch": round(tb, 4)}
    det = FaceDetector.load(dev)
    photo = torch.rand(3, 1080, 1440, device=dev)
    td = timeit(lambda: det.detect([photo]), args.repeats)
    out["models"]["mtcnn"] = {"photos_per_s_1440x1080": round(1 / td, 2), "s_per_photo": round(td, 4)}
    path = Path(__file__).parent / "results" / "models.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
