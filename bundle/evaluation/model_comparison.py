"""The fidelity and the perceptual release models side by side, from two evaluations of the same scans.

Each evaluation's summary.json (`bundle.evaluation.protocol`) pools every scan x degradation per method. Cubic
B-spline and trilinear are the same in both (same scans, same LR), so they are read from the fidelity model's
summary and checked equal in the perceptual one: a difference means the two runs did not see the same data.
The verdict is the perceptual model's goal: LPIPS below the fidelity model's and below cubic B-spline's, with
the PSNR of what inference writes within `PSNR_MARGIN` dB of the fidelity model's.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["PSNR_MARGIN", "compare_models", "comparison_lines"]

PSNR_MARGIN = 1.0  # dB the perceptual model may give up against the fidelity model
ROWS = (
    ("cubic B-spline", "fidelity", "bspline"),
    ("trilinear", "fidelity", "trilinear"),
    ("fidelity model (as written)", "fidelity", "sr"),
    ("fidelity model, true-operator projection", "fidelity", "sr_project"),
    ("perceptual model (as written)", "perceptual", "sr"),
    ("perceptual model, true-operator projection", "perceptual", "sr_project"),
)


def _mean(summary: dict, method: str, metric: str) -> float:
    return float(summary.get("methods", {}).get(method, {}).get(metric, {}).get("mean", math.nan))


def compare_models(fidelity: dict, perceptual: dict) -> dict[str, Any]:
    """Pooled LPIPS / PSNR / SSIM of each row and the verdict; raises ValueError when the baselines differ."""
    for method in ("bspline", "trilinear"):
        a, b = _mean(fidelity, method, "psnr"), _mean(perceptual, method, "psnr")
        if not (math.isnan(a) and math.isnan(b)) and not math.isclose(a, b, abs_tol=1e-6):
            raise ValueError(
                f"{method} PSNR differs between the two evaluations ({a:.4f} vs {b:.4f} dB): not the same scans"
            )
    summaries = {"fidelity": fidelity, "perceptual": perceptual}
    rows = {
        label: {m: _mean(summaries[which], method, m) for m in ("lpips", "psnr", "ssim")}
        for label, which, method in ROWS
    }
    p_lpips, f_lpips = _mean(perceptual, "sr", "lpips"), _mean(fidelity, "sr", "lpips")
    b_lpips = _mean(fidelity, "bspline", "lpips")
    psnr_drop = _mean(fidelity, "sr", "psnr") - _mean(perceptual, "sr", "psnr")
    verdict = {
        "lpips_below_fidelity": p_lpips < f_lpips,
        "lpips_below_bspline": p_lpips < b_lpips,
        "psnr_within_margin": psnr_drop <= PSNR_MARGIN,
        "psnr_drop_db": psnr_drop,
    }
    verdict["goal_met"] = all(verdict[k] for k in ("lpips_below_fidelity", "lpips_below_bspline", "psnr_within_margin"))
    return {"rows": rows, "verdict": verdict}


def comparison_lines(fidelity: dict, perceptual: dict, title: str) -> list[str]:
    """A markdown table (cubic B-spline first) and one verdict line, for `make demo`'s report."""
    result = compare_models(fidelity, perceptual)
    lines = [f"### {title}", "", "| output | LPIPS (lower is better) | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for label, scores in result["rows"].items():
        if all(math.isnan(v) for v in scores.values()):
            continue
        cells = [
            "missing" if math.isnan(scores[m]) else f"{scores[m]:.{d}f}"
            for m, d in (("lpips", 4), ("psnr", 2), ("ssim", 4))
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    v = result["verdict"]
    yes = {True: "yes", False: "no"}
    lines += [
        "",
        f"perceptual model: LPIPS below the fidelity model's {yes[v['lpips_below_fidelity']]}, below cubic B-spline's "
        f"{yes[v['lpips_below_bspline']]}; PSNR {abs(v['psnr_drop_db']):.2f} dB "
        f"{'below' if v['psnr_drop_db'] >= 0 else 'above'} the fidelity model's "
        f"(goal: within {PSNR_MARGIN:g} dB) -> goal {'met' if v['goal_met'] else 'NOT met'}",
    ]
    return lines
