"""Extreme voxels at inference: clip a few, refuse a volume that they dominate, record what was clipped.

Training maps intensities to [0, 1] by the 0.5/99.5 percentiles and clips, so a spike never reaches the network.
Inference does not clip at 1 (bright FLAIR lesions above the upper percentile must survive), and so two voxels
at 1e30 (a corrupted slice, a scaling mistake in a conversion) went through the network and every output voxel
came out beyond 5e8. Here, after the percentile scaling, a voxel further than `bound` percentile ranges outside
[0, 1] (by default below -3 or above 4, i.e. 3x the 0.5-99.5 range beyond either percentile) is clamped to that
limit and counted. Real MR intensities stay far inside it; a lesion at twice the upper percentile is at ~2.

At most 1% of a volume lies outside its own 0.5/99.5 percentiles, so clipping alone cannot meet a volume with
more extreme voxels than that: its upper percentile is itself extreme and every ordinary voxel maps to ~0. Such a
volume is recognised by its spread: fewer than `min_spread` of its voxels lie between 0.1% and 100% of the
percentile range (a real scan's tissue, and even its background noise, fills that band). It is refused with one
line naming the file. The count, the fraction and the limits
(in the input's own intensity units) go into the image's meta data under `OUTLIER_KEY` (as JSON text, which
survives MONAI's collation unchanged), and from there into the trust summary (`<name>_sr.json`, "input_outliers").

`robust_normalise` is the one normalisation every stage calls: inference's `RobustNormalised` (a thin MONAI wrapper)
and per-scan adaptation, so both scale by the same percentiles and both apply the guard above.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

__all__ = [
    "OUTLIER_BOUND",
    "MIN_SPREAD",
    "OUTLIER_KEY",
    "clip_outliers",
    "input_outliers_summary",
    "robust_normalise",
    "robust_range",
]

OUTLIER_BOUND = 3.0
MIN_SPREAD = 0.01
OUTLIER_KEY = "sr_input_outliers"

logger = logging.getLogger(__name__)
_warned: set[tuple[str, int]] = set()


def robust_range(channel: torch.Tensor, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """(low, high): one channel's `lower` and `upper` percentiles (high at least low + 1e-6)."""
    flat = channel.flatten().float()
    if flat.numel() > 4_000_000:  # quantile on a strided subsample: same answer, bounded memory
        flat = flat[:: flat.numel() // 2_000_000 + 1]
    low, high = (float(v) for v in torch.quantile(flat, torch.tensor([lower, upper]) / 100.0))
    return low, max(high, low + 1e-6)


def robust_normalise(
    volume: torch.Tensor,
    name: str,
    lower: float = 0.5,
    upper: float = 99.5,
    clip: bool = False,
    outlier_bound: float | None = OUTLIER_BOUND,
    min_spread: float = MIN_SPREAD,
) -> tuple[torch.Tensor, list[tuple[float, float]], dict[str, Any] | None]:
    """Scale each channel of `volume` (C, X, Y, Z) so that its (lower, upper) percentiles are 0 and 1.

    `clip` (training) clamps to [0, 1]; without it (inference, adaptation) the outlier guard `clip_outliers`
    clamps voxels beyond `outlier_bound` ranges and refuses a volume that extreme values dominate (None: no guard).

    Returns:
        (the scaled volume, per channel (low, high) in the input's units, the guard's record or None).

    Raises:
        ValueError: `<name>: ...` from the guard.
    """
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    arr = torch.as_tensor(volume).float()
    ranges = [robust_range(channel, lower, upper) for channel in arr]  # per channel: modalities differ in scale
    low = torch.tensor([lo for lo, _ in ranges]).view(-1, *([1] * (arr.dim() - 1)))
    high = torch.tensor([hi for _, hi in ranges]).view_as(low)
    out = (arr - low) / (high - low)
    if clip:
        return out.clamp(0.0, 1.0), ranges, None
    if outlier_bound is None:
        return out, ranges, None
    out, outliers = clip_outliers(out, ranges, name, outlier_bound, min_spread)
    return out, ranges, outliers


def clip_outliers(
    normalised: torch.Tensor,
    ranges: list[tuple[float, float]],
    name: str,
    bound: float = OUTLIER_BOUND,
    min_spread: float = MIN_SPREAD,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Clamp a percentile-scaled volume to [-bound, 1 + bound] and describe what was clamped.

    Args:
        normalised: (C, X, Y, Z), intensities scaled so that each channel's (low, high) percentiles are 0 and 1.
        ranges: per channel (low, high), the percentiles in the input's units (to report the limits in them).
        name: the input file, for the messages.
        bound: how many percentile ranges beyond either percentile a voxel may lie.
        min_spread: below this fraction of each channel's voxels in [0.001, 1) the volume is refused.

    Returns:
        (the clamped volume (C, X, Y, Z), {"clipped_voxels", "fraction", "limits"}).

    Raises:
        ValueError: `<name>: ...` when a channel's percentile range is set by extreme values.
    """
    low, high = -float(bound), 1.0 + float(bound)
    outside = (normalised < low) | (normalised > high)
    count = int(outside.sum())
    fraction = count / max(normalised.numel(), 1)
    limits = [[lo + low * (hi - lo), lo + high * (hi - lo)] for lo, hi in ranges]
    record = {"clipped_voxels": count, "fraction": fraction, "limits": limits, "bound": float(bound)}
    for channel, (lo, hi) in zip(normalised, ranges, strict=True):
        spread = float(((channel >= 1e-3) & (channel < 1.0)).float().mean())
        if spread < min_spread:
            raise ValueError(
                f"{name}: its intensity range [{lo:.4g}, {hi:.4g}] (0.5-99.5 percentiles) is set by extreme values: "
                f"only {100 * spread:.2g}% of the voxels lie within it above 0.1% of it (a corrupted slice or a "
                "scaling mistake?); check the file"
            )
    if count:
        if (name, count) not in _warned:
            _warned.add((name, count))
            logger.warning(
                "%s: %d extreme voxel(s) beyond %s clipped to that range before inference (recorded in the "
                "trust summary)",
                name,
                count,
                limits_text(limits),
            )
        normalised = normalised.clamp(low, high)
    return normalised, record


def limits_text(limits: list[list[float]]) -> str:
    return "; ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in limits)


def input_outliers_summary(image: Any) -> dict[str, Any]:
    """{"input_outliers": record} for the trust summary from an input's meta data ({} when nothing was checked)."""
    meta = getattr(image, "meta", None) or {}
    record = meta.get(OUTLIER_KEY)
    if isinstance(record, (list, tuple)) and len(record) == 1:  # still batched
        record = record[0]
    return {"input_outliers": json.loads(record)} if isinstance(record, str) else {}
