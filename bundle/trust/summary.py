"""The per-volume trust summary: consistency residual and calibrated uncertainty in the foreground, the fraction
of voxels above the bound, and a warning when the input looks unlike the data the bound was calibrated on.
"""

from __future__ import annotations

import torch

from bundle.core.choices import FOREGROUND_THRESHOLD
from bundle.core.metrics import masked_mean
from bundle.trust.record import CalibrationRecord, calibrated_uncertainty

OOD_RESIDUAL_FACTOR = 3.0  # mean consistency residual above this multiple of the validation maximum -> warning


def foreground_mask(volume: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """Voxels brighter than `threshold` (the evaluation's rule `hr > foreground_threshold`), bool, same shape."""
    return volume > threshold


def masked_scalar(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` over `mask` (broadcastable), as one float over the whole tensor."""
    m = mask.to(torch.bool).expand_as(values)
    return float(masked_mean(values.float().reshape(1, -1), m.reshape(1, -1))[0])


def trust_summary(
    sr_hr_grid: torch.Tensor,
    std: torch.Tensor | None,
    consistency_residual: torch.Tensor | None,
    foreground_mask: torch.Tensor | None = None,
    calibration: CalibrationRecord | None = None,
    foreground_threshold: float = FOREGROUND_THRESHOLD,
) -> dict:
    """JSON-ready per-volume summary of how far to trust the SR output (one volume, tensors (1, C, X, Y, Z)).

    Keys: foreground_voxels; consistency_residual_mean (foreground mean |D(SR) - LR| on the HR grid);
    tta_std_mean; calibrated_uncertainty_mean (foreground mean lambda * max(std, floor)); fraction_above_bound
    (foreground voxels whose consistency residual exceeds lambda * max(std, floor)); lambda; coverage_target;
    missing (which of "uncertainty", "consistency", "calibration" were not available; their values are None);
    warning (`ood_warning`, None when nothing looks wrong). The mask defaults to SR > foreground_threshold.
    """
    mask = foreground_mask if foreground_mask is not None else sr_hr_grid > foreground_threshold
    for name, t in (("std", std), ("consistency_residual", consistency_residual)):
        if t is not None and t.shape != sr_hr_grid.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must have the SR shape {tuple(sr_hr_grid.shape)}")
    mask = mask.to(torch.bool).expand_as(sr_hr_grid)
    available = {"uncertainty": std, "consistency": consistency_residual, "calibration": calibration}
    missing = [name for name, value in available.items() if value is None]
    summary: dict = {
        "foreground_voxels": int(mask.sum()),
        "consistency_residual_mean": None,
        "tta_std_mean": None,
        "calibrated_uncertainty_mean": None,
        "fraction_above_bound": None,
        "lambda": calibration.lam if calibration is not None else None,
        "coverage_target": calibration.coverage_target if calibration is not None else None,
        "missing": missing,
    }
    if consistency_residual is not None:
        summary["consistency_residual_mean"] = masked_scalar(consistency_residual.abs(), mask)
    if std is not None:
        summary["tta_std_mean"] = masked_scalar(std, mask)
        if calibration is not None:
            bound = calibrated_uncertainty(std, calibration)
            summary["calibrated_uncertainty_mean"] = masked_scalar(bound, mask)
            if consistency_residual is not None:
                above = consistency_residual.abs().float() > bound
                summary["fraction_above_bound"] = masked_scalar(above.float(), mask)
    summary["warning"] = ood_warning(summary, calibration)
    return summary


def ood_warning(summary: dict, calibration: CalibrationRecord | None) -> str | None:
    """One line when the input looks unlike the training data, else None.

    Two tests, each used when its numbers exist:
    - the foreground mean consistency residual exceeds OOD_RESIDUAL_FACTOR (3) times the largest per-volume
      mean seen on validation: the model no longer reproduces its own input, so its degradation assumption or
      its prior does not fit this scan;
    - fraction_above_bound exceeds the allowed miscoverage 1 - coverage_target (or the largest fraction seen on
      validation, when that was higher). The residual is the error seen through the degradation, a local average
      of the signed error; where it exceeds the bound, the error itself must exceed it somewhere in that LR voxel.
      Calibration promises at most 1 - coverage_target of voxels above the bound on data like the validation
      set, so more voxels than that above it from the residual alone means the promise does not hold here.
    """
    if calibration is None:
        return None
    if calibration.ood_fraction_threshold is not None or calibration.ood_residual_threshold is not None:
        return _measured_warning(summary, calibration)
    reasons = []
    residual, largest = summary.get("consistency_residual_mean"), calibration.consistency_residual_max
    if residual is not None and largest is not None and residual > OOD_RESIDUAL_FACTOR * largest:
        reasons.append(
            f"mean consistency residual {residual:.4g} is {residual / max(largest, 1e-12):.1f}x "
            f"the largest seen on validation ({largest:.4g})"
        )
    fraction = summary.get("fraction_above_bound")
    if fraction is not None:
        limit = max(1.0 - calibration.coverage_target, calibration.fraction_above_bound_max or 0.0)
        if fraction > limit:
            reasons.append(f"{fraction:.1%} of foreground voxels exceed the calibrated error bound (limit {limit:.1%})")
    if not reasons:
        return None
    return "input looks unlike the training data: " + "; ".join(reasons) + "; treat the SR output with caution"


def _measured_warning(summary: dict, calibration: CalibrationRecord) -> str | None:
    """The rule fitted by `bundle.trust.ood.fit_ood_thresholds` on shifted validation volumes: fires when the fraction
    of foreground voxels above the bound, or the mean residual, exceeds its threshold (volumes past them had
    their coverage more than 5 points below the target)."""
    reasons = []
    fraction, f_thr = summary.get("fraction_above_bound"), calibration.ood_fraction_threshold
    if fraction is not None and f_thr is not None and fraction > f_thr:
        reasons.append(f"{fraction:.1%} of foreground voxels exceed the calibrated error bound (threshold {f_thr:.1%})")
    residual, r_thr = summary.get("consistency_residual_mean"), calibration.ood_residual_threshold
    if residual is not None and r_thr is not None and residual > r_thr:
        reasons.append(f"mean consistency residual {residual:.4g} exceeds the threshold {r_thr:.4g} (normalised units)")
    if not reasons:
        return None
    return (
        "input looks unlike the training data: "
        + "; ".join(reasons)
        + f"; the calibrated bound probably covers less than {calibration.coverage_target:.0%} of voxels here; "
        "treat the SR output with caution"
    )
