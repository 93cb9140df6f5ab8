"""``keygen`` and ``erase``: plain functions behind the CLI subcommands.

Each returns ``(report, exit_code)``; the report is a JSON-serialisable dict that never contains key
material. Exit codes: 0 everything restored, 1 some files failed (each named in the report with its
message), 2 usage error (missing input, bad key file, output inside the input tree, ...).

ESR (ErasableMask, Eq. 18: the share of restored faces that a black-box face verifier accepts as the
same person as a clean photo) needs face models that live elsewhere: pass ``esr_fn`` to fill it in.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageOps

from .embed import SIDECAR_SUFFIX
from .erase import erase_file
from .errors import EraseError, ImageReadError, KeyFileError
from .keys import generate_key, load_key
from .pixels import EXT_FORMAT, as_hwc, read_pixels, resize_plane, to_unit_float

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: ``esr_fn(restored, original_or_None, protected_path) -> True/False/None``: does the restored face
#: verify as the person in a clean photo (None: cannot tell, e.g. no face found)?
EsrFn = Callable[[np.ndarray, Optional[np.ndarray], Path], Optional[bool]]

_LOSSY_OR_UNWRITABLE = {"JPEG", "GIF"}


# ----------------------------------------------------------------------------------------------
# keygen


def keygen_command(out: str | os.PathLike, *, force: bool = False) -> tuple[dict[str, Any], int]:
    """Create a key file. Report: ``key_file``, ``fingerprint`` (not secret), ``mode``."""
    out = Path(out)
    try:
        info = generate_key(out, force=force)
    except KeyFileError as exc:
        code = EXIT_USAGE if out.exists() or out.is_dir() else EXIT_FAILED
        return {"command": "keygen", "key_file": str(out), "error": str(exc), "exit_code": code}, code
    mode = stat.S_IMODE(os.stat(info.path).st_mode)
    report = {
        "command": "keygen",
        "key_file": str(info.path),
        "fingerprint": info.fingerprint,
        "mode": f"{mode:04o}",
        "note": "keep this file secret and backed up: it removes the protection, and without it the "
        "protection cannot be removed",
        "exit_code": EXIT_OK,
    }
    return report, EXIT_OK


# ----------------------------------------------------------------------------------------------
# metrics


def _comparable(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Float [0, 1] HxWxC versions of ``a`` and ``b`` with a common layout; ``b`` is resized to ``a``."""
    notes: list[str] = []
    fa, fb = to_unit_float(as_hwc(a)), to_unit_float(as_hwc(b))
    ca, cb = fa.shape[2], fb.shape[2]
    if ca != cb:
        def color(x):
            c = x.shape[2]
            if c >= 3:
                return x[..., :3]
            return np.repeat(x[..., :1], 3, axis=2)

        if min(ca, cb) <= 2 and max(ca, cb) >= 3:
            def gray(x):
                c = x.shape[2]
                if c >= 3:
                    return (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114)[..., None]
                return x[..., :1]

            fa, fb = gray(fa), gray(fb)
            notes.append("compared as grayscale")
        else:
            fa, fb = color(fa), color(fb)
            notes.append("alpha ignored")
    if fa.shape[:2] != fb.shape[:2]:
        size = (fa.shape[1], fa.shape[0])
        fb = np.stack([resize_plane(fb[..., i], size, Image.BILINEAR) for i in range(fb.shape[2])], axis=2)
        notes.append("original resized to the restored size")
    return fa, fb, notes


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two pixel arrays (any of uint8/uint16, layouts reconciled); inf when equal."""
    fa, fb, _ = _comparable(a, b)
    mse = float(np.mean((fa.astype(np.float64) - fb.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _json_float(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    return None if math.isinf(x) else round(x, 3)


# ----------------------------------------------------------------------------------------------
# erase


def _image_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(SIDECAR_SUFFIX):
                continue
            if Path(name).suffix.lower() in EXT_FORMAT:
                out.append(Path(dirpath) / name)
    return out


def _restored_name(rel: Path, used: set[Path]) -> Path:
    fmt = EXT_FORMAT.get(rel.suffix.lower())
    cand = rel.with_suffix(".png") if fmt in _LOSSY_OR_UNWRITABLE else rel
    if cand in used:
        cand = rel.with_name(rel.name + ".png")
    used.add(cand)
    return cand


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _find_original(original: Path, rel: Optional[Path], name: str) -> Optional[Path]:
    if original.is_file():
        return original
    if not original.is_dir():
        return None
    rel = rel if rel is not None else Path(name)
    direct = original / rel
    if direct.is_file():
        return direct
    folder = direct.parent
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.stem == rel.stem and p.suffix.lower() in EXT_FORMAT and p.is_file():
                return p
    return None


def _read_original(path: Path, like: np.ndarray) -> np.ndarray:
    arr = read_pixels(path).pixels
    if arr.shape[:2] != like.shape[:2] and arr.shape[:2] == like.shape[1::-1]:
        # the protect step may have applied the EXIF orientation
        with Image.open(path) as im:
            t = ImageOps.exif_transpose(im)
            if t is not None and t.size == (like.shape[1], like.shape[0]) and t.mode in ("L", "LA", "RGB", "RGBA"):
                arr = np.asarray(t)
    return arr


def erase_command(
    protected: str | os.PathLike,
    out: str | os.PathLike,
    key_file: str | os.PathLike,
    *,
    sidecar_dir: Optional[str | os.PathLike] = None,
    original: Optional[str | os.PathLike] = None,
    robust: bool = True,
    robust_from_embedded: bool = False,
    check_key_permissions: bool = True,
    esr_fn: Optional[EsrFn] = None,
    on_file: Optional[Callable[[dict[str, Any]], None]] = None,
) -> tuple[dict[str, Any], int]:
    """Erase the protection of a file or of every image in a folder (the tree is mirrored under
    ``out``; restored JPEGs are written as PNG so that they stay bit-exact).

    Per file the report gives ``status`` (restored/failed), ``mode`` (exact/robust), ``payload``
    (embedded or the sidecar used), ``bit_exact`` (the written file holds exactly the sealed original),
    ``message``, and with ``original``: ``psnr`` (restored vs original), ``psnr_protected``
    (protected vs original), ``matches_original``; with ``esr_fn``: ``esr``.
    """
    protected = Path(protected)
    out = Path(out)
    report: dict[str, Any] = {
        "command": "erase",
        "input": str(protected),
        "output": str(out),
        "files": [],
    }

    def usage(msg: str) -> tuple[dict[str, Any], int]:
        report["error"] = msg
        report["exit_code"] = EXIT_USAGE
        return report, EXIT_USAGE

    if not protected.exists():
        return usage(f"{protected} does not exist")
    if sidecar_dir is not None and not Path(sidecar_dir).is_dir():
        return usage(f"sidecar folder {sidecar_dir} does not exist")
    if original is not None and not Path(original).exists():
        return usage(f"original {original} does not exist")
    try:
        key = load_key(key_file, check_permissions=check_key_permissions)
    except KeyFileError as exc:
        return usage(str(exc))

    jobs: list[tuple[Path, Path, Optional[Path], Optional[Path]]] = []  # src, dst, rel, sidecar dir
    if protected.is_dir():
        if out.exists() and not out.is_dir():
            return usage(f"{out} is a file; give a folder for the restored images")
        if _inside(out, protected):
            return usage(f"the output folder {out} is inside the input folder {protected}")
        files = _image_files(protected)
        if not files:
            return usage(f"no image files in {protected}")
        used: set[Path] = set()
        for f in files:
            rel = f.relative_to(protected)
            sc = None
            if sidecar_dir is not None:
                mirrored = Path(sidecar_dir) / rel.parent
                sc = [mirrored, Path(sidecar_dir)] if rel.parent != Path(".") else [Path(sidecar_dir)]
            jobs.append((f, out / _restored_name(rel, used), rel, sc))
    else:
        if EXT_FORMAT.get(protected.suffix.lower()) is None:
            return usage(f"{protected} is not an image file this tool reads")
        dst = out / _restored_name(Path(protected.name), set()) if out.is_dir() else out
        if dst.resolve() == protected.resolve():
            return usage("the output would overwrite the protected input")
        if EXT_FORMAT.get(dst.suffix.lower()) in (None, "GIF"):
            return usage(f"cannot tell the output format from {dst.name}; use .png, .tif, .webp, .bmp or .jpg")
        sc = [Path(sidecar_dir)] if sidecar_dir is not None else None
        jobs.append((protected, dst, None, sc))

    failed = 0
    psnrs: list[float] = []
    esrs: list[bool] = []
    for src, dst, rel, sc in jobs:
        entry: dict[str, Any] = {"input": str(src), "output": None, "status": "failed"}
        try:
            res = erase_file(
                src,
                dst,
                key,
                sidecar_dir=sc,
                robust=robust,
                robust_from_embedded=robust_from_embedded,
                keep_pixels=original is not None or esr_fn is not None,
            )
        except EraseError as exc:
            failed += 1
            entry["message"] = str(exc)
            entry["error"] = type(exc).__name__
        except OSError as exc:
            failed += 1
            entry["message"] = f"cannot write the restored image: {exc.strerror or exc}"
            entry["error"] = "OSError"
        else:
            entry.update(
                status="restored",
                output=str(res.output),
                mode=res.mode,
                method=res.method,
                payload=res.payload_source,
                bit_exact=res.bit_exact,
                message=res.message,
            )
            orig_arr = None
            if original is not None:
                op = _find_original(Path(original), rel, src.name)
                if op is None:
                    entry["original"] = None
                    entry["message"] += "; no matching original found for the PSNR"
                else:
                    try:
                        orig_arr = _read_original(op, res.restored)
                    except ImageReadError as exc:
                        entry["message"] += f"; original unreadable ({exc})"
                    else:
                        entry["original"] = str(op)
                        p = psnr(res.restored, orig_arr)
                        entry["psnr"] = _json_float(p)
                        entry["psnr_protected"] = _json_float(psnr(read_pixels(src).pixels, orig_arr))
                        entry["matches_original"] = bool(
                            orig_arr.shape == res.restored.shape and np.array_equal(orig_arr, res.restored)
                        )
                        if not math.isinf(p):
                            psnrs.append(p)
            if esr_fn is not None:
                ok = esr_fn(res.restored, orig_arr, src)
                entry["esr"] = None if ok is None else bool(ok)
                if ok is not None:
                    esrs.append(bool(ok))
        report["files"].append(entry)
        if on_file is not None:
            on_file(entry)

    restored = [e for e in report["files"] if e["status"] == "restored"]
    summary: dict[str, Any] = {
        "total": len(jobs),
        "restored": len(restored),
        "exact": sum(1 for e in restored if e.get("mode") == "exact"),
        "robust": sum(1 for e in restored if e.get("mode") == "robust"),
        "failed": failed,
    }
    if original is not None:
        summary["psnr_mean"] = _json_float(float(np.mean(psnrs))) if psnrs else None
        summary["matches_original"] = sum(1 for e in restored if e.get("matches_original"))
    if esr_fn is not None:
        summary["esr"] = round(sum(esrs) / len(esrs), 4) if esrs else None
    report["summary"] = summary
    code = EXIT_OK if failed == 0 else EXIT_FAILED
    report["exit_code"] = code
    return report, code
