"""The peer benchmark's thick-slice acquisitions: slice profile along one axis, then one sample per slab.

Its own maths rather than `bundle.data.operators`: the benchmark simulates non-integer factors (4.5: slabs that
start inside a thin voxel), which the bundle's operators (integer factors) cannot, and its Gaussian profile drops the
part beyond the volume's ends and renormalises where the bundle's folds it back by reflection. For integer factors
the box profile is the bundle's "area" operator exactly and the Gaussian its "gaussian" operator to 1e-5 away from
the ends (the first and last two slabs differ by up to 0.06 per weight; tests/evaluation/test_peers.py checks both),
so the published peer results stay as measured. A setting may also give the profile a width other than the slice
spacing (`gaussian_t3_x5`: FWHM 3 thin voxels, one sample every 5), as clinical 2-D protocols with a gap do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy.special import ndtr

from bundle.core.atomic import replace_atomically
from bundle.core.geometry import low_resolution_affine

PROFILES = ("gaussian", "box")
FACTORS = (4, 5, 4.5)


def setting_name(profile: str, factor: float, thickness: float | None = None) -> str:
    """One folder per simulated acquisition: 'gaussian_x4', 'box_x4.5' (profile as wide as the slice spacing), or
    with a thickness 'gaussian_t3_x5' (FWHM 3 thin voxels, one sample every 5: a 2-mm gap between 3-mm slices)."""
    return f"{profile}_x{factor:g}" if thickness is None else f"{profile}_t{thickness:g}_x{factor:g}"


SETTING_PATTERN = re.compile(r"(?P<profile>[a-z]+)(?:_t(?P<thickness>[0-9.eE+-]+))?_x(?P<factor>[0-9.eE+-]+)")


def parse_setting(name: str) -> tuple[str, float, float | None]:
    """Inverse of `setting_name`: (profile, factor, thickness or None for 'as wide as the spacing'), with one clear
    line for a bad name."""
    match = SETTING_PATTERN.fullmatch(name)
    profile, factor, thickness = "", float("nan"), None
    try:
        if match:
            profile, factor = match["profile"], float(match["factor"])
            thickness = None if match["thickness"] is None else float(match["thickness"])
    except ValueError:
        factor = float("nan")
    if profile not in PROFILES or not factor > 1 or not (thickness is None or thickness > 0):
        raise SystemExit(
            f"--settings: {name!r} is not <profile>_x<factor> or <profile>_t<thickness>_x<factor> with profile in "
            f"{PROFILES}, factor > 1, thickness > 0 (thin voxels)"
        )
    return profile, factor, thickness


def thick_count(n_thin: int, factor: float) -> int:
    """Most thick slices m with m * factor whole and at most `n_thin` (factor 4.5: m even)."""
    m = int(math.floor(n_thin / factor + 1e-9))
    while m > 0 and abs(m * factor - round(m * factor)) > 1e-6:
        m -= 1
    if m < 2:
        raise ValueError(f"{n_thin} thin slices give fewer than two thick slices at factor {factor}")
    return m


def slice_weights(n_thin: int, factor: float, profile: str, thickness: float | None = None) -> np.ndarray:
    """Weights (m, n_thin) of each thin voxel in each thick slice; rows sum to 1.

    Thin voxel j spans [j, j + 1) along the axis; thick slice k is sampled every f thin voxels, its profile centred
    on c = (k + 1/2) f with width t = `thickness` (None: t = f, the slab [k f, (k + 1) f) itself; t < f leaves a
    gap between slices, as a clinical 3 mm every 5 mm). 'box': the fraction of each thin voxel inside
    [c - t/2, c + t/2], over the total. 'gaussian': a Gaussian of FWHM t (sigma = t / (2 sqrt(2 ln 2))) centred on
    c, integrated over each thin voxel; the part of it beyond the volume's ends is dropped and the row renormalised
    (so a constant stays constant at the edges).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    width = float(factor if thickness is None else thickness)
    if not width > 0:
        raise ValueError(f"slice thickness must be > 0 thin voxels, got {thickness}")
    m = thick_count(n_thin, factor)
    edges = np.arange(n_thin + 1, dtype=np.float64)  # thin voxel boundaries
    slab = np.arange(m, dtype=np.float64)[:, None] * factor
    if profile == "box":
        lo = slab + (factor - width) / 2  # = the slab's start when the width is the factor
        w = np.clip(np.minimum(edges[None, 1:], lo + width) - np.maximum(edges[None, :-1], lo), 0, None)
    else:
        sigma = width / (2 * math.sqrt(2 * math.log(2)))
        cdf = ndtr((edges[None, :] - (slab + factor / 2)) / sigma)
        w = cdf[:, 1:] - cdf[:, :-1]
    return w / w.sum(axis=1, keepdims=True)


def simulate_thick(
    hr: np.ndarray, axis: int, factor: float, profile: str, thickness: float | None = None
) -> np.ndarray:
    """A thick-slice acquisition of `hr` (X, Y, Z) along `axis`: slice profile of width `thickness` thin voxels
    (None: `factor`), then one sample every `factor` thin voxels.

    `hr`'s length along `axis` must already be m * factor (see `crop_to_factor`); returns float32 of that shape
    with m in place of it.
    """
    n = hr.shape[axis]
    weights = slice_weights(n, factor, profile, thickness)
    if abs(weights.shape[0] * factor - n) > 1e-6:
        raise ValueError(f"length {n} along axis {axis} is not a whole number of slabs of {factor}: crop it first")
    out = np.tensordot(weights, np.moveaxis(hr.astype(np.float64), axis, 0), axes=(1, 0))
    return np.moveaxis(out, 0, axis).astype(np.float32)


def crop_to_factor(n_thin: int, factor: float) -> tuple[int, int]:
    """(start, length): the centred run of thin slices that is a whole number of slabs."""
    length = int(round(thick_count(n_thin, factor) * factor))
    return (n_thin - length) // 2, length


def thick_affine(hr_affine: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Affine of the thick grid over the same slab extent as the (cropped) HR grid: spacing x factor along `axis`,
    origin at the centre of the first slab's thin voxels (voxel index k -> thin index f k + (f - 1) / 2)."""
    scale: list = [1.0, 1.0, 1.0]  # a whole or fractional factor
    scale[axis] = float(factor)
    return low_resolution_affine(torch.as_tensor(hr_affine, dtype=torch.float64), scale).numpy()


def crop_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of a crop starting at voxel `start`."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out


def superior_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs closest to the superior-inferior direction (an axial acquisition's slice axis)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    return int(np.argmax(np.abs(directions[2])))


def load_nifti(path: str | Path) -> Any:
    """nibabel's image of `path` (a NIfTI: `.affine`, `.dataobj`, `.header.get_zooms()`)."""
    return nib.load(str(path))


def save_nifti_atomic(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """nibabel save to a temporary sibling, then rename: never a half-written volume."""
    img = nib.Nifti1Image(np.asarray(arr, dtype=np.float32), affine)
    replace_atomically(path, lambda tmp: nib.save(img, tmp), keep_suffix=True)


def foreground_box(
    arr: np.ndarray,
    spacing: Sequence[float],
    max_extent_mm: float | None = None,
    margin: int = 4,
    fraction: float = 0.1,
) -> tuple[slice, ...]:
    """Bounding box of voxels above `fraction` of the 99.5th percentile, plus `margin` (the head without the air),
    then at most `max_extent_mm` per axis around its centre (keeps a run on 2 CPU cores within minutes)."""
    mask = arr > fraction * np.percentile(arr, 99.5)
    if not mask.any():
        return tuple(slice(0, n) for n in arr.shape)
    box = []
    for i, n, mm in zip(np.nonzero(mask), arr.shape, spacing, strict=True):
        lo, hi = max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n)
        if max_extent_mm is not None and (hi - lo) * mm > max_extent_mm:
            keep = int(max_extent_mm / mm)
            lo = (lo + hi - keep) // 2
            hi = lo + keep
        box.append(slice(lo, hi))
    return tuple(box)
