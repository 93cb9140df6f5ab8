"""Shared pieces of the performance benchmarks: run context, interleaved timing, environment."""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_images"


@dataclass
class Context:
    """What every benchmark gets from ``bench/run.py``."""

    quick: bool
    device: torch.device
    threads: int
    work: Path  # scratch folder (deleted at the end)
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)

    @property
    def sync(self) -> Callable[[], None]:
        return torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

    def child_env(self) -> dict[str, str]:
        """Environment for child processes: same thread count as this process."""
        env = dict(os.environ)
        if self.device.type == "cpu":
            env["OMP_NUM_THREADS"] = str(self.threads)
            env["MKL_NUM_THREADS"] = str(self.threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def environment(device: torch.device, threads: int) -> dict:
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg(),
    }
    try:
        import kornia

        info["kornia_version"] = kornia.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Run every function ``repeats`` times, round-robin (A B A B ...), after ``warmup`` rounds;
    returns each one's wall times in seconds. Interleaving spreads other processes' load over
    both sides of a comparison."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios num[i] / den[i] (rounds were interleaved)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))


def default_mode() -> str:
    """The preset ``advprotect protect-faces`` uses when ``--mode`` is not given."""
    from advprotect import cli

    opt = inspect.signature(cli.protect_faces).parameters["mode"].default
    return getattr(opt, "default", opt)


def sample_photos() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)
