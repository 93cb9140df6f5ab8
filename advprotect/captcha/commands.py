"""``advprotect captcha``: generate, protect and (re)train for robust CAPTCHAs (paper 000 §3.1.3)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

# defined before importing cli: cli.py imports this module to register the sub-app, so this
# works whichever of the two is imported first
captcha_app = typer.Typer(
    help="Robust CAPTCHAs: text CAPTCHAs a person reads as before but solvers (ddddocr, OCR, "
    "CNN bots) misread. generate makes new protected ones, protect perturbs existing ones, "
    "train rebuilds the surrogate solvers. Measure with `advprotect evaluate --kind captcha`.",
    no_args_is_help=True,
)

from .. import cli  # noqa: E402
from ..cli import (  # noqa: E402
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ERASABLE_OPT,
    FORMAT_OPT,
    KEY_OPT,
    MAX_PIXELS_OPT,
    NO_RESUME_OPT,
    OVERWRITE_OPT,
    QUALITY_OPT,
    SIDECAR_OPT,
    KEEP_META_OPT,
    err_console,
)

# -------------------------------------------------------------------- shared attack options
EPS_OPT = typer.Option("16/255", "--eps", help="L-inf budget per pixel, e.g. 16/255 (values > 1 are in 1/255 units); the SSIM bound (--min-ssim) is what keeps the CAPTCHA readable, and at 8/255 ddddocr still reads 12-19%.")
STEPS_OPT = typer.Option(40, "--steps", min=1, help="Attack iterations (more: stronger against unseen solvers, slower).")
SURR_OPT = typer.Option("crnn,fcn,cnn,dddd", "--surrogates", help="White-box solvers attacked together: crnn (CTC), fcn (CTC), cnn (per position), dddd (ddddocr's separately trained beta network; its weights come from the pinned ddddocr wheel on first use).")
PRE_OPT = typer.Option("jpeg,resize,median,blur,binarize", "--preprocess", help="Solver clean-ups simulated (differentiably) while optimising; '' for none.")
EOT_OPT = typer.Option(2, "--eot-samples", min=1, help="Random clean-up chains averaged per step.")
MASK_OPT = typer.Option("texture", "--mask", help="texture: less change on flat background (keeps SSIM high); none: full eps everywhere.")
SSIM_OPT = typer.Option(0.9, "--min-ssim", min=0.0, max=1.0, help="Keep every CAPTCHA's SSIM to the clean one at least this (held after every attack step, on the 8-bit image written).")
STEP_OPT = typer.Option("scaled", "--step", help="scaled: pixels move in proportion to their gradient (the top 10% by the full step), spending the SSIM budget where solvers look; sign: every pixel by the full step (the FGSM family).")
WEIGHTS_OPT = typer.Option(None, "--weights", help="Folder with surrogate weights from `advprotect captcha train` (default: the ones shipped).")
BATCH_OPT = typer.Option(16, "--batch-size", min=1, help="CAPTCHAs attacked together.")


def _config(eps: str, steps: int, surrogates: str, preprocess: str, eot_samples: int, mask: str,
            min_ssim: float, step: str, batch_size: int):
    from .protect import CaptchaProtectConfig

    names = tuple(s.strip() for s in surrogates.split(",") if s.strip())
    return CaptchaProtectConfig(eps=cli.parse_eps(eps), steps=steps, surrogates=names, preprocess=preprocess,
                                eot_samples=eot_samples, mask=mask, min_ssim=min_ssim,
                                step=step, batch_size=batch_size).validate()


def _usage(msg: str) -> None:
    err_console.print(f"[red]error:[/] {msg}")
    raise typer.Exit(EXIT_USAGE)


def _summary(infos: list[dict]) -> dict:
    n = max(1, len(infos))
    names = list(infos[0]["surrogates"]) if infos else []
    return {
        "captchas": len(infos),
        "fooled_rate": round(sum(i["fooled"] for i in infos) / n, 4),
        "ssim_mean": round(sum(i["ssim"] for i in infos) / n, 4),
        "ssim_min": min((i["ssim"] for i in infos), default=None),
        "linf_255_max": max((i["linf_255"] for i in infos), default=None),
        "ssim_scaled": sum(i["ssim_scale"] < 1 for i in infos),
        "retried": sum(i.get("retried", False) for i in infos),
        "seconds_per_captcha": round(sum(i["seconds"] for i in infos) / n, 3),
        "surrogate_solve_rate": {
            s: {k: round(sum(i["surrogates"][s][k] for i in infos) / n, 4)
                for k in infos[0]["surrogates"][s]} for s in names
        },
    }


# -------------------------------------------------------------------- generate
@captcha_app.command("generate")
def generate(
    ctx: typer.Context,
    n: int = typer.Option(..., "-n", "--count", min=1, max=1_000_000, help="How many CAPTCHAs to make."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder (created; must be empty unless --overwrite)."),
    length: str = typer.Option("4-6", "--length", help="Answer length N or MIN-MAX (1..8)."),
    charset: Optional[str] = typer.Option(None, "--charset", help="Characters to draw answers from: ASCII letters and digits (default: lower-case letters and digits without look-alikes). Solvers compare case-insensitively."),
    style: str = typer.Option("noisy", "--style", help="Look: noisy (default: distorted characters, dots, pixel noise; the noise leaves room for a stronger protection at SSIM >= 0.9), plain (distorted characters only), lines (+ arc and lines through the text), grain (plain on a grainy background: readers read it like plain, the protection costs less SSIM)."),
    width: int = typer.Option(160, "--width", min=40, max=1024, help="Image width in pixels."),
    height: int = typer.Option(60, "--height", min=20, max=512, help="Image height in pixels."),
    font: Optional[list[str]] = typer.Option(None, "--font", help="Extra TrueType font file (repeatable)."),
    hash_answers: bool = typer.Option(False, "--hash-answers", help="Write labels.csv as file,salt,sha256 instead of the answers in clear."),
    keep_clean: Optional[str] = typer.Option(None, "--keep-clean", help="Also write the unprotected CAPTCHAs (same names) to this folder, e.g. for `evaluate`."),
    no_protect: bool = typer.Option(False, "--no-protect", help="Write the clean CAPTCHAs only (no attack)."),
    fmt: str = typer.Option("png", "--format", help="png (default), webp or jpeg (lossy formats weaken the protection)."),
    quality: int = QUALITY_OPT,
    eps: str = EPS_OPT, steps: int = STEPS_OPT, surrogates: str = SURR_OPT, preprocess: str = PRE_OPT,
    eot_samples: int = EOT_OPT, mask: str = MASK_OPT, min_ssim: float = SSIM_OPT, step: str = STEP_OPT,
    weights: Optional[str] = WEIGHTS_OPT, batch_size: int = BATCH_OPT,
    erasable: bool = ERASABLE_OPT, key: Optional[str] = KEY_OPT, sidecar: bool = SIDECAR_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty output folder, replacing files of the same names."),
) -> None:
    """Make N new protected CAPTCHAs: OUT/captcha_00000.png ..., OUT/labels.csv (answers, or salted
    hashes with --hash-answers) and OUT/.advprotect-report.json (SSIM, L-inf, whether every
    surrogate misreads each one, seconds per CAPTCHA). The same --seed gives the same CAPTCHAs.

    Example: advprotect --seed 1 captcha generate -n 1000 -o captchas/ --style noisy
    """
    from PIL import Image  # noqa: F401

    from ..io import ImageRecord, atomic_write_bytes, write_image
    from ..io.formats import normalize_format
    from ..runtime import configure_threads, resolve_device, seed_everything
    from .generate import DEFAULT_CHARSET, CaptchaSpec, generate_batch, parse_length
    from .labels import labels_csv

    opts = cli.options(ctx)
    try:
        lo, hi = parse_length(length)
        spec = CaptchaSpec(charset=charset if charset is not None else DEFAULT_CHARSET, min_length=lo,
                           max_length=hi, width=width, height=height, style=style.strip().lower(),
                           fonts=tuple(font or ())).validate()
        if hi > 8 and not no_protect:
            raise ValueError("protected CAPTCHAs can be at most 8 characters long (what the per-position surrogate reads)")
        fmt_n = normalize_format(fmt)
        if fmt_n not in ("PNG", "WEBP", "JPEG"):
            raise ValueError(f"--format must be png, webp or jpeg, got {fmt!r}")
        cfg = _config(eps, steps, surrogates, preprocess, eot_samples, mask, min_ssim, step, batch_size)
        device = resolve_device(opts.device)
        after_write = cli.erasable_hook(erasable, key, sidecar)
        if no_protect and erasable:
            raise ValueError("--erasable has nothing to seal with --no-protect")
        out_p = Path(out)
        if out_p.exists() and not out_p.is_dir():
            raise ValueError(f"--out {out_p} is a file")
        if out_p.is_dir() and any(out_p.iterdir()) and not overwrite:
            raise ValueError(f"--out {out_p} is not empty (use --overwrite to write into it)")
        clean_p = Path(keep_clean) if keep_clean else None
        if clean_p is not None and clean_p.resolve() == out_p.resolve():
            raise ValueError("--keep-clean must be another folder than --out")
    except (ValueError, OSError, typer.BadParameter) as exc:
        _usage(str(exc))
    configure_threads()
    seed_everything(opts.seed)
    protector = None
    if not no_protect:
        from .protect import CaptchaProtector

        try:
            protector = CaptchaProtector(cfg, device, weights)
        except ValueError as exc:
            _usage(str(exc))
    out_p.mkdir(parents=True, exist_ok=True)
    if clean_p is not None:
        clean_p.mkdir(parents=True, exist_ok=True)
    ext = {"PNG": "png", "WEBP": "webp", "JPEG": "jpg"}[fmt_n]
    digits = max(5, len(str(n - 1)))
    rows: list[tuple[str, str]] = []
    files: list[dict] = []
    failed = 0
    t0 = time.perf_counter()
    from rich.progress import Progress

    from .train import images_to_tensor

    chunk = max(1, cfg.batch_size)
    with Progress(console=cli.console(opts), disable=opts.quiet, transient=True) as progress:
        task = progress.add_task("generating CAPTCHAs", total=n)
        for start in range(0, n, chunk):
            batch = generate_batch(min(chunk, n - start), spec, seed=opts.seed, start=start)
            texts = [t for t, _ in batch]
            x = images_to_tensor([im for _, im in batch])
            if protector is not None:
                x_adv, infos = protector.protect(x, texts)
                x_adv = x_adv.cpu()
            else:
                x_adv, infos = x, [{} for _ in texts]
            for j, (text, info) in enumerate(zip(texts, infos)):
                name = f"captcha_{start + j:0{digits}d}.{ext}"
                rec = ImageRecord(source=out_p / name, rel=Path(name), pixels=x[j], format=fmt_n)
                entry = {"file": name, **info}
                try:
                    write_image(out_p / name, x_adv[j], rec, fmt=fmt_n, quality=quality)
                    if after_write is not None:
                        entry["notes"] = after_write(rec, out_p / name) or []
                    if clean_p is not None:
                        write_image(clean_p / name, x[j], rec, fmt=fmt_n, quality=quality)
                    rows.append((name, text))
                    entry["status"] = "done"
                except Exception as exc:  # noqa: BLE001 - one file fails, the rest goes on
                    failed += 1
                    entry.update(status="failed", error=str(exc))
                    err_console.print(f"{out_p / name}: {exc}")
                files.append(entry)
            progress.update(task, advance=len(batch))
    atomic_write_bytes(out_p / "labels.csv", labels_csv(rows, hashed=hash_answers))
    if clean_p is not None:
        atomic_write_bytes(clean_p / "labels.csv", labels_csv(rows, hashed=hash_answers))
    done = [f for f in files if f.get("status") == "done" and "fooled" in f]
    report = {
        "schema": "advprotect.captcha-generate/1",
        "command": "captcha generate",
        "settings": {**spec.settings(), "count": n, "seed": opts.seed, "hash_answers": hash_answers,
                     "protected": not no_protect, "format": fmt_n, "device": str(device),
                     **({"attack": cfg.settings()} if not no_protect else {})},
        "out": str(out_p), "labels": str(out_p / "labels.csv"),
        "clean": None if clean_p is None else str(clean_p),
        "seconds": round(time.perf_counter() - t0, 2),
        "summary": _summary(done) if done else None,
        "counts": {"written": len(rows), "failed": failed},
        "files": files,
        "exit_code": EXIT_FAILED if failed else EXIT_OK,
    }
    atomic_write_bytes(out_p / ".advprotect-report.json", (json.dumps(report, indent=2) + "\n").encode())
    if opts.json:
        cli.emit_json(report)
    else:
        con = cli.console(opts)
        con.print(f"{len(rows)} CAPTCHAs written to {out_p} (labels: {out_p / 'labels.csv'}"
                  f"{', hashed' if hash_answers else ''}){f'; {failed} failed' if failed else ''}")
        s = report["summary"]
        if s:
            con.print(f"every surrogate fooled: {s['fooled_rate']:.1%}; SSIM mean {s['ssim_mean']:.3f} "
                      f"(min {s['ssim_min']:.3f}); {s['seconds_per_captcha']:.2f} s per CAPTCHA")
        con.print(f"report: {out_p / '.advprotect-report.json'}")
    raise typer.Exit(report["exit_code"])


# -------------------------------------------------------------------- protect
@captcha_app.command("protect")
def protect(
    ctx: typer.Context,
    input_dir: str = typer.Argument(..., help="A CAPTCHA image or a folder of them (searched recursively)."),
    labels: str = typer.Option(..., "--labels", help="labels.csv with file,answer rows (file relative to the input folder)."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder; mirrors the input tree. Must not be inside the input."),
    eps: str = EPS_OPT, steps: int = STEPS_OPT, surrogates: str = SURR_OPT, preprocess: str = PRE_OPT,
    eot_samples: int = EOT_OPT, mask: str = MASK_OPT, min_ssim: float = SSIM_OPT, step: str = STEP_OPT,
    weights: Optional[str] = WEIGHTS_OPT, batch_size: int = BATCH_OPT,
    erasable: bool = ERASABLE_OPT, key: Optional[str] = KEY_OPT, sidecar: bool = SIDECAR_OPT,
    fmt: Optional[str] = FORMAT_OPT, quality: int = QUALITY_OPT, keep_metadata: bool = KEEP_META_OPT,
    max_pixels: int = MAX_PIXELS_OPT, overwrite: bool = OVERWRITE_OPT, no_resume: bool = NO_RESUME_OPT,
) -> None:
    """Protect existing CAPTCHAs whose answers are known (--labels file,answer).

    Each CAPTCHA is perturbed so every surrogate misreads every character, through simulated
    solver clean-ups; per-file errors, atomic writes and resume as for every advprotect command.
    The report (OUT/.advprotect-report.json) holds per CAPTCHA the SSIM, L-inf and which
    surrogates still read it (never the answer). Hashed labels cannot be used: the attack needs
    the answer.

    Example: advprotect captcha protect site_captchas/ --labels labels.csv -o protected/
    """
    from ..io import ProcessResult
    from ..runtime import configure_threads, resolve_device, seed_everything
    from .labels import read_labels
    from .models import MAX_LEN, encode

    opts = cli.options(ctx)
    try:
        cfg = _config(eps, steps, surrogates, preprocess, eot_samples, mask, min_ssim, step, batch_size)
        answers = read_labels(labels)
        if any(lab.hashed for lab in answers.values()):
            raise ValueError(f"{labels} holds hashed answers; protect needs them in clear (file,answer)")
        device = resolve_device(opts.device)
        after_write = cli.erasable_hook(erasable, key, sidecar)
    except (ValueError, OSError, typer.BadParameter) as exc:
        _usage(str(exc))
    configure_threads()
    seed_everything(opts.seed)
    from .protect import CaptchaProtector

    try:
        protector = CaptchaProtector(cfg, device, weights)
    except ValueError as exc:
        _usage(str(exc))

    def process(records):
        import torch

        results: list = [None] * len(records)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            lab = answers.get(r.rel.as_posix())
            if lab is None:
                results[i] = ProcessResult.failed(f"no answer for {r.rel.as_posix()} in {labels}")
                continue
            try:
                encode(lab.answer)
            except ValueError as exc:
                results[i] = ProcessResult.failed(str(exc))
                continue
            if len(lab.answer) > MAX_LEN:
                results[i] = ProcessResult.failed(f"answer longer than {MAX_LEN} characters")
                continue
            groups.setdefault(tuple(r.pixels.shape), []).append(i)
        for idx in groups.values():
            x = torch.stack([records[i].pixels for i in idx])
            x_adv, infos = protector.protect(x, [answers[records[i].rel.as_posix()].answer for i in idx])
            for k, i in enumerate(idx):
                warn = [] if infos[k]["fooled"] else ["some surrogate still reads it (as is, after median or JPEG)"]
                if infos[k]["ssim_scale"] < 1:
                    warn.append(f"change scaled by {infos[k]['ssim_scale']:.2f} to keep SSIM >= {cfg.min_ssim}")
                results[i] = ProcessResult(pixels=x_adv[k].cpu(), info=infos[k], warnings=warn)
        return results

    settings = {"command": "captcha protect", **cfg.settings(), "labels": str(Path(labels).resolve()),
                "weights": weights, "device": str(device)}
    cli.run_images(ctx, input_dir, out, process, settings=settings, batch_size=cfg.batch_size, fmt=fmt,
                   quality=quality, keep_metadata=keep_metadata, max_pixels=max_pixels, overwrite=overwrite,
                   no_resume=no_resume, description="protecting CAPTCHAs", after_write=after_write)


# -------------------------------------------------------------------- train
@captcha_app.command("train")
def train(
    ctx: typer.Context,
    out: str = typer.Option(..., "--out", "-o", help="Folder for the weights (<name>.pt); use it with --weights."),
    models: str = typer.Option("crnn,fcn,cnn", "--models", help="Surrogates to train: crnn, fcn, cnn."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Training batches (1000 x 64: about 10 min for all three on 2 cores with bfloat16, held-out exact match 0.97-0.99; more steps, higher accuracy)."),
    batch_size: int = typer.Option(64, "--batch-size", min=2, help="CAPTCHAs per batch."),
    lr: float = typer.Option(2e-3, "--lr", min=1e-6, max=1.0, help="Peak learning rate (one-cycle schedule)."),
    workers: int = typer.Option(1, "--workers", min=0, help="Processes rendering CAPTCHAs while the main one trains (0: inline)."),
    precision: str = typer.Option("auto", "--precision", help="auto: bfloat16 autocast where it measures faster on this machine (about 2x on CPUs with AVX512-BF16/AMX), else float32; fp32; bf16."),
    val_per_style: int = typer.Option(200, "--val-per-style", min=1, help="Held-out clean CAPTCHAs per style for the accuracy check."),
    min_accuracy: float = typer.Option(0.95, "--min-accuracy", min=0.0, max=1.0, help="Exit 1 when a model's held-out exact match is below this."),
) -> None:
    """(Re)train the surrogate solvers on an endless stream of generated CAPTCHAs (every style,
    lengths 3..8) and check their exact match on held-out clean ones. Weights go to OUT; use
    them with `captcha generate/protect --weights OUT`. Seeded by --seed (default 0).

    Example: advprotect captcha train -o my_weights/ --steps 1000
    """
    from ..runtime import configure_threads, resolve_device
    from .train import PRECISIONS, train_surrogates

    opts = cli.options(ctx)
    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        from .models import SURROGATES

        bad = [m for m in names if m not in SURROGATES]
        if bad or not names:
            raise ValueError(f"unknown model(s) {', '.join(bad) or '(none)'}; valid: {', '.join(SURROGATES)}")
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        device = resolve_device(opts.device)
    except ValueError as exc:
        _usage(str(exc))
    configure_threads()
    con = cli.console(opts)
    from rich.progress import Progress

    with Progress(console=con, disable=opts.quiet, transient=True) as bar:
        task = bar.add_task(f"training {', '.join(names)}", total=steps)
        report, _ = train_surrogates(names, steps=steps, batch_size=batch_size, lr=lr, seed=opts.seed or 0,
                                     workers=workers, device=device, out_dir=out, precision=precision,
                                     val_per_style=val_per_style,
                                     log=None if opts.quiet else (lambda m: con.print(m)),
                                     progress=lambda i, n: bar.update(task, completed=i))
    low = [n for n, r in report["models"].items() if r["val_mean"] < min_accuracy]
    report["min_accuracy"] = min_accuracy
    report["below_min_accuracy"] = low
    if opts.json:
        cli.emit_json(report)
    else:
        for n, r in report["models"].items():
            con.print(f"{n}: held-out exact match {r['val_exact_match']} -> {r['path']}")
        con.print(f"trained {report['samples']} CAPTCHAs in {report['train_seconds']:.0f}s")
    if low:
        err_console.print(f"[red]below --min-accuracy {min_accuracy}:[/] {', '.join(low)}")
    raise typer.Exit(EXIT_FAILED if low else EXIT_OK)
