"""``advprotect k-anon``: K-anonymity protection against a classifier (paper 003).

Registered in :mod:`advprotect.cli` as ``app.command("k-anon")(kanon_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import typer

__all__ = ["kanon_command"]


def _floats(text: Optional[str], name: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be 1 or 3 comma-separated numbers, got {text!r}") from None
    if len(vals) not in (1, 3):
        raise ValueError(f"{name} must be 1 or 3 comma-separated numbers, got {text!r}")
    return vals


def kanon_command(
    ctx: typer.Context,
    input: str = typer.Argument(..., metavar="INPUT", help="A photo, a folder of photos (searched recursively) or a .txt list of paths."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder; mirrors the input tree. Must not be inside the input."),
    k: int = typer.Option(5, "--k", help="Anonymity level K >= 1: the photos are split into K groups whose true label is pushed to rank 2, 3, ..., K+1, so no rank holds it more than 1/K of the time. K = 1: plain misclassification."),
    classifier: str = typer.Option("imagenet", "--classifier", help="faces (identification against --gallery), imagenet (EfficientNet-Lite0, 1000 classes) or the path of a TorchScript classifier (see --input-size, --mean, --std)."),
    gallery: Optional[str] = typer.Option(None, "--gallery", help="With --classifier faces: folder with one subfolder of photos per identity (embeddings are cached)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="CSV rel,label with each photo's true label (class index, or identity name for faces). Default: the classifier's clean top-1."),
    input_size: int = typer.Option(224, "--input-size", min=8, help="TorchScript classifier: square input size the photo is resized to."),
    mean: Optional[str] = typer.Option(None, "--mean", help="TorchScript classifier: normalisation mean, e.g. 0.485,0.456,0.406 (default: none)."),
    std: Optional[str] = typer.Option(None, "--std", help="TorchScript classifier: normalisation std, e.g. 0.229,0.224,0.225 (default: none)."),
    face_model: str = typer.Option("facenet128", "--face-model", help="With faces: the white-box embedding model (facenet128 or dlib-resnet)."),
    attack: str = typer.Option("cwl2", "--attack", help="Engine attack: cwl2 (default; Adam, lands each photo on its target rank) or ifgsm, mifgsm, difgsm, mdifgsm, tifgsm, pgd (sign steps: fast but push the label past its target)."),
    eps: str = typer.Option("8/255", "--eps", help="L-inf budget, e.g. 8/255, 8 or 0.031."),
    steps: int = typer.Option(100, "--steps", min=1, help="Most iterations per photo; each stops as soon as its rank constraint holds."),
    lr: Optional[float] = typer.Option(None, "--lr", help="cwl2 learning rate (smaller: less change, more steps; default 0.01, faces 0.05)."),
    search: int = typer.Option(3, "--search", min=0, max=6, help="Photos that miss their rank constraint are attacked again up to this many times, each weighting the classification losses 10x more (the last without the L2/SSIM terms)."),
    alpha: str = typer.Option("1/255", "--alpha", help="Step size of the sign attacks."),
    l2_weight: float = typer.Option(1.0, "--l2-weight", help="Weight of ||perturbation||_2 in the loss (paper 003 Eq. 6: 1)."),
    ssim_weight: float = typer.Option(1.0, "--ssim-weight", help="Weight of 1 - SSIM in the loss (paper 003 Eq. 6: 1)."),
    margin: Optional[float] = typer.Option(None, "--margin", min=0.0, help="Logit margin the labels above the true one must clear (larger: survives the 8-bit rounding and re-encoding better, costs more change; default 0, faces 1: 0.1 in cosine, without it ~1 in 12 face photos missed its rank)."),
    robust: str = typer.Option("", "--robust", help="EOT transforms while optimising: any of jpeg,resize,blur,noise."),
    eot_samples: int = typer.Option(1, "--eot-samples", min=1, help="Gradient draws per step under --robust."),
    tolerance: float = typer.Option(0.02, "--tolerance", help="The verdict holds when every P(r = i) <= 1/K + tolerance."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write the rank pmf with the 1/K line to this PNG."),
    strict: bool = typer.Option(False, "--strict", help="Exit 3 when the K-anonymity verdict does not hold."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Photos attacked together."),
    erasable: bool = typer.Option(False, "--erasable", help="Seal the exact change with --key (AES-256-GCM) inside each output, so `advprotect erase` can undo it."),
    key: Optional[str] = typer.Option(None, "--key", help="Key file from `advprotect keygen` (needed with --erasable)."),
    sidecar: bool = typer.Option(False, "--sidecar", help="With --erasable: write the sealed change to NAME.advp beside each output instead of inside it."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Output format png|jpeg|webp|tiff|bmp (default: same as each input). Lossy formats may undo a minimal perturbation: the rank is measured on the encoded file."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    keep_metadata: bool = typer.Option(False, "--keep-metadata", help="Keep EXIF (GPS included). Default: stripped."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Refuse images with more pixels (checked before decoding)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in OUT that advprotect did not write."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Redo files that an earlier run already finished."),
) -> None:
    """Hide each photo's true label from a classifier the K-anonymity way (paper 003).

    A plain adversarial example only changes the top-1 label: the true one usually sits at rank 2
    and can be read back. Here the N photos are split into K groups; group j must push the true
    label below rank j (to rank >= j+1), minimising classification losses toward the labels to
    put above it + ||perturbation||_2 + (1 - SSIM), and each photo stops as soon as its rank
    constraint holds. The report lists per photo the true label, rank before/after, target rank;
    the summary gives the attack success rate, the pmf P(r = i) for i = 1..K+1 against 1/K, SSIM,
    MSE and whether K-anonymity holds.

    Example: advprotect k-anon photos/ -o out/ --k 5 --classifier imagenet --plot pmf.png
    """
    import torch

    from .. import cli
    from ..io import ProcessResult, UsageError, discover
    from ..io.formats import output_format
    from ..models.store import ModelStoreError
    from ..runtime import configure_threads, resolve_device, seed_everything
    from .classifiers import load_classifier
    from .labels import read_labels
    from .protect import KAnonConfig, KAnonProtector
    from .ranking import assign_target_ranks
    from .report import headline, plot_pmf, summarise_rows, summary_table

    opts = cli.options(ctx)
    err = cli.err_console
    try:
        if k < 1:
            raise ValueError(f"--k must be an integer >= 1, got {k}")
        if not 0 <= tolerance < 1:
            raise ValueError(f"--tolerance must be in [0, 1), got {tolerance}")
        device = resolve_device(opts.device)
        if lr is None:
            lr = 0.05 if classifier == "faces" else 0.01
        if margin is None:
            margin = 1.0 if classifier == "faces" else 0.0
        cfg = KAnonConfig(attack=attack, eps=cli.parse_eps(eps), steps=steps, lr=lr, search=search,
                          alpha=cli.parse_eps(alpha), l2_weight=l2_weight, ssim_weight=ssim_weight,
                          margin=margin, robust=robust, eot_samples=eot_samples,
                          batch_size=batch_size).validate()
        truth = read_labels(labels) if labels else None
        after_write = cli.erasable_hook(erasable, key, sidecar)
        items = discover(input)
        if plot is not None and not str(plot).lower().endswith(".png"):
            raise ValueError(f"--plot must name a .png file, got {plot}")
        configure_threads()
        seed_everything(opts.seed)
        clf = load_classifier(classifier, device, gallery=gallery, input_size=input_size,
                              mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                              face_model=face_model, seed=opts.seed)
        if k + 1 > clf.num_classes:
            raise ValueError(f"--k {k} needs at least K+1 = {k + 1} classes; {clf.name} has {clf.num_classes}")
        truth_idx = {rel: clf.label_index(v) for rel, v in truth.items()} if truth else None
    except (ValueError, UsageError, OSError, typer.BadParameter) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(cli.EXIT_USAGE)
    except ModelStoreError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(cli.EXIT_FAILED)

    targets = assign_target_ranks([str(PurePosixPath(it.rel)) for it in items], k, opts.seed or 0)
    protector = KAnonProtector(clf, cfg)

    def process(records):
        from ..io import decode_image, encode_image

        out: list[ProcessResult] = []
        todo, labs, tgts, pre = [], [], [], {}
        for n, r in enumerate(records):
            rel = str(PurePosixPath(r.rel))
            if truth_idx is not None and rel not in truth_idx:
                pre[n] = ProcessResult.failed(f"no label for {rel} in --labels")
                continue
            todo.append(n)
            labs.append(None if truth_idx is None else truth_idx[rel])
            tgts.append(targets.get(rel, 2 + (len(todo) - 1) % k))
        results = protector.protect([records[n].pixels for n in todo], labs, tgts) if todo else []
        by_n = dict(zip(todo, results))
        for n, r in enumerate(records):
            if n in pre:
                out.append(pre[n])
                continue
            res = by_n[n]
            info = dict(res.info)
            warns = list(res.warnings)
            if info.get("analysed"):
                # measure again on the file as it will be written (format, bit depth, grey)
                fmt_out = output_format(r.rel, fmt)
                data = encode_image(res.pixels.cpu(), r, fmt=fmt_out, quality=quality)
                back = decode_image(data, r.source, max_pixels=None).pixels
                logits = clf.classify(back)
                if logits is None:
                    info["rank_after_file"] = None
                    warns.append("the classifier finds no face in the written file")
                else:
                    from .ranking import true_rank

                    rf = int(true_rank(logits[None], torch.tensor([info["true_label"]]))[0])
                    info["rank_after_file"] = rf
                    if rf != info["rank_after"]:
                        warns.append(f"the written {fmt_out} file puts the true label at rank {rf} "
                                     f"(before encoding: {info['rank_after']})")
                    info["rank_after"] = rf
                    info["success"] = rf >= info["target_rank"]
                    info["exact"] = rf == info["target_rank"]
            out.append(ProcessResult(pixels=res.pixels.cpu(), info=info, warnings=warns))
        return out

    settings = {"command": "k-anon", "k": k, "classifier": clf.name,
                "gallery": None if gallery is None else str(Path(gallery).resolve()),
                "labels": None if labels is None else str(Path(labels).resolve()),
                "input_size": input_size if classifier not in ("faces", "imagenet") else None,
                "mean": mean, "std": std, "face_model": face_model if classifier == "faces" else None,
                "seed": opts.seed or 0, "tolerance": tolerance, **cfg.settings(), "device": str(device)}
    state: dict[str, Any] = {}

    def summary(report, con) -> None:
        rows = [e.info for e in report.entries if e.status in ("done", "warned", "skipped") and e.info]
        s = summarise_rows(rows, k, tolerance=tolerance)
        s["classifier"] = clf.name
        if plot is not None and s.get("pmf"):
            try:
                s["plot"] = str(plot_pmf(s, plot, title=f"{clf.name}: K = {k}, N = {s['n']}"))
            except (ValueError, OSError) as exc:
                err.print(f"[red]error:[/] --plot: {exc}")
        state["summary"] = s
        data = report.to_dict()
        data["kanon"] = s
        from ..io import REPORT_NAME, atomic_write_bytes

        atomic_write_bytes(Path(out) / REPORT_NAME, (json.dumps(data, indent=2, default=str) + "\n").encode())
        state["report"] = data
        if s.get("pmf"):
            con.print(summary_table(s, clf.name))
        con.print(headline(s))

    want_json = opts.json
    if want_json:  # run_images would print its own JSON: silence it and print ours (with "kanon")
        opts.json, opts.quiet = False, True
    code = cli.EXIT_OK
    try:
        cli.run_images(ctx, input, out, process, settings=settings, batch_size=batch_size, fmt=fmt,
                       quality=quality, keep_metadata=keep_metadata, max_pixels=max_pixels,
                       overwrite=overwrite, no_resume=no_resume, description="k-anonymity",
                       summary=summary, after_write=after_write)
    except typer.Exit as exc:
        code = exc.exit_code
    finally:
        if want_json:
            opts.json, opts.quiet = True, True
    if want_json and "report" in state:
        cli.emit_json(state["report"])
    s = state.get("summary") or {}
    if code == cli.EXIT_OK and strict and s.get("k_anonymous") is False:
        code = cli.EXIT_THRESHOLD
    raise typer.Exit(code)
