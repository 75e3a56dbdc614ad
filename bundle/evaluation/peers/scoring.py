"""The peer benchmark's scoring: every method's output on the HR grid, one intensity map for all, PSNR and SSIM."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from bundle.core.choices import FOREGROUND_THRESHOLD, SSIM_WINDOW
from bundle.core.metrics import psnr, ssim_3d


def to_hr_grid(
    out_img: nib.spatialimages.SpatialImage, hr_img: nib.spatialimages.SpatialImage
) -> tuple[np.ndarray, str]:
    """A method's output on the HR grid, and how it got there.

    Same shape and affine (to 1e-3 mm): taken as is. Otherwise each HR voxel centre is mapped through the two
    affines into the output's voxel space and sampled linearly (scipy map_coordinates, order 1, nearest at the
    border); the note gives the largest voxel-centre offset in mm so a reader sees how far the grids were apart.
    """
    out = np.asarray(out_img.dataobj, dtype=np.float32)
    while out.ndim > 3 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.shape == tuple(hr_img.shape[:3]) and np.allclose(out_img.affine, hr_img.affine, atol=1e-3):
        return out, "same grid"
    to_out = np.linalg.inv(out_img.affine) @ hr_img.affine
    grid = np.indices(hr_img.shape[:3], dtype=np.float64).reshape(3, -1)
    coords = to_out[:3, :3] @ grid + to_out[:3, 3:4]
    sampled = ndimage.map_coordinates(out, coords, order=1, mode="nearest").reshape(hr_img.shape[:3])
    corners = np.array([[0, 0, 0, 1], [s - 1 for s in hr_img.shape[:3]] + [1]], dtype=np.float64).T
    offset = np.abs((out_img.affine @ np.vstack([corners[:3], corners[3:]]) - hr_img.affine @ corners)[:3]).max()
    return sampled.astype(np.float32), f"resampled (linear) from {list(out.shape)}, corner offset {offset:.2f} mm"


def intensity_range(hr: np.ndarray) -> tuple[float, float]:
    """The HR reference's 0.5 / 99.5 percentiles: mapped to 0 / 1 for every method alike."""
    lo, hi = np.percentile(hr, [0.5, 99.5])
    if hi <= lo:
        raise ValueError("the HR reference is constant: nothing to score")
    return float(lo), float(hi)


def normalised(volume: np.ndarray, hr: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) -> (1, 1, X, Y, Z) float32 through the HR's percentile map (`intensity_range`)."""
    lo, hi = intensity_range(hr)
    return torch.from_numpy((volume.astype(np.float32) - lo) / (hi - lo))[None, None]


def score(pred: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM over the whole volume and inside the foreground (normalised HR > FOREGROUND_THRESHOLD).

    Both volumes (X, Y, Z) go through the HR's percentile map (`intensity_range`), data range 1, SSIM window
    SSIM_WINDOW: the numbers are those of the project's evaluation.
    """
    if pred.shape != hr.shape:
        raise ValueError(f"prediction {pred.shape} is not on the HR grid {hr.shape}")
    p, t = normalised(pred, hr), normalised(hr, hr)
    fg = t > FOREGROUND_THRESHOLD
    return {
        "psnr": float(psnr(p, t)[0]),
        "ssim": float(ssim_3d(p, t, win_size=SSIM_WINDOW)[0]),
        "psnr_fg": float(psnr(p, t, mask=fg)[0]),
        "ssim_fg": float(ssim_3d(p, t, win_size=SSIM_WINDOW, mask=fg)[0]),
    }


def coverage(pred: np.ndarray, bound: np.ndarray, hr: np.ndarray) -> float:
    """The share of foreground voxels (normalised HR > FOREGROUND_THRESHOLD, as `score`) whose error |pred - HR|
    is at most `bound`: a calibrated 90 % bound should cover about 0.9 of them.

    pred, bound, hr: (X, Y, Z) on the HR grid, in the HR's units (the bound in the input's, which the method kept).
    """
    if not pred.shape == bound.shape == hr.shape:
        raise ValueError(f"prediction {pred.shape} and bound {bound.shape} are not on the HR grid {hr.shape}")
    fg = (normalised(hr, hr) > FOREGROUND_THRESHOLD)[0, 0].numpy()  # as `score`
    if not fg.any():
        raise ValueError("the HR reference has no foreground: no coverage to measure")
    error = np.abs(pred.astype(np.float64) - hr.astype(np.float64))
    return float((error[fg] <= bound.astype(np.float64)[fg]).mean())
