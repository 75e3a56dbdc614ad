"""Make a miniature MSD Task01-style dataset from the MNI152 T1 template shipped in the nilearn wheel.

    python scripts/make_demo_data.py --output_dir data/demo_Task01 --num_train 6 --num_test 2

What it synthesises (`--contrast template` or SynthSR-style `random`): bundle/data/demo_data.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.demo_data import make_demo_data  # noqa: E402


def main() -> None:
    fire.Fire(make_demo_data)


if __name__ == "__main__":
    main()
