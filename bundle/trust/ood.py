"""An out-of-distribution warning with a measured threshold: does the calibrated bound still hold on this scan?

The calibrated uncertainty promises that `coverage_target` of the foreground voxels have |SR - HR| within the
bound, on scans like the validation scans. On another contrast, noise level or blur the promise breaks, and the
user cannot check it (there is no HR). What inference can see without HR: the fraction of foreground voxels whose
data-consistency residual |D(SR) - LR| exceeds the bound, and the mean residual. This module learns, on the
validation volumes under controlled distribution shifts (contrast inversion, gamma, noise, blur), the
thresholds on those two numbers that best separate volumes whose measured coverage fell more than `margin`
below the target from volumes where it did not; calibration stores them with lambda, inference warns with them,
and the evaluation reports how often the warning fires on held-out volumes (that set no threshold).

Volumes are (1, C, X, Y, Z) tensors in normalised [0, 1] intensities; the LR grid is `scale` times coarser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bundle.core.choices import FOREGROUND_THRESHOLD
from bundle.data.degradation import evaluation_lr
from bundle.trust.record import CalibrationRecord, calibrated_uncertainty
from bundle.trust.summary import foreground_mask
from bundle.trust.tta import tta_predict

__all__ = [
    "SHIFTS",
    "OOD_MARGIN",
    "apply_shift",
    "VolumeTrust",
    "measure_volume",
    "shifted_pairs",
    "fit_ood_thresholds",
    "warning_fires",
    "warning_rates",
]

OOD_MARGIN = 0.05  # a volume counts as out of distribution when its coverage is > 5 points below the target
# distribution shifts applied to a validation HR volume: contrast the model never saw, noise, blur
SHIFTS = ("none", "invert", "gamma0.5", "gamma2", "noise0.08", "blur2")


def apply_shift(hr: torch.Tensor, shift: str, seed: int = 0, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """A shifted copy of `hr` (1, C, X, Y, Z) in [0, 1]; the background (<= threshold) stays background.

    "invert": 1 - x inside the head (a T2-like contrast); "gammaG": x ** G; "noiseS": Rician noise of std S;
    "blurS": Gaussian blur of sigma S voxels on the HR grid (a softer scan than any training degradation).
    """
    x = hr.float()
    head = x > threshold
    if shift == "none":
        return x
    if shift == "invert":
        return torch.where(head, (1.0 - x).clamp_min(threshold * 2), x)
    if shift.startswith("gamma"):
        return x.clamp(0, 1) ** float(shift[5:])
    if shift.startswith("noise"):
        g = torch.Generator().manual_seed(seed)
        sigma = float(shift[5:])
        n1, n2 = (torch.randn(x.shape, generator=g) * sigma for _ in range(2))
        return torch.sqrt((x + n1.to(x.device)) ** 2 + n2.to(x.device) ** 2)
    if shift.startswith("blur"):
        sigma = float(shift[4:])
        radius = int(math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        out = x.reshape(-1, 1, *x.shape[2:])
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = k.numel()
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            out = F.conv3d(F.pad(out, pad, mode="replicate"), k.reshape(shape))
        return out.reshape(x.shape)
    raise ValueError(f"unknown shift {shift!r}; choose from {SHIFTS}")


@dataclass
class VolumeTrust:
    """What one (volume, shift, degradation) gave: the measured coverage (needs HR) and the two HR-free numbers
    the warning looks at (fraction of foreground voxels whose residual exceeds the bound; mean residual)."""

    case: str
    shift: str
    degradation: str
    coverage: float
    fraction_above_bound: float
    residual_mean: float

    def low_coverage(self, target: float, margin: float = OOD_MARGIN) -> bool:
        return self.coverage < target - margin


@torch.no_grad()
def measure_volume(
    hr: torch.Tensor,
    lr: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    consistency: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    calibration: CalibrationRecord,
    scale: Sequence[int],
    passes: int,
    foreground_threshold: float = FOREGROUND_THRESHOLD,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, float, float]:
    """(coverage, fraction_above_bound, residual_mean) of one volume: HR (1, C, sX, sY, sZ), LR (1, C, X, Y, Z).

    `consistency`: (SR, LR) -> (what inference writes, |D(SR) - LR|), its consistency step in one run
    (`bundle.trust.consistency.ConsistencyStep.output_and_residual`); coverage is of the first, the residual of the
    SR before it, as inference has them. The foreground is output > threshold, as inference has it (inference has
    no HR)."""
    res = tta_predict(lr, predict, scale, passes)
    sr = (res.single if calibration.sr_output == "single" else res.mean).to(hr.device)
    bound = calibrated_uncertainty(res.std.to(hr.device), calibration)
    sr, residual = consistency(sr, lr.to(sr.device))
    sr, residual = sr.to(hr.device), residual.to(hr.device).abs()
    mask = foreground_mask(sr, foreground_threshold)
    n = max(int(mask.sum()), 1)
    covered = float(((sr - hr).abs() <= bound)[mask].sum()) / n
    above = float((residual > bound)[mask].sum()) / n
    return covered, above, float(residual[mask].sum()) / n


def shifted_pairs(
    items: Iterable[tuple[str, torch.Tensor]], shifts: Sequence[str], lr_methods: Sequence[str], scale: Sequence[int]
) -> Iterable[tuple[str, str, str, torch.Tensor, torch.Tensor]]:
    """(case, shift, degradation, HR, LR) for every HR (1, C, ...) in `items`, shift and degradation."""
    for case, hr in items:
        for shift in shifts:
            shifted = apply_shift(hr, shift)
            for method in lr_methods:
                yield case, shift, method, shifted, evaluation_lr(shifted[0], scale, method, case)[None]


def warning_fires(fraction_above_bound: float | None, residual_mean: float | None, record: CalibrationRecord) -> bool:
    """The measured rule: fires when either number exceeds its threshold in `record` (None: that test unused)."""
    f_thr, r_thr = record.ood_fraction_threshold, record.ood_residual_threshold
    by_fraction = f_thr is not None and fraction_above_bound is not None and fraction_above_bound > f_thr
    by_residual = r_thr is not None and residual_mean is not None and residual_mean > r_thr
    return by_fraction or by_residual


def _candidates(values: list[float]) -> list[float]:
    """Thresholds between consecutive distinct values, plus one above all (a test that never fires)."""
    v = sorted(set(values))
    return [(a + b) / 2 for a, b in zip(v, v[1:], strict=False)] + [v[-1] + 1.0 if v else math.inf]


def fit_ood_thresholds(rows: Sequence[VolumeTrust], target: float, margin: float = OOD_MARGIN) -> dict:
    """Thresholds (fraction_above_bound, residual_mean) maximising balanced accuracy on `rows`.

    Balanced accuracy = (rate the rule fires on low-coverage rows + rate it stays quiet on the others) / 2; among
    equals, the rule with the fewest false alarms, then the highest thresholds. Returns the thresholds (None for a
    test that never helps) and the rates on `rows`; without both kinds of rows there is nothing to separate and
    both thresholds are None.
    """
    low = [r.low_coverage(target, margin) for r in rows]
    result: dict[str, Any] = {
        "rows": len(rows),
        "low_coverage_rows": sum(low),
        "fraction_threshold": None,
        "residual_threshold": None,
    }
    if not any(low) or all(low):
        result["reason"] = "the tuning volumes are all of one kind; no threshold can be fitted"
        return result
    best: tuple | None = None
    for f_thr in _candidates([r.fraction_above_bound for r in rows]):
        for r_thr in _candidates([r.residual_mean for r in rows]):
            fires = [r.fraction_above_bound > f_thr or r.residual_mean > r_thr for r in rows]
            tpr = sum(f and lo for f, lo in zip(fires, low, strict=True)) / sum(low)
            false_alarms = sum(f and not lo for f, lo in zip(fires, low, strict=True))
            tnr = 1 - false_alarms / (len(rows) - sum(low))
            key = ((tpr + tnr) / 2, -false_alarms, f_thr, r_thr)
            if best is None or key > best[0]:
                best = (key, f_thr, r_thr, tpr, tnr)
    assert best is not None  # both kinds of rows: at least one candidate pair
    _, f_thr, r_thr, tpr, tnr = best
    never_f = f_thr > max(r.fraction_above_bound for r in rows)
    never_r = r_thr > max(r.residual_mean for r in rows)
    result.update(
        fraction_threshold=None if never_f else f_thr,
        residual_threshold=None if never_r else r_thr,
        fires_on_low_coverage=tpr,
        quiet_on_in_distribution=tnr,
    )
    return result


def warning_rates(rows: Sequence[VolumeTrust], record: CalibrationRecord, margin: float = OOD_MARGIN) -> dict:
    """How the stored rule does on `rows` (held-out volumes): the fraction of low-coverage volumes it fires on
    and the fraction of the others it fires on (false alarms), with counts."""
    low = [r for r in rows if r.low_coverage(record.coverage_target, margin)]
    rest = [r for r in rows if not r.low_coverage(record.coverage_target, margin)]
    fired = lambda rs: sum(warning_fires(r.fraction_above_bound, r.residual_mean, record) for r in rs)  # noqa: E731
    return {
        "margin": margin,
        "low_coverage_volumes": len(low),
        "fired_on_low_coverage": fired(low),
        "fire_rate_low_coverage": fired(low) / len(low) if low else None,
        "in_distribution_volumes": len(rest),
        "fired_on_in_distribution": fired(rest),
        "fire_rate_in_distribution": fired(rest) / len(rest) if rest else None,
    }
