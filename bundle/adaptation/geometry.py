"""Where a thick-slice scan is coarse, by how much, and how its in-plane data become training pairs.

Conventions (the same as the rest of the bundle, `bundle.data.degradation`): thick voxel i along the slice axis
covers the thin voxels s*i .. s*i+s-1 of the output grid; a Gaussian slice profile of FWHM = the slice thickness
is centred on them, a box profile averages them. The in-plane pairs use exactly that operator along one
in-plane axis, so the network learns the acquisition's own blur-and-decimate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bundle.core.choices import SLICE_PROFILES
from bundle.core.errors import ConfigError, DatasetError
from bundle.core.geometry import THICK_SLICE_MIN_RATIO, slice_ratio
from bundle.data.operators import degrade

__all__ = [
    "PROFILES",
    "ScanGeometry",
    "find_geometry",
    "in_plane_images",
    "degrade_along_last",
    "to_slabs",
    "from_slabs",
]

logger = logging.getLogger(__name__)

PROFILES = SLICE_PROFILES  # slice profile -> the bundle's degradation operator that models it
# below this a scan is treated as (near) isotropic: `run inference` is the tool for it (and warns above it)
MIN_RATIO = THICK_SLICE_MIN_RATIO


@dataclass(frozen=True)
class ScanGeometry:
    """A thick-slice scan's sampling: voxel spacing (mm, per array axis), its slice axis and the factors.

    `ratio` is slice spacing / in-plane spacing (may be non-integer); `scale` the integer factor the generator
    upsamples by (the nearest integer, at least 2), so the output slice spacing is spacing[slice_axis] / scale;
    `thickness` the slice thickness in mm (FWHM of the Gaussian profile), by default the slice spacing.
    """

    spacing: tuple[float, float, float]
    slice_axis: int
    ratio: float
    scale: int
    thickness: float
    profile: str = "gaussian"

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        a, b = (axis for axis in range(3) if axis != self.slice_axis)
        return a, b

    @property
    def in_plane_spacing(self) -> float:
        a, b = self.in_plane_axes
        return (self.spacing[a] + self.spacing[b]) / 2.0

    @property
    def operator(self) -> str:
        return PROFILES[self.profile]

    @property
    def fwhm_factor(self) -> float:
        """FWHM of the profile in output voxels, divided by the scale (the operators' `fwhm_factor`)."""
        return self.thickness / self.in_plane_spacing / self.scale

    @property
    def output_fwhm_factor(self) -> float:
        """The same on the output grid (slices spacing / scale apart): thickness / slice spacing. Equal to
        `fwhm_factor` when the ratio is a whole number; at 4.5 mm over 1 mm in-plane (x4) the output voxels are
        1.125 mm, so the profile spans fewer of them than of the in-plane voxels."""
        return self.thickness / self.spacing[self.slice_axis]

    @property
    def scale3(self) -> tuple[int, int, int]:
        factors = [1, 1, 1]
        factors[self.slice_axis] = self.scale
        return factors[0], factors[1], factors[2]

    @property
    def output_spacing(self) -> tuple[float, float, float]:
        return tuple(sp / s for sp, s in zip(self.spacing, self.scale3, strict=True))  # type: ignore[return-value]

    def describe(self) -> str:
        axis = "XYZ"[self.slice_axis]
        out = self.spacing[self.slice_axis] / self.scale
        return (
            f"slice axis {axis} ({self.spacing[self.slice_axis]:.3g} mm, thickness {self.thickness:.3g} mm), in-plane "
            f"{self.in_plane_spacing:.3g} mm: ratio {self.ratio:.3g}, upsampled x{self.scale} to {out:.3g} mm "
            f"({self.profile} slice profile)"
        )


def find_geometry(
    spacing: Sequence[float],
    slice_thickness: float | None = None,
    profile: str = "gaussian",
    source: str = "scan",
    min_ratio: float = MIN_RATIO,
) -> ScanGeometry:
    """The slice axis is the one with the largest spacing; one clear error when the scan is not thick-slice."""
    if profile not in PROFILES:
        raise ConfigError(f"slice_profile must be one of {tuple(PROFILES)}, got {profile!r}")
    sp = tuple(float(v) for v in spacing)
    if len(sp) != 3 or not all(v > 0 for v in sp):
        raise DatasetError(f"{source}: voxel spacing {list(sp)} is not three positive numbers")
    slice_axis, ratio = slice_ratio(sp)
    in_plane = [sp[a] for a in range(3) if a != slice_axis]
    if ratio < min_ratio:
        raise DatasetError(
            f"{source}: voxel spacing {[round(v, 3) for v in sp]} mm is not thick-slice (largest / in-plane = "
            f"{ratio:.2f} < {min_ratio}); per-scan adaptation needs sharp in-plane axes, use `run inference` instead"
        )
    if max(in_plane) / min(in_plane) > 1.1:
        logger.warning("%s: in-plane spacings differ (%s mm); their mean is used", source, in_plane)
    thickness = sp[slice_axis] if slice_thickness is None else float(slice_thickness)
    if not thickness > 0:
        raise ConfigError(f"slice_thickness must be > 0 mm, got {slice_thickness}")
    scale = max(2, int(round(ratio)))
    return ScanGeometry(sp, slice_axis, ratio, scale, thickness, profile)


def in_plane_images(volume: torch.Tensor, slice_axis: int, multiple: int) -> torch.Tensor:
    """(X, Y, Z) -> (N, Q, U): the N in-plane images along `slice_axis`, cropped (centred) so Q and U divide by
    `multiple` (the decimation factor of the pairs)."""
    images = torch.movedim(volume, slice_axis, 0)
    q, u = images.shape[1] // multiple * multiple, images.shape[2] // multiple * multiple
    if q < multiple * 4 or u < multiple * 4:
        raise DatasetError(f"in-plane size {list(images.shape[1:])} is too small for x{multiple} pairs")
    q0, u0 = (images.shape[1] - q) // 2, (images.shape[2] - u) // 2
    return images[:, q0 : q0 + q, u0 : u0 + u].contiguous()


def degrade_along_last(images: torch.Tensor, geometry: ScanGeometry) -> torch.Tensor:
    """(N, Q, U) -> (N, Q, U / scale): the slice profile and decimation along the last axis only."""
    slab = images[:, None, None]  # (N, 1, 1, Q, U): the operators take (B, C, X, Y, Z)
    lr = degrade(slab, (1, 1, geometry.scale), geometry.operator, fwhm_factor=geometry.fwhm_factor)
    return lr[:, 0, 0]


def to_slabs(volume: torch.Tensor, slice_axis: int, across: int) -> torch.Tensor:
    """(X, Y, Z) -> (N, 1, 1, Q, S): one slab per index of the in-plane axis `across`, holding the other
    in-plane axis (Q) and the slice axis (S, last: the axis the generator upsamples)."""
    if across == slice_axis:
        raise ValueError("slabs are taken across an in-plane axis")
    other = 3 - slice_axis - across
    return volume.permute(across, other, slice_axis)[:, None, None].contiguous()


def from_slabs(slabs: torch.Tensor, slice_axis: int, across: int) -> torch.Tensor:
    """Inverse of `to_slabs` on the (N, 1, 1, Q, sS) output: back to (X, Y, sZ) in the volume's axis order."""
    other = 3 - slice_axis - across
    order = [across, other, slice_axis]
    inverse = [order.index(axis) for axis in range(3)]
    return slabs[:, 0, 0].permute(*inverse).contiguous()
