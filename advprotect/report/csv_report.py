"""CSV writer: one row per evaluated image (the report's ``images``), then the failed and unpaired
files with their error, so every file of either folder appears once."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ._util import atomic_write_text

LEAD = ["rel", "identity", "status", "error"]


QUALITY = ["ssim", "psnr", "linf_255", "l2", "face_ssim", "face_psnr", "face_linf_255", "face_l2", "face_box"]
MODEL = ["face_clean", "face_protected", "own_distance", "own_verified", "enrolled_pairs",
         "enrolled_verified_clean", "enrolled_verified_protected", "impostor_pairs",
         "impostor_verified_clean", "impostor_verified_protected"]


def csv_columns(report: dict) -> list[str]:
    """Fixed order: file, quality, then each model's columns; other evaluators' columns last."""
    present = {k for row in report.get("images", []) for k in row}
    cols: list[str] = list(LEAD) + [c for c in QUALITY if c in present]
    for m in report.get("inputs", {}).get("models", []):
        cols += [f"{m}_{c}" for c in MODEL if f"{m}_{c}" in present]
    for row in report.get("images", []):
        for k in row:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def write_csv(report: dict, path) -> Path:
    cols = csv_columns(report)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    status = {f["rel"]: f for f in report.get("files", []) if f.get("rel") is not None}
    for row in report.get("images", []):
        f = status.get(row["rel"], {})
        full = {**row, "status": f.get("status", "ok"), "error": f.get("error") or "; ".join(f.get("warnings", []))}
        w.writerow([_cell(full.get(c)) for c in cols])
    done = {r["rel"] for r in report.get("images", [])}
    for f in report.get("files", []):
        if f.get("status") != "ok" and f.get("rel") not in done:
            rel = f.get("rel") or f.get("original") or f.get("protected")
            w.writerow([_cell({"rel": rel, "identity": f.get("identity"), "status": f.get("status"),
                               "error": f.get("error")}.get(c)) for c in cols])
    return atomic_write_text(Path(path), buf.getvalue())
