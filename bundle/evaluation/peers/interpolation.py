"""The benchmark's interpolation baselines, run as a child process like every peer:

python -m bundle.evaluation.peers.interpolation bspline thick.nii.gz output.nii.gz 4.5
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bundle.core.bspline import bspline_resize
from bundle.evaluation.peers.cases import Case, Plan
from bundle.evaluation.peers.measure import ROOT
from bundle.evaluation.peers.simulation import load_nifti, save_nifti_atomic


def interpolate_axis(thick: np.ndarray, axis: int, factor: float, method: str) -> np.ndarray:
    """Upsample (X, Y, Z) along `axis` by `factor` with voxel-centred sampling, as the evaluation's baselines:
    'bspline' = bundle.core.bspline.bspline_resize (scipy's zoom order 3, grid-mirror, grid_mode, to ~1e-6);
    'trilinear' = F.interpolate, align_corners False."""
    size = list(thick.shape)
    size[axis] = int(round(thick.shape[axis] * factor))
    x = torch.from_numpy(np.ascontiguousarray(thick, dtype=np.float32))[None, None]
    if method == "bspline":
        return bspline_resize(x, size)[0, 0].numpy()
    if method == "trilinear":
        return torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    raise ValueError(f"unknown interpolation {method!r}")


def interpolate(method: str, thick: str, output: str, factor: float) -> str:
    """Child-process entry: the thick image's slice axis (its largest spacing) upsampled by `factor`."""
    img = load_nifti(thick)
    axis = int(np.argmax(img.header.get_zooms()[:3]))
    up = interpolate_axis(np.asarray(img.dataobj, dtype=np.float32), axis, float(factor), method)
    scale = [1.0, 1.0, 1.0]
    scale[axis] = float(factor)
    a = img.affine.copy()
    a[:3, 3] = a[:3, 3] + a[:3, :3] @ ((1.0 / np.array(scale) - 1.0) / 2.0)  # bundle.core.geometry's SR affine
    a[:3, :3] = a[:3, :3] / np.array(scale)
    save_nifti_atomic(up, a, Path(output))
    return output


def plan_interpolation(method: str) -> Callable[[Case, Path, float], Plan]:
    def plan(case: Case, work: Path, budget_s: float) -> Plan:
        out = work / "output.nii.gz"
        cmd = [sys.executable, "-m", "bundle.evaluation.peers.interpolation", method, str(case.thick), str(out)]
        return Plan([*cmd, f"{case.factor:g}"], out, cwd=ROOT)

    return plan


if __name__ == "__main__":
    import fire

    fire.Fire(interpolate)
