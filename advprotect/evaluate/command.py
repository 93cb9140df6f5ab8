"""``advprotect evaluate``: how well did protection work, and what did it cost?

Usage::

    advprotect evaluate --original DIR --protected DIR [--enrolled DIR | --pairs pairs.csv]
        [--models facenet128,dlib-resnet,dlib] [--transforms jpeg:75,social]
        [--out report.json] [--csv report.csv] [--md report.md] [--html report.html]
        [--fail-under 0.8 [--fail-model facenet128]]

Files of ``--original`` and ``--protected`` are paired by relative path (falling back to the
same path with another image extension). The identity of a photo is its first-level subfolder
(``DIR/<identity>/photo.jpg``; photos directly in DIR have none). ``--enrolled DIR`` holds clean
reference photos in the same identity subfolders; without it the other originals of the same
identity are the references. A pairs file (CSV with a header: ``protected_rel,enrolled_path[,same]``,
``enrolled_path`` relative to the pairs file's folder unless absolute, ``same`` 1/0, default 1)
replaces both.

Evaluators
----------
Each kind of measurement is an *evaluator* in :data:`EVALUATORS` (``kind -> factory(options)``)
with three methods: ``begin(ctx: EvalContext)``, ``add(item, clean, protected, scratch)`` called
once per readable pair in order (``scratch`` is a dict shared by the evaluators for that pair:
``faces`` puts the clean face box there for ``quality``), and ``finish() -> (section, rows)``: its
JSON section and per-image columns ``{rel: {column: value}}``. A section may carry
``"errors": [{"path", "error"}]`` (counted as failed files) and, optionally, ``"robustness":
{"asr": {model: {transform: value}}}`` and ``"models": {model: {"mean_asr"}}`` (used by the
summary, ``--fail-under`` and the reports). New kinds (CAPTCHA solve rates, k-anonymity rank
distributions...) plug in with :func:`register_evaluator`.

JSON schema (``schema: "advprotect.evaluate/1"``)
------------------------------------------------
::

    schema, version, created (ISO time), elapsed_s
    inputs:    {original, protected, enrolled, pairs, models: [..], transforms: [..], device}
    counts:    {originals, protected, paired, evaluated, failed}
    files:     [{rel, identity, original, protected, status: ok|failed|unpaired, error?,
                 warnings: [..]}]                 one entry per file of either folder
    images:    [{rel, identity, <column>: value}] one row per evaluated pair (also the CSV):
                 ssim, psnr, linf_255, l2           whole photo (psnr null = identical)
                 face_ssim, face_psnr, face_linf_255, face_l2, face_box   clean face region
                 <model>_face_clean/_face_protected  a face found (bool)
                 <model>_own_distance, <model>_own_verified               vs own clean photo
                 <model>_enrolled_pairs/_verified_clean/_verified_protected  vs other photos
    results:
      quality: {mean: {ssim, psnr, linf_255, l2, face_ssim, face_psnr, face_linf_255, face_l2},
                images}                          means over the evaluated images (psnr: finite ones)
      faces:   {models: {<model>: {white_box, distance, thresholds: {far1e-2, far1e-3},
                                    faces_found_clean, faces_found_protected, mean_asr,
                                    pairs: {own|enrolled|impostor: {missing_reference,
                                        transforms: {none|<transform>: {far1e-2|far1e-3:
                                            {pairs, verified_clean, verified_protected, asr,
                                             protection_rate, verify_rate_clean,
                                             verify_rate_protected}}}}},
                                    adv_adv: {missing_reference, far1e-2|far1e-3:
                                        {pairs, match_rate_clean, match_rate_protected, asr}}}},
                transforms: ["none", ..], robustness: {metric, asr: {<model>: {<transform>: x}}},
                references, notes, errors}
    summary:   {mean_asr: {<model>: x}, robustness: {<model>: {<transform>: x}},
                quality: {...means}, fail_under, fail_model, threshold_met}
    exit_code: 0 ok | 1 some files failed | 3 fail_under not met  (2: usage errors raise)

``mean_asr`` of a model is the mean of its ASR (APF Eq. 11, at FAR 1e-2) over the ``own`` and
``enrolled`` pair kinds that have pairs, on the untransformed protected photos; the robustness
table is the same number after each transform. Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..io import ImageReadError, UsageError, discover, read_image
from ..io.discover import read_text_file
from .quality import image_quality

__all__ = [
    "EVALUATORS",
    "SCHEMA",
    "EvalContext",
    "PairItem",
    "QualityEvaluator",
    "evaluate_command",
    "read_pairs",
    "register_evaluator",
]

SCHEMA = "advprotect.evaluate/1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_THRESHOLD = 0, 1, 2, 3
THUMBNAILS = 48


@dataclass
class PairItem:
    rel: PurePosixPath
    identity: str | None
    original: Path
    protected: Path


@dataclass
class EvalContext:
    items: list[PairItem]
    references: dict[str, list[Path]]  # identity -> clean reference photos
    pairs: list[tuple[str, Path, bool]] | None  # (protected rel, reference, same)
    device: str = "cpu"
    progress: Callable[[str], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- evaluators

def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None and torch.isfinite(torch.tensor(float(v)))]
    return round(sum(vals) / len(vals), 5) if vals else None


class QualityEvaluator:
    """Evaluator ``quality``: SSIM / PSNR / L-inf / L2 of the whole photo and of the clean face box."""

    kind = "quality"

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def begin(self, ctx: EvalContext) -> None:
        pass

    def add(self, item: PairItem, clean: torch.Tensor, protected: torch.Tensor, scratch: dict) -> None:
        row: dict[str, Any] = {}
        if clean.shape != protected.shape:
            scratch.setdefault("warnings", []).append(
                f"sizes differ ({clean.shape[2]}x{clean.shape[1]} vs {protected.shape[2]}x{protected.shape[1]}): "
                "no quality measures")
            self.rows[str(item.rel)] = row
            return
        q = image_quality(clean, protected)
        row.update({k: q[k] for k in ("ssim", "psnr", "linf_255", "l2")})
        box = scratch.get("face_box")
        if box is not None:
            h, w = clean.shape[1:]
            x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
            x1, y1 = min(w, round(box[2])), min(h, round(box[3]))
            if x1 - x0 >= 3 and y1 - y0 >= 3:
                fq = image_quality(clean[:, y0:y1, x0:x1], protected[:, y0:y1, x0:x1])
                row.update({f"face_{k}": fq[k] for k in ("ssim", "psnr", "linf_255", "l2")})
                row["face_box"] = [x0, y0, x1, y1]
        self.rows[str(item.rel)] = row

    def finish(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        keys = ["ssim", "psnr", "linf_255", "l2", "face_ssim", "face_psnr", "face_linf_255", "face_l2"]
        mean = {k: _mean([r.get(k) for r in self.rows.values()]) for k in keys}
        return {"mean": mean, "images": len(self.rows)}, self.rows


#: kind -> factory(options: dict) -> evaluator. Order is the order ``add`` is called in.
EVALUATORS: dict[str, Callable[[dict], Any]] = {}


def register_evaluator(kind: str, factory: Callable[[dict], Any]) -> None:
    """Add (or replace) an evaluator kind; ``factory(options)`` builds one for a run."""
    EVALUATORS[kind] = factory


def _faces_factory(opts: dict):
    from .faces import FaceEvaluator

    return FaceEvaluator(opts["models"], opts["transforms"], opts.get("device", "cpu"))


register_evaluator("faces", _faces_factory)
register_evaluator("quality", lambda opts: QualityEvaluator())

#: evaluator kinds that live beside their subcommand; imported (and so registered) on first use.
PLUGINS: dict[str, str] = {
    "captcha": "advprotect.captcha.evaluate",
    "kanon": "advprotect.kanon.evaluate",
}


def _load_evaluator(kind: str) -> None:
    if kind not in EVALUATORS and kind in PLUGINS:
        import importlib

        importlib.import_module(PLUGINS[kind])


# ---------------------------------------------------------------------------- inputs

def _folder(path, what: str) -> Path:
    if path is None:
        raise UsageError(f"--{what} is required")
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"--{what} folder not found: {p}")
    if not p.is_dir():
        raise UsageError(f"--{what} must be a folder: {p}")
    return p


def _identity(rel: PurePosixPath) -> str | None:
    return rel.parts[0] if len(rel.parts) > 1 else None


def _no_suffix(rel: PurePosixPath) -> str:
    return str(rel.with_suffix("")).lower()


def read_pairs(path) -> list[tuple[str, Path, bool]]:
    """Rows of a pairs file: ``(protected_rel, enrolled path, same)``. Raises :class:`UsageError`."""
    p, text = read_text_file(path, "--pairs file", UsageError)
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "protected_rel" not in fields or "enrolled_path" not in fields:
        raise UsageError(f"--pairs {p}: the header must name protected_rel,enrolled_path[,same]; got {fields}")
    out = []
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        rel, ref = row.get("protected_rel", ""), row.get("enrolled_path", "")
        if not rel or not ref:
            raise UsageError(f"--pairs {p} line {n}: protected_rel and enrolled_path must not be empty")
        same_s = row.get("same", "") or "1"
        if same_s not in ("0", "1"):
            raise UsageError(f"--pairs {p} line {n}: same must be 1 or 0, got {same_s!r}")
        refp = Path(ref).expanduser()
        out.append((str(PurePosixPath(rel.replace("\\", "/"))), refp if refp.is_absolute() else p.parent / refp,
                    same_s == "1"))
    return out


def _pair(original: Path, protected: Path) -> tuple[list[PairItem], list[dict[str, Any]]]:
    orig = discover(original)
    prot = discover(protected)
    files: list[dict[str, Any]] = []
    by_rel = {str(i.rel): i for i in prot}
    by_stem: dict[str, list] = {}
    for i in prot:
        by_stem.setdefault(_no_suffix(i.rel), []).append(i)
    used: set[str] = set()
    items = []
    for o in orig:
        rel = str(o.rel)
        p = by_rel.get(rel)
        if p is None or rel in used:
            cands = [c for c in by_stem.get(_no_suffix(o.rel), []) if str(c.rel) not in used]
            p = cands[0] if len(cands) == 1 else None
        entry = {"rel": rel, "identity": _identity(o.rel), "original": str(o.path),
                 "protected": None, "status": "ok", "warnings": []}
        if o.error:
            entry.update(status="failed", error=f"original: {o.error}")
        if p is None:
            if entry["status"] == "ok":
                entry.update(status="unpaired", error="no protected file with this relative path")
            files.append(entry)
            continue
        used.add(str(p.rel))
        entry["protected"] = str(p.path)
        if p.error and entry["status"] == "ok":
            entry.update(status="failed", error=f"protected: {p.error}")
        files.append(entry)
        if entry["status"] == "ok":
            items.append(PairItem(o.rel, _identity(o.rel), o.path, p.path))
    for p in prot:
        if str(p.rel) not in used:
            files.append({"rel": str(p.rel), "identity": _identity(p.rel), "original": None,
                          "protected": str(p.path), "status": "unpaired",
                          "error": "no original file with this relative path", "warnings": []})
    return items, files


def _references(items: list[PairItem], enrolled: Path | None) -> dict[str, list[Path]]:
    refs: dict[str, list[Path]] = {}
    if enrolled is not None:
        for e in discover(enrolled):
            ident = _identity(e.rel)
            if ident is not None and not e.error:
                refs.setdefault(ident, []).append(e.path)
    else:
        for it in items:
            if it.identity is not None:
                refs.setdefault(it.identity, []).append(it.original)
    return refs


# ---------------------------------------------------------------------------- the command

def evaluate_command(original, protected, *, enrolled=None, pairs=None, models=None,
                     transforms: str | None = "jpeg:75,social", out_json=None, out_csv=None,
                     out_md=None, html=None, fail_under: float | None = None,
                     fail_model: str | None = None, device: str = "cpu",
                     progress: Callable[[str], None] | None = None,
                     kinds: Sequence[str] = ("faces", "quality"),
                     extra: dict[str, Any] | None = None) -> tuple[dict, int]:
    """Run every evaluator over the paired photos; write the asked reports.

    ``kinds`` picks the evaluators (faces, quality, captcha, kanon...); ``extra`` options
    (labels file, classifier, K...) reach every evaluator's factory beside models/transforms.

    Returns ``(report, exit_code)`` (0 ok, 1 some files failed, 3 ``fail_under`` not met).
    Raises :class:`advprotect.io.UsageError` (a ``ValueError``; the CLI exits 2) for a missing
    folder, a bad transform or model name, a bad pairs file, or ``enrolled`` with ``pairs``.
    """
    from .faces import resolve_models
    from .robustness import parse_transforms

    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    orig_dir = _folder(original, "original")
    prot_dir = _folder(protected, "protected")
    enr_dir = _folder(enrolled, "enrolled") if enrolled is not None else None
    if enr_dir is not None and pairs is not None:
        raise UsageError("give --enrolled or --pairs, not both")
    kinds = list(dict.fromkeys(kinds))
    for k in kinds:
        _load_evaluator(k)
        if k not in EVALUATORS:
            raise UsageError(f"unknown evaluator {k!r}; known: {', '.join(dict.fromkeys([*EVALUATORS, *PLUGINS]))}")
    try:
        tlist = parse_transforms(transforms)
        model_names = resolve_models(models) if "faces" in kinds else []
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    fail_model = fail_model or ("facenet128" if "faces" in kinds else None)
    if fail_under is not None:
        if not 0.0 <= float(fail_under) <= 1.0:
            raise UsageError(f"--fail-under must be in [0, 1], got {fail_under}")
        if fail_model is None:
            raise UsageError("--fail-under needs --fail-model (the model or solver whose mean ASR is checked)")
        if "faces" in kinds and set(kinds) <= {"faces", "quality"} and fail_model not in model_names:
            raise UsageError(f"--fail-model {fail_model!r} is not among the evaluated models: {', '.join(model_names)}")
    pair_rows = read_pairs(pairs) if pairs is not None else None

    items, files = _pair(orig_dir, prot_dir)
    by_rel = {f["rel"]: f for f in files if f["status"] == "ok"}
    ctx = EvalContext(items, _references(items, enr_dir), pair_rows, device, progress,
                      {**(extra or {}), "models": model_names, "transforms": tlist, "device": device})
    # "faces" must see a pair before "quality" (it provides the face box)
    order = sorted(kinds, key=lambda k: (k != "faces", list(EVALUATORS).index(k)))
    evaluators = {k: EVALUATORS[k](ctx.options) for k in order}
    for ev in evaluators.values():
        ev.begin(ctx)

    thumbs: list[dict[str, Any]] = []
    evaluated: list[PairItem] = []
    for n, it in enumerate(items, 1):
        say(f"{n}/{len(items)} {it.rel}")
        entry = by_rel[str(it.rel)]
        try:
            clean = read_image(it.original).pixels
        except ImageReadError as exc:
            entry.update(status="failed", error=f"original unreadable: {exc}")
            continue
        try:
            prot = read_image(it.protected).pixels
        except ImageReadError as exc:
            entry.update(status="failed", error=f"protected unreadable: {exc}")
            continue
        scratch: dict[str, Any] = {}
        try:
            with torch.no_grad():
                for ev in evaluators.values():
                    ev.add(it, clean, prot, scratch)
        except Exception as exc:  # noqa: BLE001 - one bad pair is reported, the rest goes on
            entry.update(status="failed", error=f"evaluation failed: {type(exc).__name__}: {exc}")
            continue
        entry["warnings"] += scratch.get("warnings", [])
        evaluated.append(it)
        if len(thumbs) < THUMBNAILS:
            from ..report.html import thumbnail_triplet

            thumbs.append({"rel": str(it.rel), **thumbnail_triplet(clean, prot)})

    results: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {str(it.rel): {"rel": str(it.rel), "identity": it.identity}
                                       for it in evaluated}
    for k, ev in evaluators.items():
        say(f"summarising {k}")
        section, ev_rows = ev.finish()
        results[k] = section
        for rel, cols in ev_rows.items():
            if rel in rows:
                rows[rel].update(cols)
        for e in section.get("errors", []) or []:
            files.append({"rel": None, "identity": None, "original": e.get("path"), "protected": None,
                          "status": "failed", "error": e.get("error"), "warnings": []})

    mean_asr: dict[str, Any] = {}
    robustness: dict[str, Any] = {}
    for section in results.values():
        for m, info in (section.get("models") or {}).items():
            if isinstance(info, dict) and "mean_asr" in info:
                mean_asr[m] = info["mean_asr"]
        robustness.update((section.get("robustness") or {}).get("asr", {}))
    failed = sum(1 for f in files if f["status"] != "ok")
    threshold_met = None
    if fail_under is not None:
        got = mean_asr.get(fail_model)
        threshold_met = got is not None and got >= float(fail_under)
    exit_code = EXIT_OK
    if failed or not evaluated:
        exit_code = EXIT_FAILED
    if threshold_met is False:
        exit_code = EXIT_THRESHOLD

    report = {
        "schema": SCHEMA,
        "version": _version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": None,
        "inputs": {"original": str(orig_dir), "protected": str(prot_dir),
                   "enrolled": None if enr_dir is None else str(enr_dir),
                   "pairs": None if pairs is None else str(pairs), "models": model_names,
                   "transforms": [t.name for t in tlist], "device": str(device), "evaluators": list(evaluators)},
        "counts": {"originals": sum(1 for f in files if f["original"] and f["rel"] is not None),
                   "protected": sum(1 for f in files if f["protected"]),
                   "paired": len(items), "evaluated": len(evaluated), "failed": failed},
        "files": files,
        "images": list(rows.values()),
        "results": results,
        "summary": {"mean_asr": mean_asr, "robustness": robustness,
                    "quality": (results.get("quality") or {}).get("mean"),
                    "fail_under": fail_under, "fail_model": fail_model if fail_under is not None else None,
                    "threshold_met": threshold_met},
        "exit_code": exit_code,
    }
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    from ..report import write_csv, write_html, write_json, write_markdown

    if out_json:
        write_json(report, out_json)
    if out_csv:
        write_csv(report, out_csv)
    if out_md:
        write_markdown(report, out_md)
    if html:
        write_html(report, html, thumbnails=thumbs)
    return report, exit_code


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except Exception:  # noqa: BLE001  # pragma: no cover
        return "unknown"
