"""Ground-truth labels files for k-anon and ``evaluate --kind kanon``: CSV ``rel,label``."""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from ..io.discover import read_text_file

__all__ = ["read_labels"]


def read_labels(path: str | Path) -> dict[str, str]:
    """Rows ``rel,label`` of a CSV file -> ``{rel: label}``.

    ``rel`` is the image's path relative to the input folder (``/`` separators; for a single-file
    input, its file name); ``label`` is a class index (imagenet, TorchScript) or an identity name
    (faces: a gallery subfolder). An optional header row ``rel,label`` is skipped; blank lines and
    lines starting with ``#`` are ignored. Raises ``ValueError`` naming the line of a bad row.
    """
    p, text = read_text_file(path, "--labels file")
    out: dict[str, str] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if n == 1 and [c.lower() for c in cells[:2]] == ["rel", "label"]:
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ValueError(f"--labels {p} line {n}: expected 'rel,label', got {','.join(cells)!r}")
        rel = str(PurePosixPath(cells[0].replace("\\", "/")))
        if rel in out and out[rel] != cells[1]:
            raise ValueError(f"--labels {p} line {n}: {rel} has two labels ({out[rel]!r}, {cells[1]!r})")
        out[rel] = cells[1]
    if not out:
        raise ValueError(f"--labels {p} holds no rel,label rows")
    return out
