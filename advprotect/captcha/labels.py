"""``labels.csv``: the answers of a CAPTCHA folder, in clear or as salted hashes.

Two layouts (UTF-8 CSV with a header row; ``file`` is the image path relative to the folder,
with ``/`` separators):

* ``file,answer``: the answer in clear;
* ``file,salt,sha256``: ``sha256 = SHA-256(salt + ":" + answer.lower())`` in hex, ``salt`` 16
  random bytes in hex (``generate --hash-answers``): a server can check a typed answer without
  storing it. Answers are case-insensitive, so they are lower-cased before hashing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..io.discover import read_text_file

__all__ = ["Label", "hash_answer", "labels_csv", "read_labels"]


def hash_answer(answer: str, salt: str) -> str:
    """Hex SHA-256 of ``salt:answer`` (answer lower-cased)."""
    return hashlib.sha256(f"{salt}:{answer.lower()}".encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Label:
    """One CAPTCHA's answer: ``answer`` in clear, or ``salt`` + ``digest`` when hashed."""

    answer: str | None = None
    salt: str | None = None
    digest: str | None = None

    @property
    def hashed(self) -> bool:
        return self.answer is None

    def matches(self, guess: str) -> bool:
        """Whether a solver's ``guess`` is right (case-insensitive)."""
        g = (guess or "").lower()
        if self.answer is not None:
            return g == self.answer.lower()
        return hash_answer(g, self.salt or "") == self.digest


def labels_csv(rows: list[tuple[str, str]], hashed: bool = False) -> bytes:
    """CSV bytes for ``[(file, answer)]`` in clear or hashed with fresh random salts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if hashed:
        w.writerow(["file", "salt", "sha256"])
        for f, a in rows:
            salt = secrets.token_hex(16)
            w.writerow([f, salt, hash_answer(a, salt)])
    else:
        w.writerow(["file", "answer"])
        w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def read_labels(path: str | Path) -> dict[str, Label]:
    """``{relative file: Label}`` from a labels file. Raises ``ValueError`` (missing file, bad
    header, empty or duplicate entries) with the line number."""
    p, text = read_text_file(path, "labels file")
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "file" not in fields or not ("answer" in fields or {"salt", "sha256"} <= set(fields)):
        raise ValueError(f"{p}: the header must be file,answer or file,salt,sha256; got {','.join(fields) or 'nothing'}")
    out: dict[str, Label] = {}
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        f = str(PurePosixPath(row.get("file", "").replace("\\", "/")))
        if not row.get("file"):
            raise ValueError(f"{p} line {n}: empty file name")
        if f in out:
            raise ValueError(f"{p} line {n}: {f} is listed twice")
        if row.get("answer"):
            out[f] = Label(answer=row["answer"])
        elif row.get("salt") and row.get("sha256"):
            out[f] = Label(salt=row["salt"], digest=row["sha256"].lower())
        else:
            raise ValueError(f"{p} line {n}: no answer for {f}")
    if not out:
        raise ValueError(f"{p} lists no CAPTCHAs")
    return out
