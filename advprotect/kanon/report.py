"""Run summaries and the pmf plot of K-anonymity runs (paper 003, Fig. 1 style)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .ranking import kanon_summary

__all__ = ["plot_pmf", "summarise_rows", "summary_table"]


def summarise_rows(rows: Iterable[dict[str, Any]], k: int, *, tolerance: float = 0.02) -> dict[str, Any]:
    """Summary of per-image infos (``rank_before``, ``rank_after``, ``target_rank``, ``ssim``,
    ``mse``, ``psnr``): :func:`~advprotect.kanon.ranking.kanon_summary` plus mean SSIM / MSE /
    PSNR (finite ones) and mean seconds per image."""
    rows = [r for r in rows if r.get("analysed")]
    s = kanon_summary([r["rank_before"] for r in rows], [r["rank_after"] for r in rows],
                      [r["target_rank"] for r in rows if "target_rank" in r]
                      if all("target_rank" in r for r in rows) else [], k, tolerance=tolerance)

    def mean(key: str) -> float | None:
        vals = [float(r[key]) for r in rows if r.get(key) is not None and abs(float(r[key])) != float("inf")]
        return round(sum(vals) / len(vals), 6) if vals else None

    s.update(mean_ssim=mean("ssim"), min_ssim=min((r["ssim"] for r in rows if r.get("ssim") is not None), default=None),
             mean_mse=mean("mse"), mean_psnr=mean("psnr"), seconds_per_image=mean("seconds"))
    return s


def summary_table(summary: dict[str, Any], title: str = "K-anonymity"):
    """A rich Table of the pmf against ``1/K`` and the headline numbers."""
    from rich.table import Table

    t = Table(title=f"{title}: K = {summary.get('k')}, {summary.get('n')} images")
    t.add_column("rank i")
    t.add_column("P(r = i)", justify="right")
    t.add_column("clean", justify="right")
    bound = summary.get("bound")
    for i, p in enumerate(summary.get("pmf") or [], start=1):
        clean = (summary.get("clean_pmf") or [None] * (i))[i - 1]
        over = bound is not None and p > bound + 1e-12
        t.add_row(str(i), f"[red]{p:.3f}[/]" if over else f"{p:.3f}", "-" if clean is None else f"{clean:.3f}")
    if summary.get("pmf") is not None:
        t.add_row(f"> {summary['k'] + 1}", f"{summary['tail']:.3f}", "")
    return t


def headline(summary: dict[str, Any]) -> str:
    if not summary.get("n"):
        return "no image was analysed"
    verdict = "[green]holds[/]" if summary["k_anonymous"] else "[red]does not hold[/]"
    parts = [f"ASR {summary['asr']:.3f}"]
    if summary.get("constraint_rate") is not None:
        parts.append(f"rank constraint met {summary['constraint_rate']:.3f} (exact rank {summary['exact_rate']:.3f})")
    parts.append(f"max P(r = i) {summary['max_pmf']:.3f} at rank {summary['max_rank']} vs 1/K + tol = {summary['bound']:.3f}")
    if summary.get("mean_ssim") is not None:
        parts.append(f"SSIM {summary['mean_ssim']:.4f}")
    if summary.get("mean_mse") is not None:
        parts.append(f"MSE {summary['mean_mse']:.2e}")
    text = f"K-anonymity (K = {summary['k']}) {verdict}: " + ", ".join(parts)
    best = summary.get("best_possible_max_pmf")
    if not summary["k_anonymous"] and best is not None and best > summary["bound"]:
        text += (f" (with {summary['n']} images no split into K groups gets below {best:.3f}: "
                 "protect more images together)")
    return text


def plot_pmf(summary: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Bar chart of ``P(r = i)`` for ``i = 1..K+1`` (protected, and clean as outline) with the
    ``1/K`` line; written as PNG (atomically). Needs matplotlib (``pip install advprotect[eval]``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'advprotect[eval]'") from None
    import io

    from ..io import atomic_write_bytes

    pmf = summary.get("pmf")
    if not pmf:
        raise ValueError("nothing to plot: no image was analysed")
    k = int(summary["k"])
    xs = list(range(1, k + 2))
    fig = Figure(figsize=(max(4.5, 0.55 * len(xs) + 2.5), 3.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(xs, pmf, 0.7, color="#3b75af", label="protected")
    if summary.get("clean_pmf"):
        ax.bar(xs, summary["clean_pmf"], 0.7, fill=False, edgecolor="#999999", linestyle="--", label="clean")
    ax.axhline(1.0 / k, color="#c0392b", linewidth=1.2, label=f"1/K = {1.0 / k:.3f}")
    ax.set_xticks(xs)
    ax.set_xlabel("rank i of the true label")
    ax.set_ylabel("P(r(i) = y)")
    ax.set_ylim(0, 1.05)
    verdict = "K-anonymous" if summary.get("k_anonymous") else "not K-anonymous"
    ax.set_title(title or f"K = {k}, N = {summary['n']}: {verdict}", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(Path(path), buf.getvalue())
