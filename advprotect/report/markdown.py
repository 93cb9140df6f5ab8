"""Markdown summary: inputs, counts, ASR per model and pair kind, the robustness table, quality
means and the files that failed."""

from __future__ import annotations

from pathlib import Path

from ._util import atomic_write_text, fmt

HEADLINE = "far1e-2"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(report: dict) -> str:
    inp, counts, summ = report["inputs"], report["counts"], report["summary"]
    lines = ["# advprotect evaluate", "",
             f"- original: `{inp['original']}`", f"- protected: `{inp['protected']}`"]
    if inp.get("enrolled"):
        lines.append(f"- enrolled: `{inp['enrolled']}`")
    if inp.get("pairs"):
        lines.append(f"- pairs: `{inp['pairs']}`")
    lines += [f"- models: {', '.join(inp['models'])}; transforms: {', '.join(inp['transforms']) or 'none'}",
              f"- files: {counts['paired']} paired, {counts['evaluated']} evaluated, {counts['failed']} failed",
              ""]
    faces = report["results"].get("faces")
    if faces:
        lines += ["## Face verification (untransformed, FAR 1e-2)", "",
                  ("ASR = (N_w/o - N_w) / N_total (APF Eq. 11); protection = share of the pairs verified "
                  "before that are no longer verified."), ""]
        rows = []
        for m, info in faces["models"].items():
            for kind, data in info["pairs"].items():
                t = data["transforms"].get("none", {})
                for far in ("far1e-2", "far1e-3"):
                    s = t.get(far)
                    if not s:
                        continue
                    rows.append([m, kind, far, str(s["pairs"]), str(s["verified_clean"]), str(s["verified_protected"]),
                                 fmt(s["asr"], True), fmt(s["protection_rate"], True)])
            for far in ("far1e-2", "far1e-3"):
                a = info["adv_adv"].get(far)
                if a:
                    rows.append([m, "adv-adv", far, str(a["pairs"]), fmt(a["match_rate_clean"], True) + " match",
                                 fmt(a["match_rate_protected"], True) + " match", fmt(a["asr"], True), "-"])
        lines += _table(["model", "pairs", "threshold", "N_total", "N_w/o", "N_w", "ASR", "protection"], rows)
        lines += ["", "**Mean ASR**: " + ", ".join(f"{m} {fmt(v, True)}" for m, v in summ["mean_asr"].items()), ""]
        rob = summ.get("robustness") or {}
        if rob:
            variants = faces.get("transforms") or sorted({v for d in rob.values() for v in d})
            lines += ["## Robustness: mean ASR after each transform", ""]
            lines += _table(["model"] + variants,
                            [[m] + [fmt(rob[m].get(v), True) for v in variants] for m in rob])
            lines.append("")
    q = summ.get("quality")
    if q:
        lines += ["## Quality (mean)", ""]
        lines += _table(["region", "SSIM", "PSNR (dB)", "L-inf (/255)", "L2"],
                        [["photo", fmt(q.get("ssim"), digits=4), fmt(q.get("psnr"), digits=2),
                          fmt(q.get("linf_255"), digits=2), fmt(q.get("l2"), digits=3)],
                         ["face", fmt(q.get("face_ssim"), digits=4), fmt(q.get("face_psnr"), digits=2),
                          fmt(q.get("face_linf_255"), digits=2), fmt(q.get("face_l2"), digits=3)]])
        lines.append("")
    if summ.get("fail_under") is not None:
        lines += [(f"**Threshold**: mean ASR of {summ['fail_model']} >= {summ['fail_under']}: "
                  f"{'met' if summ['threshold_met'] else 'NOT met'}"), ""]
    bad = [f for f in report.get("files", []) if f.get("status") != "ok"]
    if bad:
        lines += ["## Problems", ""]
        lines += [f"- `{f.get('rel') or f.get('original') or f.get('protected')}`: {f.get('status')}: {f.get('error')}"
                  for f in bad]
        lines.append("")
    return "\n".join(lines)


def write_markdown(report: dict, path) -> Path:
    return atomic_write_text(Path(path), render_markdown(report))
