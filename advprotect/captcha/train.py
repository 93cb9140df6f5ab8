"""Train the surrogate solvers (:mod:`advprotect.captcha.models`) on freshly generated CAPTCHAs.

Training data is an endless seeded stream: sample ``i`` of seed ``s`` depends only on ``(s, i)``
(style drawn from every :data:`~advprotect.captcha.generate.STYLES`, answer length 3..8, the
default charset 60% of the time and mixed-case letters and digits otherwise). Half of the
samples go through a random solver clean-up chain (:class:`~advprotect.captcha.preprocess.SolverPreprocess`)
and some get pixel noise, so the surrogates also read what a bot's preprocessing produces (the
attack optimises through that preprocessing). Validation uses a different seed: exact match
(case-insensitive) on clean CAPTCHAs of the default spec, per style.

Losses: CTC (Graves et al. 2006) for ``crnn``; per-position cross-entropy with an "ended" class
for ``cnn``. AdamW with a one-cycle learning-rate schedule. Rendering runs in worker processes
while the main process trains. Forward passes run in bfloat16 autocast where that is faster on
the machine (measured at the start: about 2x on CPUs with AVX512-BF16/AMX).
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .generate import ALPHABET, DEFAULT_CHARSET, STYLES, CaptchaSpec, generate_batch, random_text, render
from .models import MAX_LEN, SURROGATES, build, encode
from .preprocess import SolverPreprocess

__all__ = ["PRECISIONS", "accuracy", "images_to_tensor", "pick_precision", "read_texts", "train_surrogates",
           "training_batch"]

_MIXED = ALPHABET + "ABCDEFGHJKLMNPQRSTUVWXYZ"


def images_to_tensor(images: Sequence, device: torch.device | str = "cpu") -> Tensor:
    """PIL images (same size) -> ``(B, 3, H, W)`` float in [0, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def training_batch(seed: int, start: int, n: int) -> tuple[np.ndarray, list[str]]:
    """Samples ``start .. start+n`` of the training stream: grey uint8 ``(n, 60, 160)`` and answers."""
    imgs, texts = [], []
    for i in range(start, start + n):
        rng = random.Random(f"train:{seed}:{i}")
        spec = CaptchaSpec(style=rng.choice(STYLES),
                           charset=DEFAULT_CHARSET if rng.random() < 0.6 else _MIXED,
                           min_length=3, max_length=MAX_LEN)
        text = random_text(rng, spec)
        imgs.append(np.asarray(render(text, spec, rng=rng).convert("L"), dtype=np.uint8))
        texts.append(text.lower())
    return np.stack(imgs), texts


def _batch_job(args):
    return training_batch(*args)


def _targets(texts: list[str], device) -> tuple[Tensor, Tensor, Tensor]:
    codes = [encode(t) for t in texts]
    flat = torch.tensor([c for cs in codes for c in cs], dtype=torch.long, device=device)
    lens = torch.tensor([len(cs) for cs in codes], dtype=torch.long, device=device)
    pos = torch.zeros(len(codes), MAX_LEN, dtype=torch.long, device=device)
    for i, cs in enumerate(codes):
        cs = cs[:MAX_LEN]
        pos[i, : len(cs)] = torch.tensor(cs, dtype=torch.long)
    return flat, lens, pos


def surrogate_loss(model: nn.Module, logits: Tensor, texts: list[str]) -> Tensor:
    """Mean training loss of ``model``'s ``logits`` for the true ``texts`` (CTC or per-position CE)."""
    flat, lens, pos = _targets(texts, logits.device)
    if getattr(model, "kind", "") == "ctc":
        lp = logits.log_softmax(-1).transpose(0, 1)  # (T, B, C)
        t = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
        return F.ctc_loss(lp, flat, t, lens, blank=0, zero_infinity=True)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), pos.reshape(-1))


@torch.no_grad()
def read_texts(model: nn.Module, x: Tensor, batch: int = 128) -> list[str]:
    """Answers ``model`` reads from images ``x`` ``(B, 3|1, H, W)`` in [0, 1]."""
    out: list[str] = []
    for i in range(0, x.shape[0], batch):
        out += model.read(x[i:i + batch])
    return out


def accuracy(model: nn.Module, x: Tensor, texts: Sequence[str]) -> float:
    """Case-insensitive exact-match rate of ``model`` on images ``x`` with answers ``texts``."""
    got = read_texts(model, x)
    return sum(a == b.lower() for a, b in zip(got, texts)) / max(1, len(texts))


def validation_set(n_per_style: int = 200, seed: int = 987654, device="cpu") -> dict[str, tuple[Tensor, list[str]]]:
    """Held-out clean CAPTCHAs of the default spec, ``{style: (images, answers)}``."""
    out = {}
    for style in STYLES:
        b = generate_batch(n_per_style, CaptchaSpec(style=style), seed=seed)
        out[style] = (images_to_tensor([im for _, im in b], device), [t for t, _ in b])
    return out


def _augment(x: Tensor, gen: torch.Generator, pre: SolverPreprocess) -> Tensor:
    """Half of the batch through a random solver chain, a quarter with pixel noise."""
    b = x.shape[0]
    idx = torch.randperm(b, generator=gen)
    half = idx[: b // 2]
    x = x.clone()
    with torch.no_grad():
        x[half] = pre(x[half].expand(-1, 3, -1, -1))[:, :1]
        noisy = idx[b // 2: b // 2 + b // 4]
        x[noisy] = (x[noisy] + 0.03 * torch.randn(x[noisy].shape, generator=gen)).clamp(0, 1)
    return x


PRECISIONS = ("auto", "fp32", "bf16")


def _step_seconds(models: dict[str, nn.Module], x: Tensor, texts: list[str], bf16: bool,
                  repeat: int = 2) -> float:
    """Best time of one forward+backward of every model on ``x`` (after a warm-up)."""
    best = float("inf")
    for i in range(repeat + 1):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for m in models.values():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = m(x)
            surrogate_loss(m, out.float(), texts).backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t)
    return best


def pick_precision(models: dict[str, nn.Module], x: Tensor, texts: list[str]) -> tuple[str, float]:
    """``("bf16" | "fp32", fp32 time / bf16 time)``: bfloat16 autocast where it is at least 1.25x
    faster for these models on this machine (CPUs with AVX512-BF16 or AMX: about 2x; elsewhere it
    is emulated and slower). Measured on copies, so the models' weights and statistics are
    untouched."""
    probe = {n: copy.deepcopy(m) for n, m in models.items()}
    try:
        # decide on the ratio as reported, so that the report and the choice agree
        ratio = round(_step_seconds(probe, x, texts, False) / _step_seconds(probe, x, texts, True), 2)
    except RuntimeError:  # no bfloat16 kernels for this device
        return "fp32", 0.0
    return ("bf16" if ratio >= 1.25 else "fp32"), ratio


def train_surrogates(
    names: Sequence[str] = ("crnn", "cnn"),
    *,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    workers: int = 1,
    device: torch.device | str = "cpu",
    out_dir: str | Path | None = None,
    val_per_style: int = 200,
    log: Callable[[str], None] | None = None,
    init: dict[str, nn.Module] | None = None,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, dict[str, nn.Module]]:
    """Train ``names`` jointly on the seeded stream for ``steps`` batches; write float16 weights
    ``<out_dir>/<name>.pt`` (if ``out_dir``) and return a report with per-style validation
    exact match, seconds and steps, and the trained models. ``workers`` render processes (0:
    render inline). ``precision``: forward passes in bfloat16 autocast (``bf16``; weights,
    optimiser and losses stay float32), ``fp32``, or ``auto`` (:func:`pick_precision`).
    ``progress(step, steps)`` is called after every step."""
    names = list(dict.fromkeys(names))
    for n in names:
        if n not in SURROGATES:
            raise ValueError(f"unknown surrogate {n!r}; valid: {', '.join(SURROGATES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    if not (isinstance(workers, int) and workers >= 0):
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    say = log or (lambda _m: None)
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    models = {n: (init or {}).get(n) or build(n) for n in names}
    params = [p for m in models.values() for p in m.parameters()]
    for m in models.values():
        m.to(device).train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    pre = SolverPreprocess(p=0.35)
    speedup = None
    if precision == "auto":
        imgs, texts = training_batch(seed, 0, batch_size)
        x = torch.from_numpy(imgs).unsqueeze(1).float().div_(255.0).to(device)
        precision, speedup = pick_precision(models, x, texts)
        say(f"precision {precision} (bfloat16 {speedup}x the speed of float32 here)")
    bf16 = precision == "bf16"
    jobs = ((seed, i * batch_size, batch_size) for i in range(steps))
    # the workers only render (Pillow, numpy; no torch ops), so forking is safe and fast
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(workers) if workers > 0 else None
    t0 = time.perf_counter()
    running = {n: 0.0 for n in names}
    first: dict[str, float] = {}
    try:
        it = pool.imap(_batch_job, jobs, chunksize=1) if pool else map(_batch_job, jobs)
        for step, (imgs, texts) in enumerate(it, 1):
            x = torch.from_numpy(imgs).unsqueeze(1).float().div_(255.0)
            x = _augment(x, gen, pre).to(device)
            opt.zero_grad(set_to_none=True)
            for n, m in models.items():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = m(x)
                loss = surrogate_loss(m, logits.float(), texts)
                loss.backward()
                running[n] = 0.98 * running[n] + 0.02 * loss.item() if step > 1 else loss.item()
                first.setdefault(n, loss.item())
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            if progress is not None:
                progress(step, steps)
            if step % 100 == 0 or step == steps:
                el = time.perf_counter() - t0
                say(f"step {step}/{steps} " + " ".join(f"{n} {v:.3f}" for n, v in running.items())
                    + f" ({el:.0f}s)")
    finally:
        if pool is not None:
            pool.terminate()
    train_s = time.perf_counter() - t0
    for m in models.values():
        m.eval().requires_grad_(False)
    val = validation_set(val_per_style, device=device)
    report: dict = {"steps": steps, "batch_size": batch_size, "samples": steps * batch_size, "seed": seed,
                    "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(),
                    "device": str(device), "precision": precision, "bf16_speedup": speedup, "models": {}}
    for n, m in models.items():
        per = {s: round(accuracy(m, x, t), 4) for s, (x, t) in val.items()}
        report["models"][n] = {"val_exact_match": per, "loss_first": round(first[n], 4),
                               "loss_final": round(running[n], 4),
                               "val_mean": round(sum(per.values()) / len(per), 4),
                               "params": sum(p.numel() for p in m.parameters())}
        say(f"{n}: validation exact match {per}")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from ..io import atomic_write_bytes
        import io

        for n, m in models.items():
            buf = io.BytesIO()
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in m.cpu().state_dict().items()}
            torch.save({"state_dict": state, "alphabet": ALPHABET, "arch": n,
                        "val_exact_match": report["models"][n]["val_exact_match"],
                        "steps": steps, "batch_size": batch_size, "seed": seed}, buf)
            atomic_write_bytes(out / f"{n}.pt", buf.getvalue())
            report["models"][n]["path"] = str(out / f"{n}.pt")
    return report, models
