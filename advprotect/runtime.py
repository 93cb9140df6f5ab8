"""Process-wide runtime settings: device choice, seeding, thread count."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Any, Iterator

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a :class:`torch.device`; ``cuda`` without a GPU is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")


def seed_everything(seed: int | None) -> None:
    """Seed python, numpy and torch so runs are reproducible."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset`` or a container's
    cpuset), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads() -> None:
    """Use every available core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(available_cpus())


@contextlib.contextmanager
def shape_varying(device: torch.device | str | None = None) -> Iterator[None]:
    """Context for CPU work whose tensor shapes change from call to call (detection on photos of
    any size, SSIM of face regions of any size): oneDNN builds and caches a kernel for every new
    convolution shape, up to about a thousand of them, so a folder of photos of many sizes would
    grow the process by hundreds of MB (bench/perf/memory.py). Here torch's own convolutions run
    instead; they cache nothing (detection costs ~0.04 s more per photo). The attack, the same
    shapes every step, keeps oneDNN. No effect on other devices. Not thread-safe (a global flag)."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)


_LIBC: Any = None


def _glibc() -> Any:
    """glibc through ctypes, or ``False`` (another libc, another OS)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                lib = ctypes.CDLL("libc.so.6")
                _LIBC = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else False
            except OSError:
                pass
    return _LIBC


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Called between pipeline batches: the photos and faces of each batch differ in size, so the
    freed temporaries of one batch leave holes that the next cannot always reuse; without this
    the peak RSS of a long run creeps up with the folder size (bench/perf/memory.py)."""
    lib = _glibc()
    if lib:
        lib.malloc_trim(0)


#: glibc ``M_MMAP_THRESHOLD`` for streaming runs (see :func:`configure_allocator`)
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3


def configure_allocator() -> int | None:
    """Fix glibc's mmap threshold for a long streaming run; returns the threshold set, or None.

    glibc serves blocks at or above the threshold with their own ``mmap`` (returned to the OS on
    free) and smaller ones from its heap. By default the threshold *grows* to the size of every
    mmapped block freed (up to 32 MiB), so after the first batch the multi-MiB tensors of
    detection and the attack come from the heap, where photos of ever-different sizes fragment
    it and the peak RSS creeps up with the number of photos. A fixed threshold keeps those blocks
    out of the heap. The price: each such block is a fresh ``mmap`` whose pages the kernel zeroes,
    3-10% fewer faces/s in ``bench/run.py``; the attack-step benchmarks (floor, peer ratio) do not
    run the pipeline. ``ADVPROTECT_MMAP_THRESHOLD`` (bytes; ``0`` = leave glibc's default, the
    faster choice where memory is not tight) overrides it. No-op off glibc."""
    raw = os.environ.get("ADVPROTECT_MMAP_THRESHOLD", str(MMAP_THRESHOLD))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"ADVPROTECT_MMAP_THRESHOLD must be a number of bytes, got {raw!r}") from None
    lib = _glibc()
    if value <= 0 or not lib:
        return None
    return value if lib.mallopt(_M_MMAP_THRESHOLD, value) == 1 else None
