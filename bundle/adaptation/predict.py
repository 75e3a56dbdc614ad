"""The adapted generator on held-out pairs and on the whole scan, with test-time flips for the uncertainty.

Test-time augmentation on a slab (B, 1, 1, Q, S): the four flips of its two in-plane axes (a flip of the
one-voxel axis is no change). The whole scan is super-resolved twice, once through slabs across each in-plane
axis (the other in-plane axis is the slab's sharp context), and the two are averaged as SMORE does; its
uncertainty is the root mean of the two orientations' TTA variances, the same quantity per orientation that the
held-out calibration measures (the average of two orientations is, if anything, more accurate than either).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bundle.adaptation.geometry import ScanGeometry, from_slabs, to_slabs

__all__ = ["SLAB_FLIPS", "predict_slabs", "predict_volume"]

SLAB_FLIPS: tuple[tuple[int, ...], ...] = ((), (4,), (3,), (3, 4))  # dims of (B, C, 1, Q, S)


@torch.no_grad()
def predict_slabs(
    network: Callable[[torch.Tensor], torch.Tensor],
    slabs: torch.Tensor,
    passes: int = 1,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 1, Q, S) LR slabs -> (mean, std) over `passes` flips, each (N, 1, 1, Q, sS) float32 on the CPU."""
    if not 1 <= passes <= len(SLAB_FLIPS):
        raise ValueError(f"slab test-time augmentation has 1 to {len(SLAB_FLIPS)} passes, got {passes}")
    means, stds = [], []
    for start in range(0, slabs.shape[0], batch_size):
        x = slabs[start : start + batch_size].to(device).float()
        outs = []
        for dims in SLAB_FLIPS[:passes]:
            y = network(torch.flip(x, dims) if dims else x)
            outs.append((torch.flip(y, dims) if dims else y).float().cpu())
        stacked = torch.stack(outs)
        means.append(stacked.mean(0))
        stds.append(stacked.std(0, unbiased=False))
    return torch.cat(means), torch.cat(stds)


def predict_volume(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    geometry: ScanGeometry,
    passes: int = 1,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y, Z) thick scan -> (SR, std), each (X, Y, Z) with the slice axis `geometry.scale` times longer."""
    means, variances = [], []
    for across in geometry.in_plane_axes:
        slabs = to_slabs(volume, geometry.slice_axis, across)
        mean, std = predict_slabs(network, slabs, passes, batch_size, device)
        means.append(from_slabs(mean, geometry.slice_axis, across))
        variances.append(from_slabs(std, geometry.slice_axis, across) ** 2)
    return (means[0] + means[1]) / 2.0, ((variances[0] + variances[1]) / 2.0).sqrt()
