"""The out-of-distribution warning: thresholds fitted on hand-made volumes, its rule, rates, and shifts."""

from __future__ import annotations

import pytest
import torch

from bundle.trust.ood import SHIFTS, VolumeTrust, apply_shift, fit_ood_thresholds, warning_fires, warning_rates
from bundle.trust.record import CalibrationRecord
from bundle.trust.summary import ood_warning, trust_summary


def record(**kw) -> CalibrationRecord:
    base = dict(lam=2.0, coverage_target=0.9, coverage_reached=0.9, tta_passes=8, std_floor=1e-3, num_voxels=10)
    return CalibrationRecord(num_volumes=1, **{**base, **kw})


def row(coverage: float, above: float, residual: float, shift: str = "none") -> VolumeTrust:
    return VolumeTrust("case", shift, "area", coverage, above, residual)


def test_fit_separates_low_coverage_volumes_by_the_fraction_above_the_bound():
    rows = [row(0.93, 0.02, 0.01), row(0.91, 0.04, 0.012), row(0.88, 0.05, 0.011)]  # 0.88: within 5 points
    rows += [row(0.70, 0.20, 0.013, "invert"), row(0.80, 0.12, 0.010, "noise0.08")]
    fit = fit_ood_thresholds(rows, target=0.9)
    assert fit["low_coverage_rows"] == 2 and fit["fires_on_low_coverage"] == 1 and fit["quiet_on_in_distribution"] == 1
    assert fit["fraction_threshold"] == pytest.approx((0.05 + 0.12) / 2)  # midway between the two kinds
    assert fit["residual_threshold"] is None  # the residual separates nothing here: that test is left off


def test_fit_refuses_to_guess_from_one_kind_of_volume():
    fit = fit_ood_thresholds([row(0.93, 0.02, 0.01), row(0.91, 0.03, 0.02)], target=0.9)
    assert fit["fraction_threshold"] is None and fit["residual_threshold"] is None and "one kind" in fit["reason"]


def test_measured_rule_fires_and_says_why():
    rec = record(ood_fraction_threshold=0.085, ood_residual_threshold=0.05)
    assert warning_fires(0.09, 0.01, rec) and warning_fires(0.01, 0.06, rec) and not warning_fires(0.08, 0.04, rec)
    assert ood_warning({"fraction_above_bound": 0.08, "consistency_residual_mean": 0.04}, rec) is None
    text = ood_warning({"fraction_above_bound": 0.2, "consistency_residual_mean": 0.01}, rec)
    assert "20.0% of foreground voxels exceed" in text and "8.5%" in text


def test_summary_of_a_volume_past_the_threshold_carries_the_warning():
    rec = record(ood_fraction_threshold=0.1)
    sr = torch.full((1, 1, 4, 4, 4), 0.5)
    std = torch.full_like(sr, 0.01)  # bound 0.02
    residual = torch.zeros_like(sr)
    residual[..., :2] = 0.05  # half the voxels above the bound
    assert "exceed the calibrated error bound" in trust_summary(sr, std, residual, calibration=rec)["warning"]
    assert trust_summary(sr, std, torch.zeros_like(sr), calibration=rec)["warning"] is None


def test_rates_count_held_out_volumes_by_their_coverage():
    rec = record(ood_fraction_threshold=0.1)
    rows = [row(0.95, 0.02, 0), row(0.92, 0.15, 0), row(0.70, 0.3, 0), row(0.80, 0.05, 0)]
    rates = warning_rates(rows, rec)
    assert (rates["low_coverage_volumes"], rates["fired_on_low_coverage"]) == (2, 1)
    assert (rates["in_distribution_volumes"], rates["fired_on_in_distribution"]) == (2, 1)
    assert rates["fire_rate_low_coverage"] == 0.5 and rates["fire_rate_in_distribution"] == 0.5


def test_shifts_keep_the_background_and_change_the_head():
    hr = torch.zeros(1, 1, 8, 8, 8)
    hr[..., 2:6, 2:6, 2:6] = torch.linspace(0.2, 0.9, 4)
    for shift in SHIFTS:
        out = apply_shift(hr, shift)
        assert out.shape == hr.shape and torch.isfinite(out).all()
        if shift == "none":
            assert torch.equal(out, hr)
        elif not shift.startswith(("noise", "blur")):
            assert torch.equal(out[hr <= 0.05], hr[hr <= 0.05]) and not torch.allclose(out, hr)
    assert torch.allclose(apply_shift(hr, "invert")[..., 3, 3, 2], 1 - hr[..., 3, 3, 2])
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(hr, "sepia")
