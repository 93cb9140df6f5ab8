"""Run the performance benchmarks of issue #9 and write one JSON file.

    python bench/run.py                  # full run (about 20 minutes on 2 free cores)
    python bench/run.py --quick          # small sizes, to check the harness (a few minutes)
    python bench/run.py --only floor,peer --device cuda

Benchmarks (bench/perf/*.py): ``floor`` (attack step vs bare forward+backward, target <= 1.10),
``peer`` (our MI-FGSM vs torchattacks', target <= 1.0), ``throughput`` (protect-faces faces/s end to
end, share of each stage), ``growth`` (time vs megapixels and vs faces per photo), ``memory`` (peak
RSS for 10 vs 1,000 photos, target <= 1.2).

Writes ``bench/results/latest.json`` (``--quick``: ``latest-quick.json``; or ``--out``) with the
top-level keys ``floor_ratio``, ``peer_ratio``, ``faces_per_s``, ``rss_ratio_1000_vs_10``,
``device``, ``torch_version``, the load average at start and end, and one section per benchmark.
Timing ratios come from interleaved repeats in one process (medians), so load from other
processes hits both sides; the load average says how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHES = ("floor", "peer", "throughput", "growth", "memory")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds to minutes): checks the harness")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch, here and in child processes (default 2)")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--out", default=None, help="JSON file to write (default bench/results/latest.json)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (generated photos, outputs)")
    args = ap.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    import os

    if args.device == "cpu":
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from advprotect.runtime import resolve_device
    from perf import common

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    out_path = Path(args.out) if args.out else HERE / "results" / ("latest-quick.json" if args.quick else "latest.json")
    work = Path(tempfile.mkdtemp(prefix="advprotect-bench-"))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    ctx = common.Context(quick=args.quick, device=device, threads=torch.get_num_threads(), work=work, log=log)
    result: dict = {"quick": args.quick, **common.environment(device, ctx.threads),
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])}
    t_all = time.perf_counter()
    failed = []
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save(partial: bool) -> None:
        result["partial"] = partial
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out_path)

    try:
        for name in chosen:
            log(f"{name}: start (load {common.loadavg()})")
            t0 = time.perf_counter()
            mod = __import__(f"perf.{name}", fromlist=["run"])
            try:
                section = mod.run(ctx)
            except Exception as exc:  # one broken benchmark must not lose the others
                failed.append(name)
                section = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                log(f"{name}: FAILED {exc!r}")
            section["bench_seconds"] = round(time.perf_counter() - t0, 1)
            section["loadavg_after"] = common.loadavg()
            result[name] = section
            save(partial=True)  # an interrupted run keeps the benchmarks already done
            log(f"{name}: done in {section['bench_seconds']} s")
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"scratch kept in {work}")

    def pick(section: str, key: str):
        return result.get(section, {}).get(key)

    result["floor_ratio"] = pick("floor", "floor_ratio")
    result["peer_ratio"] = pick("peer", "peer_ratio")
    result["faces_per_s"] = pick("throughput", "faces_per_s")
    mem = result.get("memory", {})
    result["rss_ratio_1000_vs_10"] = mem.get("rss_ratio_1000_vs_10")
    if args.quick and "rss_ratio" in mem:
        result[f"rss_ratio_{mem['large']}_vs_10"] = mem["rss_ratio"]
    result["loadavg_end"] = common.loadavg()
    result["total_seconds"] = round(time.perf_counter() - t_all, 1)
    result["failed"] = failed
    save(partial=False)
    summary = {k: result.get(k) for k in ("floor_ratio", "peer_ratio", "faces_per_s", "rss_ratio_1000_vs_10",
                                           "device", "torch_version", "loadavg_start", "loadavg_end", "total_seconds")}
    print(json.dumps(summary, indent=2))
    log(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
