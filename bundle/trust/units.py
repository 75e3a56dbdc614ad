"""The trust summary in the units of the maps beside it, and an SR that stays non-negative when its input is.

`TrustSummaryd` measures in the network's normalised [0, 1] intensities, while the uncertainty and consistency
maps are written in the input's own intensity units (after `RestoreIntensityd`). A summary whose mean
uncertainty is 0.2 next to a map whose mean is 2546 reads as a contradiction; `SummaryInInputUnitsd` rescales
the intensity-valued fields by the same factor as the maps and says so in the file (`units`), keeping the
normalised values under `normalised` for comparison across scans.

`NonNegatived`: magnitude MR images are never negative, but a network (and the sliding-window blend) can
undershoot near sharp edges and in air; a clinic's tools then see negative intensities that the scanner cannot
produce. With `mode="auto"` the SR is clamped at 0 where the input's minimum is >= 0 (and left alone for inputs
that hold negative values, e.g. phase or difference images); "always" / "never" force either. Under consistency
"project", "auto" does not clamp: the projected output reproduces the input exactly when degraded again, and a
clamp would undo that. `nonnegative_applies` is that rule, the one inference (`NonNegatived`) and per-scan
adaptation call.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.data.transforms import INTENSITY_RANGE_KEY

__all__ = [
    "INTENSITY_FIELDS",
    "SummaryInInputUnitsd",
    "RecordInputMind",
    "NonNegatived",
    "NONNEGATIVE_MODES",
    "nonnegative_applies",
    "INPUT_MIN_KEY",
]

# summary fields that are intensities or intensity differences (they scale with the input, without offset)
INTENSITY_FIELDS = ("consistency_residual_mean", "tta_std_mean", "calibrated_uncertainty_mean")
NONNEGATIVE_MODES = ("auto", "always", "never")
INPUT_MIN_KEY = "sr_input_min"
UNITS = "input intensity units (the scale of the input scan and of the written maps)"


class SummaryInInputUnitsd(MapTransform):
    """Rescale the intensity fields of the summary under `keys` to the input's units, as the maps are.

    Reads the robust range (low, high) that `RobustNormalised` stored on `ref_key`'s meta data; one channel's
    range per summary (multi-channel inputs use the mean span). Adds "units", "intensity_range" (per channel, the
    input's intensities at the lower and upper percentile: not its minimum and maximum) and
    "intensity_range_percentiles" (those two percentiles, `percentiles`: the normaliser's `lower`/`upper`, the
    configs' `intensity_percentiles`, 0.5 and 99.5 by default); the values as measured stay under "normalised".
    Without a recorded range the summary says its units are normalised.
    """

    def __init__(
        self,
        keys: KeysCollection = "trust",
        ref_key: str = "image",
        allow_missing_keys: bool = True,
        percentiles: tuple[float, float] | list[float] = (0.5, 99.5),
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        if len(percentiles) != 2 or not 0 <= float(percentiles[0]) < float(percentiles[1]) <= 100:
            raise ValueError(f"percentiles must be two values 0 <= lower < upper <= 100, got {percentiles}")
        self.percentiles = [float(percentiles[0]), float(percentiles[1])]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ranges = getattr(d.get(self.ref_key), "meta", {}).get(INTENSITY_RANGE_KEY)
        for key in self.key_iterator(d):
            summary = dict(d[key])
            if not ranges:
                summary["units"] = "normalised [0, 1] intensities (no intensity range was recorded)"
                d[key] = summary
                continue
            span = sum(float(h) - float(lo) for lo, h in ranges) / len(ranges)
            summary["normalised"] = {f: summary.get(f) for f in INTENSITY_FIELDS}
            for field in INTENSITY_FIELDS:
                if summary.get(field) is not None:
                    summary[field] = float(summary[field]) * span
            summary["units"] = UNITS
            summary["intensity_range"] = [[float(lo), float(h)] for lo, h in ranges]
            summary["intensity_range_percentiles"] = list(self.percentiles)  # what intensity_range's two ends are
            d[key] = summary
        return d


class RecordInputMind(MapTransform):
    """Store the input's minimum (before normalisation) in its meta data for `NonNegatived`."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if hasattr(img, "meta"):
                img.meta[INPUT_MIN_KEY] = float(torch.as_tensor(img).min())
        return d


def nonnegative_applies(
    mode: str, input_min: float | None = None, ranges: list | None = None, consistency: str | None = None
) -> bool:
    """Whether an SR (in input units) is clamped at 0 under `mode` ("auto", "always", "never").

    "auto" clamps when the input's minimum (`input_min`, before normalisation) is >= 0, or without it when every
    channel's lower percentile (`ranges`, (low, high) per channel) is >= 0; never under consistency "project".
    """
    if mode not in NONNEGATIVE_MODES:
        raise ValueError(f"nonnegative must be one of {NONNEGATIVE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "always"
    if consistency == "project":
        return False
    if input_min is not None:
        return float(input_min) >= 0
    return bool(ranges) and min(float(r[0]) for r in ranges or ()) >= 0


class NonNegatived(MapTransform):
    """Clamp `keys` (SR, in input units) at 0 when the input had no negative value (`mode="auto"`, not under
    `consistency` "project"; `nonnegative_applies`).

    The input minimum comes from `ref_key`'s meta data (`RecordInputMind`, before normalisation), else from the
    recorded intensity range's lower percentile (a lower bound is not available then, so "auto" clamps only
    when that percentile is >= 0).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        ref_key: str = "image",
        mode: str = "auto",
        allow_missing_keys=False,
        consistency: str | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        nonnegative_applies(mode)  # refuses an unknown mode here, not at the first volume
        self.ref_key, self.mode, self.consistency = ref_key, mode, consistency

    def _applies(self, ref: Any) -> bool:
        meta = getattr(ref, "meta", {})
        return nonnegative_applies(self.mode, meta.get(INPUT_MIN_KEY), meta.get(INTENSITY_RANGE_KEY), self.consistency)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self._applies(d.get(self.ref_key)):
            return d
        for key in self.key_iterator(d):
            d[key] = d[key].clamp_min(0)
        return d
