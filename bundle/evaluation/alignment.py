"""Scoring in world coordinates: an SR and its reference are matched through their affines, and each evaluated SR
gets the uniform shift that would match it best (its geometry line: 0 when the SR sits where its affine says).

A self-consistent simulation can hide a shift that a real scan does not forgive (an LR simulated on another grid
than the affine says teaches the network to move the image). The best shift makes such an error visible in every
table instead of only as a lower PSNR.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["on_reference_grid", "best_shift", "edge_taper", "SHIFT_RANGE", "SHIFT_STEP", "SHIFT_TOLERANCE"]

SHIFT_RANGE = 3.0  # the shifts searched, in reference voxels along each axis: -3 .. +3
SHIFT_STEP = 0.05
SHIFT_TOLERANCE = 0.25  # a best shift within a quarter voxel on every axis counts as none (the geometry line's 0)


def on_reference_grid(
    pred: torch.Tensor, pred_affine: torch.Tensor, ref_affine: torch.Tensor, ref_shape: tuple[int, ...]
) -> torch.Tensor:
    """`pred` (..., X, Y, Z) resampled onto the reference grid (`ref_shape`'s last three dims, `ref_affine`) through
    both affines (linear interpolation, 0 outside); returned as it is when the two grids are the same (within
    1e-4 of a voxel), so that an evaluation on the SR's own grid costs nothing."""
    a_pred = np.asarray(pred_affine, dtype=np.float64)
    a_ref = np.asarray(ref_affine, dtype=np.float64)
    spatial = tuple(int(n) for n in ref_shape[-3:])
    if tuple(pred.shape[-3:]) == spatial and np.allclose(a_pred, a_ref, atol=1e-4):
        return pred
    # reference voxel -> world -> pred voxel
    ref_to_pred = np.linalg.inv(a_pred) @ a_ref
    flat = pred.detach().reshape(-1, *pred.shape[-3:]).double().cpu().numpy()
    out = [
        ndimage.affine_transform(v, ref_to_pred[:3, :3], ref_to_pred[:3, 3], output_shape=spatial, order=1, cval=0.0)
        for v in flat
    ]
    return torch.from_numpy(np.stack(out)).reshape(*pred.shape[:-3], *spatial).to(pred.dtype)


def edge_taper(shape: tuple[int, ...], margin: float) -> torch.Tensor:
    """(X, Y, Z) float64 weights: 1 inside, a raised-cosine ramp to 0 over the `margin` voxels next to each face."""
    weights = []
    for n in shape[-3:]:
        x = torch.arange(int(n), dtype=torch.float64)
        to_edge = torch.minimum(x + 0.5, n - 0.5 - x)
        ramp = 0.5 - 0.5 * torch.cos(torch.pi * to_edge / margin) if margin > 0 else torch.ones_like(x)
        weights.append(torch.where(to_edge >= margin, torch.ones_like(x), ramp))
    return weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]


def best_shift(pred: torch.Tensor, ref: torch.Tensor, margin: float = 8.0) -> tuple[float, float, float]:
    """The uniform shift t (in voxels, per axis, each searched alone over -SHIFT_RANGE .. +SHIFT_RANGE in steps of
    SHIFT_STEP) for which pred(x + t) matches ref(x) best in the least-squares sense: +t means the SR content sits
    t voxels further along that axis than the reference's.

    The squared error of a circular (band-limited) shift is |pred|^2 + |ref|^2 - 2 <pred(. + t), ref>, so the best t
    maximises the cross-correlation, computed along each axis from one FFT of each volume: (..., X, Y, Z) tensors of
    one shape, intensities as scored. Both volumes are first tapered to 0 over `margin` voxels at each face
    (`edge_taper`; the evaluation passes two LR voxels), so that the wrap-around of a circular shift and the
    baselines' edge handling do not pull the estimate: on a 36 x 44 x 28 scan whose head fills the field of view,
    cubic B-spline of its LR measured up to 0.8 voxel without the taper and at most 0.2 with it.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"best_shift needs volumes of one shape, got {list(pred.shape)} and {list(ref.shape)}")
    # float32 volumes and complex64 spectra: a 500 x 500 x 400 pair stays near 1 GB
    p = pred.detach().float().cpu().reshape(-1, *pred.shape[-3:]).sum(0)
    r = ref.detach().float().cpu().reshape(-1, *ref.shape[-3:]).sum(0)
    taper = edge_taper(tuple(p.shape), margin).float()
    p, r = (p - p.mean()) * taper, (r - r.mean()) * taper
    shifts = torch.arange(-SHIFT_RANGE, SHIFT_RANGE + SHIFT_STEP / 2, SHIFT_STEP, dtype=torch.float64)
    out = []
    for axis in range(3):
        n = p.shape[axis]
        others = tuple(d for d in range(3) if d != axis)
        cross = (torch.fft.rfft(p, dim=axis) * torch.fft.rfft(r, dim=axis).conj()).sum(dim=others).to(torch.complex128)
        freqs = torch.arange(cross.numel(), dtype=torch.float64)
        weight = torch.full_like(freqs, 2.0)
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        phase = torch.exp(2j * torch.pi * freqs[None, :] * shifts[:, None] / n)
        correlation = (weight * cross * phase).real.sum(-1)
        out.append(round(float(shifts[int(correlation.argmax())]), 2))
    return out[0], out[1], out[2]
