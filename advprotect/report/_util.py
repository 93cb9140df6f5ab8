"""Small helpers shared by the writers."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and a rename; parents are created."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    """A table cell: ``-`` for None, percentages, rounded floats, ``inf``."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if math.isnan(v):
            return "nan"
        return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"
    return str(v)
