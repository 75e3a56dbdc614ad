"""The adapted generator on held-out pairs and on the whole scan, with test-time flips for the uncertainty.

Test-time augmentation on a slab (B, 1, 1, Q, S): the four flips of its two in-plane axes (a flip of the
one-voxel axis is no change). The whole scan is super-resolved twice, once through slabs across each in-plane
axis (the other in-plane axis is the slab's sharp context), and the two are averaged as SMORE does; its
uncertainty is the root mean of the two orientations' TTA variances, the same quantity per orientation that the
held-out calibration measures.

The members (each orientation's and turn's SR) are kept, so that their disagreement can be measured on the output as
written (`VolumePrediction.spread`): the average errs less than its members by exactly that much (the ambiguity
decomposition), by which `bundle.trust.record.ensemble_shrink` narrows the bound calibrated on single members.

With `rotations` r > 0 the scan is also super-resolved turned about its slice axis by 90 k / (r + 1) degrees,
k = 1 .. r (each thick slice rotated in-plane, so the slice profile is untouched; `rotated_prediction`), and
every orientation of every turn enters the average: slabs at 45 degrees cut the anatomy along other lines than
the scan's own axes, so their errors are partly independent of the unturned ones'. The generator has seen such
lines in training (`InPlanePairs` rotations). On the tuning template made thick (box x5) one turn of 45 degrees
gained +0.06 dB; two (30, 60) the same (docs/results.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bundle.adaptation.geometry import ScanGeometry, from_slabs, to_slabs
from bundle.adaptation.pairs import rotate_images

__all__ = [
    "SLAB_FLIPS",
    "VolumePrediction",
    "predict_slabs",
    "predict_volume",
    "rotated_prediction",
    "rotation_padding",
]

SLAB_FLIPS: tuple[tuple[int, ...], ...] = ((), (4,), (3,), (3, 4))  # dims of (B, C, 1, Q, S)


@torch.no_grad()
def predict_slabs(
    network: Callable[[torch.Tensor], torch.Tensor],
    slabs: torch.Tensor,
    passes: int = 1,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 1, Q, S) LR slabs -> (mean, std) over `passes` flips, each (N, 1, 1, Q, sS) float32 on the CPU;
    `progress` is called with the number of slabs of each finished batch."""
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
        if progress is not None:
            progress(int(x.shape[0]))
    return torch.cat(means), torch.cat(stds)


def _both_orientations(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    geometry: ScanGeometry,
    passes: int,
    batch_size: int,
    device: torch.device | str,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(SR, TTA variance)] through slabs across each in-plane axis; each (X, Y, sZ)."""
    out = []
    for across in geometry.in_plane_axes:
        slabs = to_slabs(volume, geometry.slice_axis, across)
        mean, std = predict_slabs(network, slabs, passes, batch_size, device, progress)
        out.append((from_slabs(mean, geometry.slice_axis, across), from_slabs(std, geometry.slice_axis, across) ** 2))
    return out


def rotation_padding(shape: tuple[int, int]) -> tuple[int, int]:
    """Padding (along each in-plane axis) that keeps an (A, B) image inside its frame at any rotation: to its
    diagonal, plus 2 pixels for the bicubic kernel."""
    diagonal = math.hypot(*shape)
    return tuple(int(math.ceil((diagonal - n) / 2)) + 2 for n in shape)  # type: ignore[return-value]


def rotated_prediction(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    geometry: ScanGeometry,
    degrees: float,
    passes: int = 1,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_both_orientations` of the (X, Y, Z) scan turned by `degrees` about its slice axis, turned back: each
    thick slice is padded to its diagonal (by reflection where the image is large enough, else by its edge
    values), rotated (bicubic, `rotate_images`), super-resolved, and every thin output slice rotated back and
    cropped. Returns [(SR, variance)], each (X, Y, sZ)."""
    slices = torch.movedim(volume, geometry.slice_axis, 0).float()  # (Z, A, B)
    a, b = slices.shape[1:]
    pad_a, pad_b = rotation_padding((a, b))
    mode = "reflect" if pad_a < a and pad_b < b else "replicate"
    padded = F.pad(slices[:, None], (pad_b, pad_b, pad_a, pad_a), mode=mode)[:, 0]
    turned = torch.movedim(rotate_images(padded, degrees), 0, geometry.slice_axis)
    out = []
    for mean, variance in _both_orientations(network, turned, geometry, passes, batch_size, device, progress):
        back = []
        for field in (mean, variance):
            thin = rotate_images(torch.movedim(field, geometry.slice_axis, 0), -degrees)
            back.append(torch.movedim(thin[:, pad_a : pad_a + a, pad_b : pad_b + b], 0, geometry.slice_axis))
        out.append((back[0], back[1].clamp_min(0.0)))  # bicubic can undershoot a variance below 0
    return out


@dataclass(frozen=True)
class VolumePrediction:
    """The whole scan super-resolved, each field (X, Y, Z) with the slice axis `geometry.scale` times longer.

    sr: the mean of the `members` (each slab orientation of the scan and of each turn done: 2 per turn and 2
    unturned); std: the root mean of the members' test-time variances; turns: how many turns were done."""

    sr: torch.Tensor
    std: torch.Tensor
    members: tuple[torch.Tensor, ...]
    turns: int

    def spread(
        self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None, written: torch.Tensor | None = None
    ) -> torch.Tensor:
        """mean_k (T(f_k) - T(sr))^2 per voxel: how much the members disagree about the output as `transform` T
        (an affine map, such as the consistency step's projection) writes it; 0 where they agree. `written`: T(sr)
        when the caller has it already (the output it writes), so that it is not made twice."""
        t = transform or (lambda x: x)
        written = t(self.sr) if written is None else written
        total = torch.zeros_like(written)
        for member in self.members:
            total += (t(member) - written).square()
        return total / len(self.members)


def predict_volume(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    geometry: ScanGeometry,
    passes: int = 1,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    rotations: int = 0,
    progress: Callable[[int], None] | None = None,
    turn_fits: Callable[[], bool] | None = None,
) -> VolumePrediction:
    """(X, Y, Z) thick scan -> its `VolumePrediction` over both slab orientations and up to `rotations` turns.
    Before each turn `turn_fits()` (the time budget) may stop the turns; `progress` counts slabs."""
    if rotations < 0:
        raise ValueError(f"rotations must be >= 0, got {rotations}")
    fields = _both_orientations(network, volume, geometry, passes, batch_size, device, progress)
    done = 0
    for k in range(1, rotations + 1):
        if turn_fits is not None and not turn_fits():
            break
        degrees = 90.0 * k / (rotations + 1)
        fields += rotated_prediction(network, volume, geometry, degrees, passes, batch_size, device, progress)
        done += 1
    members = tuple(m for m, _ in fields)
    mean = torch.stack(members).mean(0)
    variance = torch.stack([v for _, v in fields]).mean(0)
    return VolumePrediction(mean, variance.sqrt(), members, done)
