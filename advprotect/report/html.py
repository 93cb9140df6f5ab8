"""Self-contained HTML report: summary tables, a chart of ASR per model x transform (matplotlib,
Agg backend, embedded as a base64 PNG) and a thumbnail grid (original / protected / amplified
difference, base64 PNGs). No external resource is loaded."""

from __future__ import annotations

import base64
import html as _html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._util import atomic_write_text, fmt
from .markdown import HEADLINE

THUMB = 200


def _png_b64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _small(photo: torch.Tensor, size: int) -> torch.Tensor:
    h, w = photo.shape[1:]
    s = min(1.0, size / max(h, w))
    if s >= 1.0:
        return photo.float()
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return torch.nn.functional.interpolate(photo[None].float(), size=(nh, nw), mode="area")[0]


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def thumbnail_triplet(clean: torch.Tensor, protected: torch.Tensor, size: int = THUMB) -> dict[str, Any]:
    """Base64 PNG thumbnails: ``original``, ``protected`` and ``difference`` (the full-resolution
    difference, grey = none, scaled so the largest change is full contrast, then shrunk by max-pooling
    so sparse changes stay visible) plus ``amplification``."""
    out: dict[str, Any] = {"original": _png_b64(_u8(_small(clean, size))),
                           "protected": _png_b64(_u8(_small(protected, size)))}
    if clean.shape != protected.shape:
        out.update(difference=None, amplification=None)
        return out
    diff = protected.float() - clean.float()
    peak = float(diff.abs().max())
    amp = 0.5 / peak if peak > 0 else 1.0
    vis = diff * amp
    h, w = vis.shape[1:]
    k = max(1, int(np.ceil(max(h, w) / size)))
    if k > 1:  # keep the sign of the largest change in each block
        pos = torch.nn.functional.max_pool2d(vis[None].clamp_min(0), k, ceil_mode=True)[0]
        neg = torch.nn.functional.max_pool2d((-vis)[None].clamp_min(0), k, ceil_mode=True)[0]
        vis = torch.where(pos >= neg, pos, -neg)
    out["difference"] = _png_b64(_u8(vis + 0.5))
    out["amplification"] = round(amp, 1)
    return out


def asr_chart(robustness: dict[str, dict[str, float | None]], variants: Sequence[str]) -> str | None:
    """Grouped bar chart of ASR per model x transform, base64 PNG (None without data)."""
    if not robustness or not variants:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(robustness)
    fig = Figure(figsize=(max(6.0, 1.1 * len(variants) + 2), 4.0), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, whatever pyplot's default is
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    x = np.arange(len(variants))
    for i, m in enumerate(models):
        vals = [robustness[m].get(v) for v in variants]
        ys = [100 * v if v is not None else 0.0 for v in vals]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, ys, width, label=m)
        for b, v in zip(bars, vals):
            ax.annotate("-" if v is None else f"{100 * v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(variants, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(min(0.0, min((100 * v for d in robustness.values() for v in d.values() if v is not None), default=0)) - 2, 105)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(f"ASR per model and transform ({HEADLINE})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(4, len(models)), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f0f3f7}
td:first-child,th:first-child{text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:14px}
.cell{border:1px solid #ddd;padding:6px;border-radius:6px;background:#fafafa}
.cell img{max-width:200px;max-height:200px;margin-right:4px;vertical-align:top}
.cap{font-size:.8em;color:#555;margin-top:4px}.bad{color:#b00}
"""


def _e(v: Any) -> str:
    return _html.escape(str(v))


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def render_html(report: dict, thumbnails: Sequence[dict] = ()) -> str:
    inp, counts, summ = report["inputs"], report["counts"], report["summary"]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>advprotect evaluate</title>", f"<style>{CSS}</style></head><body>",
             "<h1>advprotect evaluate</h1>",
             (f"<p>original <code>{_e(inp['original'])}</code> &middot; protected <code>{_e(inp['protected'])}</code>"
             f" &middot; models {_e(', '.join(inp['models']))} &middot; {counts['evaluated']} evaluated, "
             f"{counts['failed']} failed</p>")]
    faces = report["results"].get("faces")
    if faces:
        rows = []
        for m, info in faces["models"].items():
            for kind, data in info["pairs"].items():
                s = data["transforms"].get("none", {}).get(HEADLINE)
                if s:
                    rows.append([m, kind, str(s["pairs"]), str(s["verified_clean"]), str(s["verified_protected"]),
                                 fmt(s["asr"], True), fmt(s["protection_rate"], True)])
            a = info["adv_adv"].get(HEADLINE)
            if a:
                rows.append([m, "adv-adv", str(a["pairs"]), fmt(a["match_rate_clean"], True),
                             fmt(a["match_rate_protected"], True), fmt(a["asr"], True), "-"])
        parts += ["<h2>Face verification (FAR 1e-2)</h2>",
                  _table(["model", "pairs", "N_total", "N_w/o", "N_w", "ASR", "protection"], rows)]
        rob = summ.get("robustness") or {}
        variants = faces.get("transforms") or []
        if rob:
            parts += ["<h2>Robustness: mean ASR after each transform</h2>",
                      _table(["model"] + list(variants), [[m] + [fmt(rob[m].get(v), True) for v in variants] for m in rob])]
            chart = asr_chart(rob, variants)
            if chart:
                parts.append(f"<p><img alt='ASR per model and transform' src='data:image/png;base64,{chart}'></p>")
    q = summ.get("quality")
    if q:
        parts += ["<h2>Quality (mean)</h2>",
                  _table(["region", "SSIM", "PSNR (dB)", "L-inf (/255)", "L2"],
                         [["photo", fmt(q.get("ssim"), digits=4), fmt(q.get("psnr"), digits=2),
                           fmt(q.get("linf_255"), digits=2), fmt(q.get("l2"), digits=3)],
                          ["face", fmt(q.get("face_ssim"), digits=4), fmt(q.get("face_psnr"), digits=2),
                           fmt(q.get("face_linf_255"), digits=2), fmt(q.get("face_l2"), digits=3)]])]
    if summ.get("fail_under") is not None:
        ok = summ["threshold_met"]
        parts.append(f"<p class='{'' if ok else 'bad'}'>Mean ASR of {_e(summ['fail_model'])} &ge; "
                     f"{_e(summ['fail_under'])}: {'met' if ok else 'NOT met'}</p>")
    if thumbnails:
        images = {r["rel"]: r for r in report.get("images", [])}
        parts.append("<h2>Images (original / protected / amplified difference)</h2><div class='grid'>")
        for t in thumbnails:
            row = images.get(t["rel"], {})
            imgs = [f"<img alt='original' src='data:image/png;base64,{t['original']}'>",
                    f"<img alt='protected' src='data:image/png;base64,{t['protected']}'>"]
            if t.get("difference"):
                imgs.append(f"<img alt='difference' src='data:image/png;base64,{t['difference']}'>")
            cap = [f"SSIM {fmt(row.get('ssim'), digits=4)}", f"PSNR {fmt(row.get('psnr'), digits=1)} dB",
                   f"L-inf {fmt(row.get('linf_255'), digits=1)}/255"]
            if t.get("amplification"):
                cap.append(f"difference x{t['amplification']}")
            for m in inp["models"]:
                v = row.get(f"{m}_own_verified")
                if v is not None:
                    cap.append(f"{m}: {'still matches' if v else 'protected'}")
            parts.append(f"<div class='cell'><div><b>{_e(t['rel'])}</b></div>{''.join(imgs)}"
                         f"<div class='cap'>{_e(' · '.join(cap))}</div></div>")
        parts.append("</div>")
    bad = [f for f in report.get("files", []) if f.get("status") != "ok"]
    if bad:
        parts.append("<h2>Problems</h2><ul>" + "".join(
            f"<li class='bad'><code>{_e(f.get('rel') or f.get('original') or f.get('protected'))}</code>: "
            f"{_e(f.get('status'))}: {_e(f.get('error'))}</li>" for f in bad) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: dict, path, thumbnails: Sequence[dict] = ()) -> Path:
    return atomic_write_text(Path(path), render_html(report, thumbnails))
