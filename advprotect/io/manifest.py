"""The resume manifest: an append-only JSONL log in OUT of every finished file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .writer import atomic_write_bytes

MANIFEST_NAME = ".advprotect-manifest.jsonl"
LOCK_NAME = ".advprotect.lock"

#: line statuses: "writing" is logged just before an output is replaced (so a file left by a run
#: killed between the write and the "done" line is known to be ours); "done" is logged after the
#: output is atomically in place.
DONE_STATUSES = ("done", "warned")


def json_default(obj: Any):
    """JSON fallback for report/manifest values: numpy/torch scalars and arrays, paths, sets."""
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist() if obj.size <= 64 else f"<array shape={list(obj.shape)} dtype={obj.dtype}>"
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            if obj.numel() == 1:
                return obj.item()
            if obj.numel() <= 64:
                return obj.detach().cpu().tolist()
            return f"<tensor shape={list(obj.shape)} dtype={obj.dtype}>"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    return str(obj)


def dumps(obj: Any, **kw) -> str:
    return json.dumps(obj, default=json_default, ensure_ascii=False, **kw)


class Manifest:
    """``OUT/.advprotect-manifest.jsonl``; one JSON object per line:
    ``{"rel", "status", "input_sha256", "settings_hash", "output", "warnings", "info", "time"}``.

    Loading tolerates a torn last line (a run killed mid-append). The latest line for a ``rel``
    wins. Appends are flushed and fsynced.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.latest_done: dict[str, dict] = {}
        self.known_outputs: set[str] = set()
        self._fh = None
        self.load()

    def load(self) -> None:
        self.latest_done.clear()
        self.known_outputs.clear()
        if not self.path.exists():
            return
        n_lines = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                n_lines += 1
                try:
                    entry = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    continue  # torn line from a killed run
                if not isinstance(entry, dict) or "rel" not in entry:
                    continue
                if entry.get("output"):
                    self.known_outputs.add(str(entry["output"]))
                if entry.get("status") in DONE_STATUSES:
                    self.latest_done[str(entry["rel"])] = entry
        if n_lines > 2 * len(self.latest_done) + 1000:
            self.compact()

    def compact(self) -> None:
        """Rewrite the manifest with only the latest finished entry per file (atomically)."""
        lines = [dumps(e) + "\n" for e in self.latest_done.values()]
        lines += [dumps({"rel": o, "status": "writing", "output": o}) + "\n"
                  for o in sorted(self.known_outputs - {str(e.get("output")) for e in self.latest_done.values()})]
        self.close()
        atomic_write_bytes(self.path, "".join(lines).encode("utf-8"))

    def done_entry(self, rel: str, input_sha256: str, settings_hash: str) -> dict | None:
        """The finished entry for ``rel`` if it was made from the same input bytes with the same
        settings and its output (if it has one) still exists; else None."""
        e = self.latest_done.get(str(rel))
        if not e or e.get("input_sha256") != input_sha256 or e.get("settings_hash") != settings_hash:
            return None
        out = e.get("output")
        if out and not (self.out_dir / out).is_file():
            return None
        return e

    def is_ours(self, output_rel: str) -> bool:
        return str(output_rel) in self.known_outputs

    def _open(self):
        if self._fh is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab")
            if fh.tell() > 0:
                with open(self.path, "rb") as rd:
                    rd.seek(-1, os.SEEK_END)
                    if rd.read(1) != b"\n":
                        fh.write(b"\n")  # terminate a torn line so ours starts clean
            self._fh = fh
        return self._fh

    def append(self, entry: dict, *, sync: bool = True) -> None:
        entry = {**entry, "time": entry.get("time") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fh = self._open()
        fh.write((dumps(entry, separators=(",", ":")) + "\n").encode("utf-8"))
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
        if entry.get("output"):
            self.known_outputs.add(str(entry["output"]))
        if entry.get("status") in DONE_STATUSES:
            self.latest_done[str(entry["rel"])] = entry

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OutputLock:
    """Exclusive lock on OUT so two runs never write into the same folder at once (released by the
    OS if the process dies). Where ``fcntl`` is missing (Windows) it is a no-op."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_NAME
        self._fh = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return True
        self._fh = open(self.path, "a+b")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            return False
        return True

    def release(self) -> None:
        if self._fh is not None:
            try:
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            except (ImportError, OSError):
                pass
            self._fh.close()
            self._fh = None
