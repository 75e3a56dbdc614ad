"""Dictionary transforms that MONAI lacks for super-resolution: input checks, intensity range, paired crops, SR grid.

The LR simulation lives in `bundle.data.degradation`."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.transforms.traits import MultiSampleTrait

from bundle.core.choices import FOREGROUND_THRESHOLD
from bundle.core.geometry import ensure_scale3, super_resolution_affine
from bundle.data.robust_intensity import MIN_SPREAD, OUTLIER_BOUND, OUTLIER_KEY, robust_normalise

__all__ = [
    "RandPairedCropSamplesd",
    "SelectChanneld",
    "CheckVolumed",
    "RobustNormalised",
    "RestoreIntensityd",
    "SuperResolutionAffined",
    "source_name",
]

INTENSITY_RANGE_KEY = "sr_intensity_range"


def source_name(img: Any) -> str:
    """The file a volume came from, for error messages ('<in memory>' when unknown)."""
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else "<in memory>"


class SelectChanneld(MapTransform):
    """Keep one channel (e.g. FLAIR = 0 in MSD Task01) of a channel-first volume; "all" (or None) keeps every one."""

    def __init__(self, keys: KeysCollection, channel: int | str | None = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channel is not None and channel != "all" and not str(channel).lstrip("-").isdigit():
            raise ValueError(f"channel must be an index or 'all', got {channel!r}")
        # "all" as well as None: the bundle runner drops overrides whose value is None
        self.channel = None if channel in (None, "all") else int(channel)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.channel is None:  # keep every channel (inference super-resolves each)
            return d
        for key in self.key_iterator(d):
            img = d[key]
            if not 0 <= self.channel < img.shape[0]:
                raise ValueError(
                    f"{source_name(img)}: channel {self.channel} requested but the volume has {img.shape[0]} channel(s)"
                )
            d[key] = img[self.channel : self.channel + 1]
        return d


class CheckVolumed(MapTransform):
    """Stop with one clear message naming the file when a volume cannot be super-resolved.

    Checks: channel-first 3D (4-D array), finite values, not constant, and at least `min_size` voxels per axis.
    """

    def __init__(self, keys: KeysCollection, min_size: Sequence[int] | int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_size = ensure_scale3(min_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_volume(d[key], self.min_size)
        return d


def check_volume(img: Any, min_size: Sequence[int] = (1, 1, 1), name: str | None = None) -> None:
    """Raise ValueError naming the volume (`name`, else the file it came from) when it cannot be super-resolved."""
    name = name or source_name(img)
    if img.ndim != 4:
        raise ValueError(
            f"{name}: expected a 3D volume (channel, x, y, z); got {img.ndim - 1} spatial dimension(s), "
            f"shape {list(img.shape[1:])}"
        )
    arr = torch.as_tensor(img)
    if not torch.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if float(arr.max()) == float(arr.min()):
        raise ValueError(f"{name}: is constant ({float(arr.max())}); there is nothing to super-resolve")
    small = [f"{n} < {m}" for n, m in zip(img.shape[1:], min_size, strict=True) if n < m]
    if small:
        raise ValueError(f"{name}: volume {list(img.shape[1:])} is smaller than required {list(min_size)} ({small})")


def _range_tensors(ranges) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) pairs as two (C, 1, 1, 1) tensors that broadcast over a volume."""
    low = torch.tensor([float(r[0]) for r in ranges]).view(-1, 1, 1, 1)
    high = torch.tensor([float(r[1]) for r in ranges]).view(-1, 1, 1, 1)
    return low, high


class RobustNormalised(MapTransform):
    """Map intensities to [0, 1] by robust percentiles and remember the range so it can be restored.

    Like MONAI's ScaleIntensityRangePercentilesd, but it records (low, high) in the image's meta data under
    `sr_intensity_range` (one pair per channel), which `RestoreIntensityd` reads after inference. Inference
    turns `clip` off so that intensities above the upper percentile (bright lesions in FLAIR) survive; then
    voxels more than `outlier_bound` percentile ranges outside [0, 1] are clamped and counted, and a volume whose
    percentile range extreme voxels set is refused (`min_spread`, see `bundle.data.robust_intensity`; None turns
    this off).
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        clip: bool = True,
        allow_missing_keys: bool = False,
        outlier_bound: float | None = OUTLIER_BOUND,
        min_spread: float = MIN_SPREAD,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        if outlier_bound is not None and not outlier_bound > 0:
            raise ValueError(f"outlier_bound must be > 0 or None, got {outlier_bound}")
        self.lower, self.upper, self.clip = lower, upper, clip
        self.outlier_bound, self.min_spread = outlier_bound, min_spread

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            out, ranges, outliers = robust_normalise(
                img, source_name(img), self.lower, self.upper, self.clip, self.outlier_bound, self.min_spread
            )
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=dict(img.meta))
                out.meta[INTENSITY_RANGE_KEY] = ranges
                if outliers is not None:
                    out.meta[OUTLIER_KEY] = json.dumps(outliers)
            d[key] = out
        return d


class RestoreIntensityd(MapTransform):
    """Undo `RobustNormalised` on `keys` using the range recorded on `ref_key`'s meta data.

    offset=False only rescales: for spreads and differences (uncertainty, consistency residual), which have no
    zero point to move.
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "image", offset: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key, self.offset = ref_key, offset

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = getattr(d[self.ref_key], "meta", {})
        if INTENSITY_RANGE_KEY not in meta:
            return d
        low, high = _range_tensors(meta[INTENSITY_RANGE_KEY])
        for key in self.key_iterator(d):
            d[key] = d[key] * (high - low).to(d[key].device) + (low.to(d[key].device) if self.offset else 0.0)
        return d


class SuperResolutionAffined(MapTransform):
    """Give the network output the affine of the `scale`-times finer grid over the input's extent.

    MONAI keeps the LR affine on the SR output; saved as is, the SR volume would be 4x too large in a viewer.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        scale: int | Sequence[int] = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.scale = ensure_scale3(scale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        affine = super_resolution_affine(ref.affine, self.scale)
        for key in self.key_iterator(d):
            meta = {k: v for k, v in getattr(ref, "meta", {}).items() if k != "affine"}
            meta["original_affine"] = affine
            meta["spatial_shape"] = np.asarray(d[key].shape[1:])
            d[key] = MetaTensor(torch.as_tensor(d[key]), affine=affine, meta=meta)
        return d


class RandPairedCropSamplesd(Randomizable, MapTransform, MultiSampleTrait):
    """Crop `num_samples` aligned (LR, HR) patch pairs from one volume pair.

    The LR patch has `lr_roi_size`; the HR patch is the same physical region, `scale` times larger.
    With probability `foreground_prob` a patch is centred on a random LR voxel brighter than
    `foreground_threshold` (brain rather than air).
    """

    def __init__(
        self,
        lr_key: str = "lr",
        hr_key: str = "image",
        lr_roi_size: Sequence[int] = (30, 30, 20),
        scale: int | Sequence[int] = 4,
        num_samples: int = 8,
        foreground_prob: float = 0.5,
        foreground_threshold: float = FOREGROUND_THRESHOLD,
    ) -> None:
        MapTransform.__init__(self, [lr_key, hr_key])
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"foreground_prob must be in [0, 1], got {foreground_prob}")
        self.lr_key, self.hr_key = lr_key, hr_key
        self.lr_roi_size = ensure_scale3(tuple(lr_roi_size))
        self.scale = ensure_scale3(scale)
        self.num_samples = num_samples
        self.foreground_prob = foreground_prob
        self.foreground_threshold = foreground_threshold
        self._starts: list[tuple[int, int, int]] = []

    def randomize(self, lr: torch.Tensor) -> None:
        spatial = lr.shape[1:]
        if any(n < r for n, r in zip(spatial, self.lr_roi_size, strict=True)):
            raise ValueError(
                f"{source_name(lr)}: LR volume {list(spatial)} is smaller than the LR patch {list(self.lr_roi_size)}"
            )
        high = [n - r for n, r in zip(spatial, self.lr_roi_size, strict=True)]
        fg = None
        if self.foreground_prob > 0:
            fg = torch.nonzero(torch.as_tensor(lr)[0] > self.foreground_threshold)
        self._starts = []
        for _ in range(self.num_samples):
            if fg is not None and len(fg) and self.R.rand() < self.foreground_prob:
                centre = fg[self.R.randint(len(fg))].tolist()
                start = [min(max(c - r // 2, 0), h) for c, r, h in zip(centre, self.lr_roi_size, high, strict=True)]
            else:
                start = [self.R.randint(h + 1) for h in high]
            self._starts.append(tuple(int(s) for s in start))  # type: ignore[arg-type]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        lr, hr = d[self.lr_key], d[self.hr_key]
        expected = [n * s for n, s in zip(lr.shape[1:], self.scale, strict=True)]
        if list(hr.shape[1:]) != expected:
            raise ValueError(
                f"{source_name(hr)}: HR size {list(hr.shape[1:])} is not scale x LR size {list(lr.shape[1:])}"
            )
        self.randomize(lr)
        samples = []
        for start in self._starts:
            lr_sl = tuple(slice(s, s + r) for s, r in zip(start, self.lr_roi_size, strict=True))
            hr_sl = tuple(
                slice(s * k, (s + r) * k) for s, r, k in zip(start, self.lr_roi_size, self.scale, strict=True)
            )
            sample = dict(d)
            sample[self.lr_key] = torch.as_tensor(lr)[(slice(None),) + lr_sl].clone()
            sample[self.hr_key] = torch.as_tensor(hr)[(slice(None),) + hr_sl].clone()
            samples.append(sample)
        return samples
