"""Calibrate the test-time-augmentation uncertainty of a trained model on validation HR volumes.

    python scripts/calibrate_uncertainty.py --hr_files "data/val/*.nii.gz" --passes 8 --output models/calibration.json

Each HR volume is loaded and normalised by inference.json's `preprocessing`, padded to a multiple of the scale,
degraded to LR (the bundle's simulator by default, or `--degrade module:function` taking (HR (C, X, Y, Z), scale)
and returning LR), super-resolved with `passes` augmentations through inference.json's `network` and `inferer`,
and scored against the HR. Writes the calibration record (conformal lambda, coverage, validation consistency
residuals) and prints whether the TTA mean beat the single pass.
"""

from __future__ import annotations

import functools
import glob
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser
from monai.transforms import DivisiblePad

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.networks import ensure_scale3  # noqa: E402
from bundle.transforms import simulate_low_resolution  # noqa: E402
from bundle.uncertainty import calibrate_volumes, save_calibration  # noqa: E402


def _files(hr_files: str | Sequence[str]) -> list[str]:
    patterns = [hr_files] if isinstance(hr_files, str) else list(hr_files)
    found = [f for p in patterns for f in (sorted(glob.glob(str(p))) or [str(p)])]
    missing = [f for f in found if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"{missing[0]}: HR volume not found")
    return found


def _hook(spec: str | None, lr_method: str) -> Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor]:
    if spec is None:
        return lambda hr, scale: simulate_low_resolution(hr, scale, lr_method)
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def calibrate_uncertainty(
    hr_files: str | Sequence[str],
    config_file: str | Sequence[str] = "configs/inference.json",
    ckpt_path: str | None = None,
    output: str = "models/calibration.json",
    passes: int = 8,
    coverage: float = 0.9,
    sr_output: str = "best",
    lr_method: str = "kspace",
    degrade: str | None = None,
    foreground_threshold: float = 0.05,
    max_per_volume: int = 100_000,
    overrides: dict | None = None,
) -> dict:
    """Calibrate and write `output`; returns the record and the report as one dict."""
    parser = ConfigParser()
    parser.read_config([config_file] if isinstance(config_file, str) else list(config_file))
    for key, value in (overrides or {}).items():
        parser[key] = value
    scale = ensure_scale3(parser.get_parsed_content("scale"))
    device = torch.device(parser.get_parsed_content("device"))
    network = parser.get_parsed_content("network")
    ckpt = Path(ckpt_path or parser.get_parsed_content("ckpt_path"))
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: generator checkpoint not found (train first, or pass --ckpt_path)")
    state = torch.load(ckpt, map_location=device, weights_only=True)
    network.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    preprocessing = parser.get_parsed_content("preprocessing")
    amp = bool(parser.get_parsed_content("amp")) and device.type == "cuda"
    hook, pad = _hook(degrade, lr_method), DivisiblePad(k=scale)

    def predict(lr: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return inferer(lr.to(device), network).float()

    def volumes():
        for f in _files(hr_files):
            hr = torch.as_tensor(pad(preprocessing({"image": f})["image"])).float()
            yield hr[None].to(device)

    record, report = calibrate_volumes(
        volumes(),
        predict,
        lambda hr: hook(hr[0], scale)[None].to(hr.device),
        scale,
        passes=passes,
        target=coverage,
        sr_output=sr_output,
        foreground_threshold=foreground_threshold,
        max_per_volume=max_per_volume,
    )
    path = save_calibration(output, record)
    result = {"calibration": str(path), **record.to_dict(), "report": report}
    print(json.dumps(result, indent=2))
    return result


def _cli(*args, **kwargs) -> None:
    """Command-line entry: the result is already printed and written, so return nothing."""
    calibrate_uncertainty(*args, **kwargs)


if __name__ == "__main__":
    fire.Fire(functools.wraps(calibrate_uncertainty)(_cli))
