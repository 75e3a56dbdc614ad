"""Shared fixtures: a tiny MSD-layout dataset and a runner for the MONAI bundle CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# CLI overrides that make every config CPU-tiny: 8x8x6 LR volumes, 4x4x4 LR patches -> 16^3 HR patches
TINY = [
    "--num_blocks", "1", "--features", "8", "--growth", "4",
    "--d_features", "4", "--d_stages", "2",
    "--lr_patch_size", "[4,4,4]", "--patches_per_volume", "2",
    "--slices_per_plane", "2", "--perceptual_layer", "conv1_2", "--vgg_weights", "random",
    "--num_val", "1", "--val_interval", "1", "--val_roi_size", "[8,8,6]", "--roi_size", "[8,8,6]",
    "--amp", "False", "--num_workers", "0", "--log_interval", "1", "--residual_upsample", "True",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from make_demo_data import make_demo_data

    out = tmp_path_factory.mktemp("data") / "Task01_tiny"
    make_demo_data(output_dir=str(out), num_train=3, num_test=1, shape=(32, 32, 24), seed=1)
    return out


def run_bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle ...` from the repository root; returns the finished process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def bundle_runner():
    return run_bundle
