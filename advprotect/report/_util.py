"""Small helpers shared by the writers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; parents are created."""
    from ..io.writer import atomic_write_bytes

    return atomic_write_bytes(Path(path).expanduser(), text.encode("utf-8"))


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
