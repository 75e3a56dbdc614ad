"""Training and held-out pairs from a scan's own in-plane images.

Every in-plane image (N, Q, U) gives two pairs: degraded along U, and (transposed) along Q, so the generator sees
both in-plane directions as "the axis to restore" and, applied across slices, either in-plane axis as context.
The in-plane images are split by index into training, calibration and check sets: a held-out image is never a
training patch, so the calibration (conformal, on the calibration images) and the coverage and B-spline checks
(on the check images) measure the model on anatomy it did not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bundle.adaptation.geometry import ScanGeometry, degrade_along_last
from bundle.core.errors import DatasetError

__all__ = ["SliceSplit", "split_slices", "rotate_images", "InPlanePairs"]


@dataclass(frozen=True)
class SliceSplit:
    """Indices of the in-plane images used to train, to calibrate and to check."""

    train: tuple[int, ...]
    calibration: tuple[int, ...]
    check: tuple[int, ...]


def split_slices(n: int, held_out_fraction: float = 0.3, seed: int = 0, source: str = "scan") -> SliceSplit:
    """A seeded random split of n in-plane images: `held_out_fraction` held out (at least 2), halved between
    calibration and check; needs n >= 6 so that each set has at least two images."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    if n < 6:
        raise DatasetError(f"{source}: {n} slices are too few to train on some and hold out others (need >= 6)")
    held = min(n - 2, max(4, round(n * held_out_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    calibration = sorted(order[: held // 2])
    check = sorted(order[held // 2 : held])
    train = sorted(order[held:])
    return SliceSplit(tuple(train), tuple(calibration), tuple(check))


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """(N, Q, U) -> (N, Q, U): each image rotated by `degrees` about its centre in pixel space (square pixels),
    bicubic, the corners filled by reflection so that no artificial edge enters a training pair."""
    n, q, u = images.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid works in coordinates normalised per axis: scale the off-diagonal terms by the aspect ratio so
    # that a non-square image turns by the same angle in pixels (grid x runs along U, y along Q)
    matrix = torch.tensor([[cos, -sin * q / u, 0.0], [sin * u / q, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(matrix.expand(n, 2, 3), [n, 1, q, u], align_corners=False)
    rotated = F.grid_sample(
        images[:, None].float(), grid, mode="bicubic", padding_mode="reflection", align_corners=False
    )
    return rotated[:, 0]


class InPlanePairs:
    """HR in-plane images (N, Q, U) and their LR along each in-plane axis, with patch sampling.

    `hr[o]`, `lr[o]` for orientation o = 0 (U degraded) and o = 1 (Q degraded, stored transposed so the degraded
    axis is always last): (N, Q, U) / (N, Q, U / s) and (N, U, Q) / (N, U, Q / s). The whole image is degraded
    once (edges by half-sample reflection, as everywhere in the bundle), then patches are cut on the LR grid, so
    a patch pair is exactly a crop of the image pair.

    With `all_phases`, each image is also decimated starting at thin sample p = 1 .. s-1 (`phase_lr[o][p]`, over
    the (U - p) // s whole slabs from p): a scan's thick slices could have started at any of the s thin positions,
    so every phase is as true a training pair as the first, and a scan of few slices gives s times as many
    distinct pairs. Held-out pairs (`whole`) keep phase 0.

    With `rotations` r > 0, each image is also rotated in-plane by 90 k / (r + 1) degrees, k = 1 .. r (bicubic;
    `rotate_images`) and degraded: a scan of few slices holds edges at few orientations relative to the axis to
    restore, and the rotated copies show the generator the same anatomy at others. Training samples draw the
    original and each rotation alike (a rotated copy of image i is still image i, so held-out images stay out).
    """

    def __init__(
        self, images: torch.Tensor, geometry: ScanGeometry, all_phases: bool = False, rotations: int = 0
    ) -> None:
        if images.dim() != 3:
            raise ValueError(f"expected in-plane images (N, Q, U), got shape {list(images.shape)}")
        self.scale = geometry.scale
        if images.shape[1] % self.scale or images.shape[2] % self.scale:
            raise ValueError(f"in-plane size {list(images.shape[1:])} must divide by the scale {self.scale}")
        images = images.float()
        transposed = images.transpose(1, 2).contiguous()
        self.hr = (images, transposed)
        self.lr = (degrade_along_last(images, geometry), degrade_along_last(transposed, geometry))
        later_phases = range(1, self.scale if all_phases else 1)
        self.phase_lr = tuple(
            [lr] + [degrade_along_last(self._phase_crop(hr, p), geometry) for p in later_phases]
            for hr, lr in zip(self.hr, self.lr, strict=True)
        )
        if rotations < 0:
            raise ValueError(f"rotations must be >= 0, got {rotations}")
        self.rotated: tuple[list[tuple[torch.Tensor, torch.Tensor]], ...] = ([], [])  # (hr, lr) per orientation
        for k in range(1, rotations + 1):
            turned = rotate_images(images, 90.0 * k / (rotations + 1))
            for o, hr in enumerate((turned, turned.transpose(1, 2).contiguous())):
                self.rotated[o].append((hr, degrade_along_last(hr, geometry)))

    def _phase_crop(self, hr: torch.Tensor, phase: int) -> torch.Tensor:
        """(N, Q, U) -> (N, Q, m s): the whole slabs along the last axis that start at thin sample `phase`."""
        m = (hr.shape[2] - phase) // self.scale
        return hr[:, :, phase : phase + m * self.scale]

    @property
    def num_images(self) -> int:
        return int(self.hr[0].shape[0])

    def patch_size(self, size: int) -> tuple[int, int]:
        """(HR patch along the kept axis, along the degraded axis): `size` clipped to the image, the latter a
        multiple of the scale."""
        q = min(size, self.hr[0].shape[1], self.hr[0].shape[2])
        u = max(self.scale, (q // self.scale) * self.scale)
        return q, u

    def sample(
        self, indices: tuple[int, ...], batch_size: int, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of patch pairs from the images `indices`: LR (B, 1, 1, q, u / s), HR (B, 1, 1, q, u),
        each from a random image, orientation, decimation phase or rotation, position and flips (flips commute
        with the symmetric profile)."""
        pq, pu = self.patch_size(size)
        s = self.scale
        lrs, hrs = [], []
        for _ in range(batch_size):
            i = indices[int(torch.randint(len(indices), (1,), generator=generator))]
            o = int(torch.randint(2, (1,), generator=generator))
            phases = len(self.phase_lr[o])
            v = int(torch.randint(phases + len(self.rotated[o]), (1,), generator=generator))
            if v < phases:
                p, hr, lr = v, self.hr[o][i], self.phase_lr[o][v][i]
            else:
                rotated_hr, rotated_lr = self.rotated[o][v - phases]
                p, hr, lr = 0, rotated_hr[i], rotated_lr[i]
            q0 = int(torch.randint(hr.shape[0] - pq + 1, (1,), generator=generator))
            j0 = int(torch.randint(lr.shape[1] - pu // s + 1, (1,), generator=generator))
            hr_patch = hr[q0 : q0 + pq, p + j0 * s : p + j0 * s + pu]
            lr_patch = lr[q0 : q0 + pq, j0 : j0 + pu // s]
            flips = [d for d in (0, 1) if int(torch.randint(2, (1,), generator=generator))]
            if flips:
                hr_patch, lr_patch = torch.flip(hr_patch, flips), torch.flip(lr_patch, flips)
            hrs.append(hr_patch)
            lrs.append(lr_patch)
        return torch.stack(lrs)[:, None, None], torch.stack(hrs)[:, None, None]

    def whole(self, indices: tuple[int, ...], orientation: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-image pairs of `indices` in one orientation: LR (n, 1, 1, Q, U / s), HR (n, 1, 1, Q, U)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.lr[orientation][index][:, None, None], self.hr[orientation][index][:, None, None]
