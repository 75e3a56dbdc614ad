"""The slice profile of a thick-slice scan, estimated from the scan itself.

A 2-D acquisition is sharp in-plane and blurred-and-decimated across its slices by an unknown slice profile: its
width (the slice thickness, often narrower than the slice spacing: a gap) and its shape (near-Gaussian or
near-box). Anatomy has about the same statistics along every direction, so the profile is the in-plane
degradation that makes in-plane lines look like the through-plane ones: each candidate (shape, width) blurs and
decimates the scan's in-plane images along an in-plane axis exactly as the training pairs would
(`degrade_along_last`), and the candidate whose mean power spectrum (per line, Hann-windowed, normalised to unit
power outside DC, compared in log) is closest to the spectrum of the lines across the slices wins. A profile
wider than the truth removes more high frequencies than the scan lacks; a narrower one leaves aliasing the scan
does not show. The uncertainty is a bootstrap over in-plane images and through-plane lines.

It is a moment-matching version of what ESPRESO learns with a GAN, and costs seconds instead of an hour on a CPU.
Measured on tuning volumes made thick (docs/results.md, version 0.8.1).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bundle.adaptation.acquisition import SliceHeader
from bundle.adaptation.geometry import PROFILES, ScanGeometry, degrade_along_last

__all__ = [
    "ProfileChoice",
    "ProfileEstimate",
    "best_shape_at",
    "choose_profile",
    "effective_fwhm",
    "estimate_profile",
    "line_spectra",
    "spectrum_distance",
]

logger = logging.getLogger(__name__)

WIDTHS = tuple(round(0.2 + 0.05 * k, 2) for k in range(27))  # candidate widths as fractions of the slice spacing
MAX_IMAGE_SIDE = 192  # in-plane images are centre-cropped to this (pixels) for the estimate: seconds on a CPU


@dataclass(frozen=True)
class ProfileEstimate:
    """The best-matching slice profile: `shape` ("gaussian" or "box"), `thickness` (mm: FWHM, or box width), its
    bootstrap interval (10th-90th percentile, mm), each shape's best distance, and the time it took."""

    shape: str
    thickness: float
    low: float
    high: float
    distances: dict[str, float]
    seconds: float

    def agrees_with(self, shape: str, thickness: float, tolerance: float = 0.15) -> bool:
        """True if a `shape` profile of `thickness` (mm) has an effective width (`effective_fwhm`) within the
        estimate's interval, widened by `tolerance` of the estimate. Widths, not shapes, are compared: a box and
        a Gaussian of the same second moment blur alike, and the spectra cannot tell them apart reliably."""
        told = effective_fwhm(shape, thickness)
        low, high = (effective_fwhm(self.shape, t) for t in (self.low, self.high))
        margin = tolerance * effective_fwhm(self.shape, self.thickness)
        return low - margin <= told <= high + margin

    def describe(self) -> str:
        return f"{self.shape}, {self.thickness:.2f} mm (80 % interval {self.low:.2f}-{self.high:.2f} mm)"

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


BOX_TO_GAUSSIAN_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0)) / math.sqrt(12.0)  # equal variance: 0.680


def effective_fwhm(shape: str, thickness: float) -> float:
    """The FWHM (mm) of the Gaussian with the same variance as the profile: a box of width w has variance w^2 / 12."""
    return thickness * (BOX_TO_GAUSSIAN_FWHM if shape == "box" else 1.0)


def line_spectra(lines: torch.Tensor, length: int) -> torch.Tensor:
    """(G, L0, n) lines, in G groups -> (G, length // 2) summed power spectra of their centred `length` samples
    (mean removed, Hann window), DC left out. Groups are what the bootstrap resamples."""
    start = (lines.shape[-1] - length) // 2
    x = lines[..., start : start + length].double()
    x = x - x.mean(-1, keepdim=True)
    window = torch.hann_window(length, periodic=False, dtype=torch.float64)
    power = torch.fft.rfft(x * window, dim=-1).abs() ** 2
    return power[..., 1 : length // 2 + 1].sum(1)


def spectrum_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of log spectra, each normalised to unit sum (the scale of the anatomy's contrast
    along a direction does not matter, its fall-off does): (..., K) and (..., K) -> (...)."""
    la = torch.log(a / a.sum(-1, keepdim=True) + 1e-12)
    lb = torch.log(b / b.sum(-1, keepdim=True) + 1e-12)
    return ((la - lb) ** 2).mean(-1)


def _crop(images: torch.Tensor, side: int, multiple: int) -> torch.Tensor:
    """(N, Q, U) -> centred crop of at most `side` per in-plane axis, each a multiple of `multiple`."""
    q = min(images.shape[1], side) // multiple * multiple
    u = min(images.shape[2], side) // multiple * multiple
    q0, u0 = (images.shape[1] - q) // 2, (images.shape[2] - u) // 2
    return images[:, q0 : q0 + q, u0 : u0 + u]


def _candidate_spectra(
    images: torch.Tensor, geometry: ScanGeometry, shape: str, thickness: float, length: int
) -> torch.Tensor:
    """(N, length // 2): per in-plane image, the spectra of its lines degraded by the candidate, along both
    in-plane axes."""
    candidate = dataclasses.replace(geometry, profile=shape, thickness=float(thickness))
    along_u, along_q = (degrade_along_last(o.contiguous(), candidate) for o in (images, images.transpose(1, 2)))
    return line_spectra(along_u, length) + line_spectra(along_q, length)


def _through_plane_spectra(volume: torch.Tensor, geometry: ScanGeometry, side: int, length: int) -> torch.Tensor:
    """(A, length // 2): per index of the first in-plane axis, the spectra of the lines across the slices."""
    a, b = geometry.in_plane_axes
    lines = volume.permute(a, b, geometry.slice_axis)  # (A, B, Z)
    a0, b0 = max(lines.shape[0] - side, 0) // 2, max(lines.shape[1] - side, 0) // 2
    return line_spectra(lines[a0 : a0 + side, b0 : b0 + side], length)


def estimate_profile(
    volume: torch.Tensor,
    geometry: ScanGeometry,
    shapes: Sequence[str] = tuple(PROFILES),
    widths: Sequence[float] = WIDTHS,
    bootstraps: int = 200,
    seed: int = 0,
) -> ProfileEstimate:
    """The slice profile of the thick (X, Y, Z) `volume` (intensities roughly in [0, 1]) whose sampling
    `geometry` describes (its thickness and profile are ignored): candidates `shapes` x `widths` (fractions of
    the slice spacing). See the module docstring."""
    started = time.monotonic()
    spacing = geometry.spacing[geometry.slice_axis]
    images = torch.movedim(volume.float(), geometry.slice_axis, 0)  # (N, Q, U) in-plane images
    images = _crop(images, MAX_IMAGE_SIDE, geometry.scale)
    length = min(
        volume.shape[geometry.slice_axis], images.shape[1] // geometry.scale, images.shape[2] // geometry.scale
    )
    if length < 6:
        raise ValueError(f"{length} samples per line are too few to estimate a slice profile (need >= 6)")
    through = _through_plane_spectra(volume.float(), geometry, MAX_IMAGE_SIDE, length)  # (A, K)
    grid = [(shape, width * spacing) for shape in shapes for width in widths]
    candidates = torch.stack([_candidate_spectra(images, geometry, s, t, length) for s, t in grid])  # (C, N, K)
    distances = spectrum_distance(candidates.sum(1), through.sum(0)[None])  # (C,)
    best = int(distances.argmin())
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for _ in range(bootstraps):
        rows = torch.randint(through.shape[0], (through.shape[0],), generator=generator)
        imgs = torch.randint(candidates.shape[1], (candidates.shape[1],), generator=generator)
        d = spectrum_distance(candidates[:, imgs].sum(1), through[rows].sum(0)[None])
        picks.append(effective_fwhm(*grid[int(d.argmin())]))  # a pick of either shape, as the width that blurs alike
    shape, thickness = grid[best]
    per_mm = effective_fwhm(shape, 1.0)  # the interval in the estimate's own shape, holding the estimate
    low, high = (float(v) / per_mm for v in np.percentile(picks, [10, 90])) if picks else (thickness, thickness)
    low, high = min(low, thickness), max(high, thickness)
    per_shape = {s: float(min(float(d) for (g, _), d in zip(grid, distances, strict=True) if g == s)) for s in shapes}
    estimate = ProfileEstimate(shape, float(thickness), low, high, per_shape, time.monotonic() - started)
    logger.info("slice profile estimated from the scan: %s, in %.1f s", estimate.describe(), estimate.seconds)
    return estimate


def best_shape_at(volume: torch.Tensor, geometry: ScanGeometry, thickness: float) -> str:
    """The shape that matches the scan best at a known `thickness` (mm; a header's or the user's)."""
    fraction = thickness / geometry.spacing[geometry.slice_axis]
    estimate = estimate_profile(volume, geometry, widths=(fraction,), bootstraps=0)
    return min(estimate.distances, key=estimate.distances.__getitem__)


@dataclass(frozen=True)
class ProfileChoice:
    """The profile the workflow trains with, where each part came from, and the other plausible profiles the
    fallback also judges the adapted model on (`alternatives`: (shape, thickness mm))."""

    geometry: ScanGeometry
    profile_source: str  # "user" or "estimate" (or "default" when the scan is too small to estimate)
    thickness_source: str  # "user", "header", "estimate" or "default" (= the slice spacing)
    estimate: ProfileEstimate | None
    header: SliceHeader | None
    alternatives: tuple[tuple[str, float], ...]
    warnings: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            "profile": self.geometry.profile,
            "profile_source": self.profile_source,
            "thickness_mm": round(self.geometry.thickness, 4),
            "thickness_source": self.thickness_source,
            "estimate": None if self.estimate is None else self.estimate.as_dict(),
            "header": None if self.header is None else self.header.as_dict(),
            "alternatives_judged": [{"profile": s, "thickness_mm": round(t, 4)} for s, t in self.alternatives],
            "warnings": list(self.warnings),
        }


def choose_profile(
    volume: torch.Tensor,
    geometry: ScanGeometry,
    profile: str,
    thickness: float | None,
    header: SliceHeader | None,
    source: str = "scan",
) -> ProfileChoice:
    """The slice profile to train with: thickness from the user, else the header, else the scan's estimate; shape
    from the user (`profile` other than "auto"), else the estimate's (at the chosen thickness). Every disagreement
    between what was told and what the scan shows is a warning; the estimate (or the ends of its interval, when
    it was used) becomes an alternative the fallback judges the model on too.

    `volume` (X, Y, Z) normalised; `geometry` the scan's sampling (its thickness and profile are replaced)."""
    warnings: list[str] = []
    spacing = geometry.spacing[geometry.slice_axis]
    try:
        estimate: ProfileEstimate | None = estimate_profile(volume, geometry)
    except ValueError as err:
        estimate = None
        warnings.append(f"{source}: the slice profile cannot be estimated from the scan ({err})")
    if header and header.spacing_between_slices and abs(header.spacing_between_slices - spacing) > 0.05 * spacing:
        warnings.append(
            f"{source}: the header's SpacingBetweenSlices {header.spacing_between_slices:g} mm differs from the "
            f"slices' positions ({spacing:.3g} mm apart); the positions are used"
        )
    if thickness is not None:
        chosen, thickness_source = float(thickness), "user"
    elif header and header.slice_thickness:
        chosen, thickness_source = header.slice_thickness, "header"
    elif estimate is not None:
        chosen, thickness_source = estimate.thickness, "estimate"
    else:
        chosen, thickness_source = spacing, "default"
    if profile != "auto":
        shape, profile_source = profile, "user"
    elif estimate is None:
        shape, profile_source = "gaussian", "default"
    elif thickness_source == "estimate":
        shape, profile_source = estimate.shape, "estimate"
    else:
        shape, profile_source = best_shape_at(volume, geometry, chosen), "estimate"
    alternatives: list[tuple[str, float]] = []
    if estimate is not None:
        told = {"user": "given", "header": f"in the header ({header.where if header else ''})"}.get(thickness_source)
        if told and not estimate.agrees_with(shape, chosen):
            warnings.append(
                f"{source}: the slice thickness {told} is {chosen:g} mm, but the scan looks like "
                f"{estimate.describe()}; the told thickness is used, and the model must also beat cubic B-spline "
                "on the estimated profile's pairs"
            )
            alternatives.append((estimate.shape, estimate.thickness))
        if thickness_source == "estimate":
            alternatives += [(shape, t) for t in (estimate.low, estimate.high) if abs(t - chosen) > 0.05 * chosen]
    decided = dataclasses.replace(geometry, profile=shape, thickness=float(chosen))
    return ProfileChoice(
        decided, profile_source, thickness_source, estimate, header, tuple(alternatives), tuple(warnings)
    )
