"""Print the evaluation table, draw the training curves, and list the figures (the last step of `make demo`).

python scripts/show_report.py --report_dir outputs/eval --train_log outputs/train_log.csv
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.evaluation.figures import training_curves  # noqa: E402


def _gains(summary: dict) -> list[str]:
    lines = []
    for degradation, methods in summary.get("degradations", {"(as trained)": summary["methods"]}).items():
        if "psnr" in methods.get("sr", {}) and "psnr" in methods.get("trilinear", {}):
            gain = methods["sr"]["psnr"]["mean"] - methods["trilinear"]["psnr"]["mean"]
            lines.append(f"  LR by {degradation}: SR {gain:+.2f} dB PSNR over trilinear")
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
) -> None:
    """The held-out table, the real-scan table (when given), figures, and the SR gain per degradation."""
    text, summary = _summary(report_dir)
    print(text)
    if Path(train_log).is_file():
        print(f"training curves: {training_curves(train_log, Path(report_dir) / 'training_curves.png')}")
    for fig in summary.get("figures", []):
        print(f"figure: {fig}")
    print(f"held-out volumes ({report_dir}):")
    print("\n".join(_gains(summary)))
    if real_report_dir:
        _, real = _summary(real_report_dir)
        print(f"real scans not made from the training template ({real_report_dir}/summary.md):")
        print("\n".join(_gains(real)))
    if export_dir:
        print(f"exported bundle: {export_dir} (see README: Share and deploy)")


if __name__ == "__main__":
    fire.Fire(show_report)
