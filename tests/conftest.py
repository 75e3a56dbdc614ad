"""Shared fixtures: a tiny MSD-layout dataset and a runner for the MONAI bundle CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# Config stacks as the README gives them, made CPU-tiny by the configs/tiny.json overlay
# (8x8x6 LR volumes, 4x4x4 LR patches -> 16^3 HR patches)
TRAIN = "['configs/train.json','configs/demo.json','configs/tiny.json']"
INFER = "['configs/inference.json','configs/demo.json','configs/tiny.json']"
EVAL = "['configs/train.json','configs/evaluate.json','configs/demo.json','configs/tiny.json']"


def tiny_settings() -> dict:
    """The overrides of configs/tiny.json, for code that sets config ids directly (MONAI Label, scripts)."""
    return json.loads((ROOT / "configs" / "tiny.json").read_text())


def tiny_generator(**kwargs):
    """An RRDBNet3D of the tiny overlay's size (random weights)."""
    from bundle.networks import RRDBNet3D

    tiny = tiny_settings()
    return RRDBNet3D(
        num_blocks=tiny["num_blocks"], features=tiny["features"], growth=tiny["growth"],
        residual_upsample=tiny["residual_upsample"], **kwargs,
    )  # fmt: skip


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
