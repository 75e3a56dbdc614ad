"""Print the evaluation table, draw the training curves, and list the figures (the last step of `make demo`).

python scripts/show_report.py --report_dir outputs/eval --train_log outputs/train_log.csv
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.report import training_curves  # noqa: E402


def show_report(report_dir: str = "outputs/eval", train_log: str = "outputs/train_log.csv") -> None:
    report = Path(report_dir)
    summary_md, summary_json = report / "summary.md", report / "summary.json"
    if not summary_md.is_file():
        raise SystemExit(f"{summary_md}: not found; run the evaluation first (make demo)")
    print(summary_md.read_text())
    summary = json.loads(summary_json.read_text())
    if Path(train_log).is_file():
        curves = training_curves(train_log, report / "training_curves.png")
        print(f"training curves: {curves}")
    for fig in summary.get("figures", []):
        print(f"figure: {fig}")
    for degradation, methods in summary.get("degradations", {"(as trained)": summary["methods"]}).items():
        if "psnr" in methods.get("sr", {}) and "psnr" in methods.get("trilinear", {}):
            gain = methods["sr"]["psnr"]["mean"] - methods["trilinear"]["psnr"]["mean"]
            print(f"SR vs trilinear, LR by {degradation}: {gain:+.2f} dB PSNR")


if __name__ == "__main__":
    fire.Fire(show_report)
