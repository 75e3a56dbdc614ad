"""Draw the SR's gain over cubic B-spline per scan x degradation from one or more evaluation summaries.

    python scripts/gain_figure.py --summaries "{'0.7.0': 'outputs/eval_real/summary.json'}" \
        --output docs/figures/real_scans_gain_070.png --title "real scans, SR - cubic B-spline"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.evaluation.figures import gain_figure  # noqa: E402


def main(summaries: dict, output: str, title: str = "SR - cubic B-spline") -> None:
    """summaries: {label: path of an evaluation's summary.json}, drawn in that order."""
    loaded = {}
    for label, path in summaries.items():
        if not Path(path).is_file():
            raise SystemExit(f"error: {path}: no evaluation summary (run the evaluation first)")
        loaded[str(label)] = json.loads(Path(path).read_text())
    print(f"figure: {gain_figure(loaded, output, title)}")


if __name__ == "__main__":
    fire.Fire(main)
