"""Print the evaluation table, draw the training curves, and list the figures (the last step of `make demo`).

python scripts/show_report.py --report_dir outputs/eval --train_log outputs/train_log.csv

The SR is compared with cubic B-spline first (the interpolation a user would pick instead), trilinear second;
the last lines are the headline: the worst SR gain over cubic B-spline over every scan x degradation, the number
the quality goal (at least +0.5 dB PSNR, SSIM not below B-spline's, everywhere) is judged by.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.evaluation.figures import training_curves  # noqa: E402
from bundle.evaluation.model_comparison import comparison_lines  # noqa: E402
from bundle.evaluation.protocol import gains, worst_case_line  # noqa: E402


def _gains(summary: dict) -> list[str]:
    """One line per degradation: the SR's gain over cubic B-spline (PSNR, SSIM), over trilinear, and the projected
    SR's over cubic B-spline, each where the summary has both sides."""
    lines = []
    table = gains(summary.get("degradations", {"(as trained)": summary["methods"]}))
    for degradation, methods in table.items():
        sr, proj = methods.get("sr", {}), methods.get("sr_project", {})
        parts = []
        for base, name in (("bspline", "cubic B-spline"), ("trilinear", "trilinear")):
            g = sr.get(base, {})
            if "psnr" in g:
                ssim = f" / {g['ssim']:+.4f} SSIM" if "ssim" in g else ""
                parts.append(f"{g['psnr']:+.2f} dB PSNR{ssim} over {name}")
        if not parts:
            continue
        line = f"  LR by {degradation}: SR " + "; ".join(parts)
        g = proj.get("bspline", {})
        if "psnr" in g:
            line += f"; projected SR {g['psnr']:+.2f} dB over cubic B-spline"
        lines.append(line)
    return lines


def _summary(report_dir: str) -> tuple[str, dict]:
    report = Path(report_dir)
    summary_md, summary_json = report / "summary.md", report / "summary.json"
    if not summary_md.is_file():
        raise SystemExit(f"error: {summary_md}: not found; run the evaluation first (make demo)")
    return summary_md.read_text(), json.loads(summary_json.read_text())


def show_report(
    report_dir: str = "outputs/eval",
    train_log: str = "outputs/train_log.csv",
    real_report_dir: str | None = None,
    export_dir: str | None = None,
    perceptual_report_dir: str | None = None,
    perceptual_real_report_dir: str | None = None,
) -> None:
    """The held-out table, the real-scan table (when given), figures, the SR gain per degradation, and last the
    worst case over every scan x degradation of each set.

    perceptual_report_dir / perceptual_real_report_dir: the perceptual release model's evaluations of the same
    scans; the two models are then printed side by side (LPIPS, PSNR, SSIM; cubic B-spline first), written to
    `<perceptual_report_dir>/model_comparison.md`, and each set's verdict joins the last lines."""
    text, summary = _summary(report_dir)
    print(text)
    if Path(train_log).is_file():
        print(f"training curves: {training_curves(train_log, Path(report_dir) / 'training_curves.png')}")
    for fig in summary.get("figures", []):
        print(f"figure: {fig}")
    headline = [f"held-out volumes: {worst_case_line(summary)}"]
    print(f"held-out volumes ({report_dir}):")
    print("\n".join(_gains(summary)))
    if real_report_dir:
        _, real = _summary(real_report_dir)
        print(f"real scans not made from the training template ({real_report_dir}/summary.md):")
        print("\n".join(_gains(real)))
        headline.append(f"real scans: {worst_case_line(real)}")
    pairs = [("held-out volumes", report_dir, perceptual_report_dir)]
    pairs += [("real scans", real_report_dir, perceptual_real_report_dir)] if real_report_dir else []
    comparison: list[str] = []
    for name, fidelity_dir, perceptual_dir in pairs:
        if perceptual_dir:
            fidelity, perceptual = _summary(fidelity_dir)[1], _summary(perceptual_dir)[1]
            lines = comparison_lines(fidelity, perceptual, f"{name}: fidelity and perceptual models")
            comparison += [*lines, ""]
            headline.append(f"{name}, {lines[-1]}")  # "perceptual model: LPIPS below ... -> goal met"
    if comparison and perceptual_report_dir:
        print("\n".join(comparison))
        (Path(perceptual_report_dir) / "model_comparison.md").write_text("\n".join(comparison))
    if export_dir:
        print(f"exported bundle: {export_dir} (see README: Share and deploy)")
    print("\n".join(headline))


if __name__ == "__main__":
    fire.Fire(show_report)
