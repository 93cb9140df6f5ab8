"""CSV writer: one row per evaluated image (the report's ``images``), then the failed and unpaired
files with their error, so every file of either folder appears once."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ._util import atomic_write_text

LEAD = ["rel", "identity", "status", "error"]


def csv_columns(report: dict) -> list[str]:
    cols: list[str] = list(LEAD)
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
