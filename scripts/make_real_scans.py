"""Real MRI scans, not derived from the demo's training template, as an MSD-layout test set for evaluation.

    python scripts/make_real_scans.py --output_dir data/real_scans                   # --scans demo
    python scripts/make_real_scans.py --output_dir data/real_scans_all --scans all   # + the 1 mm scan (downloaded)

Which scans, their licences and how the downloaded one is checked: bundle/evaluation/real_scans.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.evaluation.real_scans import make_real_scans  # noqa: E402


def main() -> None:
    fire.Fire(make_real_scans)


if __name__ == "__main__":
    main()
