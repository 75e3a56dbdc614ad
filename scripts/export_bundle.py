"""Export a trained generator as a standalone bundle folder that model-zoo CI and MONAI Label accept.

    python scripts/export_bundle.py --ckpt models/model.pt --overlays "['configs/demo.json']" \\
        --name mri_sr_demo --version 0.1.1 --results outputs/eval/summary.json \\
        --perceptual_ckpt models/perceptual/model.pt                   # optional: the perceptual model beside it

What it writes and why: bundle/export/ (`bundle.export.export`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.export import export  # noqa: E402


def main() -> None:
    """The CLI: every failure is one line. Nothing half-made is left (the export builds in a temporary folder)."""
    try:
        fire.Fire(export)  # the bundle's own errors (BundleError) are one line already
    except (ValueError, KeyError, OSError, RuntimeError, json.JSONDecodeError) as err:  # a config or file problem
        sys.exit(f"error: export failed: {type(err).__name__}: {' '.join(str(err).split())}")


if __name__ == "__main__":
    main()
