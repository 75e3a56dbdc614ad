"""Download MSD Task01 BrainTumour (about 7 GB, CC-BY-SA 4.0) with monai.apps and print its folder.

python scripts/download_msd.py --root_dir /data
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.datalist import download_msd_task01  # noqa: E402

if __name__ == "__main__":
    fire.Fire(lambda root_dir="data": str(download_msd_task01(root_dir)))
