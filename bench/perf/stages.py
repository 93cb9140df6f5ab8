"""Per-stage time accounting of a real protect-faces run, by wrapping the functions each stage
calls (no change to the code under test).

Each wrapper records *exclusive* time: a stage nested in another (detection inside preparation,
image quality inside measurement) is subtracted from its parent, per thread. Decoding and writing
run on the pipeline's background threads and overlap the attack, so stage times add up to more
than the wall time on a multi-core machine; shares are of their sum.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

STAGES = (
    ("read", "advprotect.io.pipeline", None, "read_bytes"),
    ("decode", "advprotect.io.pipeline", None, "decode_image"),
    ("detect", "advprotect.faces.detect", "FaceDetector", "detect"),
    ("align", "advprotect.faces.embed", "FaceAnalyzer", "prepare"),
    ("attack", "advprotect.faces.protect", "FaceProtector", "attack_jobs"),
    ("compose", "advprotect.faces.protect", "FaceProtector", "compose"),
    ("protect_other", "advprotect.faces.protect", "FaceProtector", "protect"),
    ("measure", "advprotect.faces.protect", "FaceProtector", "measure"),
    ("measure", "advprotect.faces.protect", "FaceProtector", "measure_many"),
    ("verify_native", "advprotect.faces.protect", "Evaluators", "native_pairs"),
    ("quality", "advprotect.evaluate.quality", None, "image_quality"),
    ("write", "advprotect.io.pipeline", None, "write_image"),
    ("manifest", "advprotect.io.pipeline", "_Runner", "_finish"),
    ("process_other", "advprotect.io.pipeline", "_Runner", "_call"),
)


class StageTimer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._restore: list[tuple[Any, str, Any]] = []

    def reset(self) -> None:
        with self.lock:
            self.totals.clear()
            self.counts.clear()

    def wrap(self, stage: str, fn: Callable) -> Callable:
        timer = self

        @functools.wraps(fn)
        def inner(*a, **kw):
            stack = getattr(timer.local, "stack", None)
            if stack is None:
                stack = timer.local.stack = []
            stack.append(0.0)  # time spent in nested stages
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                nested = stack.pop()
                if stack:
                    stack[-1] += dt
                with timer.lock:
                    timer.totals[stage] = timer.totals.get(stage, 0.0) + dt - nested
                    timer.counts[stage] = timer.counts.get(stage, 0) + 1

        return inner

    def install(self) -> "StageTimer":
        import importlib

        for stage, module, cls, attr in STAGES:
            mod = importlib.import_module(module)
            owner = getattr(mod, cls) if cls else mod
            orig = getattr(owner, attr, None)
            if orig is None:  # a function this version of the code does not have
                continue
            self._restore.append((owner, attr, orig))
            setattr(owner, attr, self.wrap(stage, orig))
        return self

    def uninstall(self) -> None:
        for owner, attr, orig in reversed(self._restore):
            setattr(owner, attr, orig)
        self._restore.clear()

    def snapshot(self) -> dict:
        with self.lock:
            totals = dict(self.totals)
        total = sum(totals.values())
        return {
            "seconds": {k: round(v, 4) for k, v in totals.items()},
            "share": {k: round(v / total, 4) if total else 0.0 for k, v in totals.items()},
            "sum_s": round(total, 4),
        }
