"""JSON writer: the report as is, with non-finite floats (PSNR of identical images) as ``null``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._util import atomic_write_text


def clean_json(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: NaN/inf -> None, tuples -> lists, paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    try:  # numpy / torch scalars
        return clean_json(obj.item())
    except Exception:  # noqa: BLE001
        return str(obj)


def write_json(report: dict, path) -> Path:
    return atomic_write_text(path, json.dumps(clean_json(report), indent=2, allow_nan=False) + "\n")
