"""Grid geometry shared by the networks, transforms and evaluation: per-axis scales and SR/LR affines.

Kept apart from the network and transform modules so that each can use it without importing the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["THICK_SLICE_MIN_RATIO", "ensure_scale3", "slice_ratio", "super_resolution_affine", "low_resolution_affine"]

# largest / mean in-plane spacing from which a scan is thick-slice: `run adapting` is the tool for it, and below it
# `run inference` (adapting refuses such a scan, inference warns about one above it)
THICK_SLICE_MIN_RATIO = 1.5


def ensure_scale3(scale: int | Sequence[int]) -> tuple[int, int, int]:
    """Return a per-axis scale triple from an int or a sequence of three positive ints."""
    factors = (scale, scale, scale) if isinstance(scale, int) else tuple(int(s) for s in scale)
    if len(factors) != 3 or any(s < 1 for s in factors):
        raise ValueError(f"scale must be a positive int or three positive ints, got {scale!r}")
    return factors[0], factors[1], factors[2]


def slice_ratio(spacing: Sequence[float]) -> tuple[int, float]:
    """(slice axis, ratio): the axis of the largest spacing, and that spacing over the mean of the other two."""
    sp = [float(v) for v in spacing]
    axis = max(range(3), key=lambda a: sp[a])
    in_plane = [sp[a] for a in range(3) if a != axis]
    return axis, sp[axis] / (sum(in_plane) / 2.0)


def super_resolution_affine(affine: torch.Tensor, scale: Sequence[int]) -> torch.Tensor:
    """Affine of a grid `scale` times finer over the same physical extent (voxel-centred sampling).

    Spacing columns divide by the scale; the origin moves by (1/s - 1)/2 of a coarse voxel per axis,
    which is -3/8 of a voxel for s = 4, so both grids cover the same box.
    """
    a = torch.as_tensor(affine, dtype=torch.float64).clone()
    s = torch.as_tensor([float(v) for v in scale], dtype=torch.float64)
    a[:3, 3] = a[:3, 3] + a[:3, :3] @ ((1.0 / s - 1.0) / 2.0)
    a[:3, :3] = a[:3, :3] / s
    return a


def low_resolution_affine(affine: torch.Tensor, scale: Sequence[int]) -> torch.Tensor:
    """Inverse of `super_resolution_affine`: the affine of the grid `scale` times coarser."""
    a = torch.as_tensor(affine, dtype=torch.float64).clone()
    s = torch.as_tensor([float(v) for v in scale], dtype=torch.float64)
    a[:3, :3] = a[:3, :3] * s
    a[:3, 3] = a[:3, 3] - a[:3, :3] @ ((1.0 / s - 1.0) / 2.0)
    return a
