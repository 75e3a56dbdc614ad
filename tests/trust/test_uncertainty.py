"""Test-time-augmentation uncertainty, conformal calibration, trust summary and the calibration file."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from bundle.core.errors import CalibrationError
from bundle.trust.conformal import (
    ConformalAccumulator,
    calibrate_volumes,
    conformal_lambda,
    conformal_quantile,
    conformal_scores,
    coverage,
    spearman,
)
from bundle.trust.record import (
    CalibrationRecord,
    calibrated_uncertainty,
    ensemble_shrink,
    load_calibration,
    save_calibration,
)
from bundle.trust.summary import ood_warning, trust_summary
from bundle.trust.tta import tta_augmentations, tta_predict


def nearest(scale):
    """Nearest-neighbour upsampling: commutes with flips and with permutations of equal-scale axes."""

    def predict(lr):
        x = lr
        for axis, s in enumerate(scale):
            x = x.repeat_interleave(s, dim=2 + axis)
        return x

    return predict


def record(**kw):
    base = dict(lam=2.0, coverage_target=0.9, coverage_reached=0.91, tta_passes=8, std_floor=1e-3, num_voxels=1000,
                num_volumes=2, consistency_residual_mean=0.004, consistency_residual_max=0.005)  # fmt: skip
    return CalibrationRecord(**{**base, **kw})


# ---------------------------------------------------------------------------------------------------------------
# augmentations


@pytest.mark.parametrize("scale,count,perms", [
    ((4, 4, 4), 48, 6), ((1, 1, 4), 16, 2), ((2, 3, 4), 8, 1), ((2, 4, 2), 16, 2),
])  # fmt: skip
def test_augmentation_counts_and_permutations_only_among_equal_scales(scale, count, perms):
    augs = tta_augmentations(scale, count)
    assert augs[0].name == "identity" and len({a.name for a in augs}) == count
    assert [a.flips for a in augs[1:4]] == [(0,), (1,), (2,)]
    used = {a.perm for a in augs}
    assert len(used) == perms
    for perm in used:  # every permutation maps each axis onto one of the same scale
        assert all(scale[i] == scale[p] for i, p in enumerate(perm))
    with pytest.raises(ValueError, match=f"allows only {count}"):
        tta_augmentations(scale, count + 1)


def test_thick_slice_scale_swaps_x_and_y_only():
    assert {a.perm for a in tta_augmentations((1, 1, 4), 16)} == {(0, 1, 2), (1, 0, 2)}
    with pytest.raises(ValueError, match="positive int"):
        tta_augmentations(4, 0)


@pytest.mark.parametrize("scale,shape,count", [
    ((2, 2, 2), (2, 3, 4), 48), ((1, 1, 4), (3, 4, 2), 16), ((2, 4, 2), (3, 2, 4), 16),
])  # fmt: skip
def test_every_augmentation_is_inverted_exactly_on_the_hr_grid(scale, shape, count):
    lr = torch.rand(2, 2, *shape)
    up = nearest(scale)
    reference = up(lr)
    for aug in tta_augmentations(scale, count):
        assert torch.equal(aug.invert(up(aug.apply(lr))), reference), aug.name
        assert not torch.equal(aug.apply(lr), lr) or aug.name == "identity"


# ---------------------------------------------------------------------------------------------------------------
# tta_predict


def test_equivariant_predict_gives_zero_std_and_mean_equal_to_single():
    scale = (2, 2, 2)
    lr = torch.rand(1, 1, 3, 4, 5)
    res = tta_predict(lr, nearest(scale), scale, passes=48)
    ref = nearest(scale)(lr)
    assert res.single.shape == res.mean.shape == res.std.shape == (1, 1, 6, 8, 10)
    assert torch.equal(res.single, ref) and torch.equal(res.mean, ref)
    assert torch.count_nonzero(res.std) == 0


def test_predict_that_is_not_flip_equivariant_gives_hand_computed_spread():
    scale = (2, 2, 2)
    lr = torch.rand(1, 1, 3, 4, 5)
    ramp = torch.linspace(0, 1, 6).view(1, 1, 6, 1, 1)  # depends on position along X, not on content

    def predict(x):
        return nearest(scale)(x) + ramp

    res = tta_predict(lr, predict, scale, passes=2)  # identity and flip X
    up = nearest(scale)(lr)
    flipped = torch.flip(ramp, dims=[2])
    torch.testing.assert_close(res.single, up + ramp)
    torch.testing.assert_close(res.mean, up + (ramp + flipped) / 2)
    torch.testing.assert_close(res.std, ((ramp - flipped).abs() / 2).expand_as(up))
    assert res.std.max() == pytest.approx(0.5)
    one = tta_predict(lr, predict, scale, passes=1)
    assert torch.count_nonzero(one.std) == 0 and torch.equal(one.mean, one.single)


def test_tta_predict_rejects_a_predict_of_the_wrong_size():
    with pytest.raises(ValueError, match="expected \\(1, 1, 8, 8, 8\\)"):
        tta_predict(torch.rand(1, 1, 2, 2, 2), lambda x: F.interpolate(x, scale_factor=2), 4, passes=2)


# ---------------------------------------------------------------------------------------------------------------
# conformal calibration


def test_finite_sample_quantile_against_hand_computation():
    numbers = torch.tensor([0.7, 0.1, 1.0, 0.4, 0.9, 0.3, 0.6, 0.2, 0.8, 0.5])  # 10 numbers, sorted 0.1 .. 1.0
    ones = torch.ones_like(numbers)
    assert conformal_lambda(numbers, ones, coverage=0.9) == pytest.approx(1.0)  # k = ceil(11 * 0.9) = 10
    assert conformal_lambda(numbers, ones, coverage=0.8) == pytest.approx(0.9)  # k = ceil(8.8) = 9
    assert conformal_lambda(numbers, ones, coverage=0.5) == pytest.approx(0.6)  # k = ceil(5.5) = 6
    assert conformal_lambda(numbers, 2 * ones, coverage=0.5) == pytest.approx(0.3)  # scores are err / std
    assert conformal_lambda(numbers, torch.zeros(10), coverage=0.5, std_floor=0.1) == pytest.approx(6.0)  # floor
    mask = numbers > 0.35  # 0.4 .. 1.0: 7 numbers, k = ceil(8 * 0.5) = 4 -> 0.7
    assert conformal_lambda(numbers, ones, mask, coverage=0.5) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="too few"):
        conformal_quantile(numbers[:5], 0.9)  # k = ceil(5.4) = 6 > 5


def test_coverage_by_hand():
    err, std = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4)
    assert coverage(err, std, 2.5) == 0.5
    assert coverage(err, std, 2.0) == 0.5  # <= counts
    assert coverage(err, std, 2.5, mask=torch.tensor([True, True, True, False])) == pytest.approx(2 / 3)


def test_conformal_lambda_on_gaussian_errors_covers_fresh_samples():
    gen = torch.Generator().manual_seed(0)
    n = 50_000
    std = 0.01 + 0.1 * torch.rand(n, generator=gen)
    err = (torch.randn(n, generator=gen) * std).abs()
    mask = torch.rand(n, generator=gen) > 0.5
    err_outside = torch.where(mask, err, torch.full_like(err, 100.0))  # the mask must keep these out
    lam = conformal_lambda(err_outside, std, mask, coverage=0.9)
    assert lam == pytest.approx(1.645, abs=0.05)  # the 95th percentile of N(0, 1)
    fresh_std = 0.01 + 0.1 * torch.rand(n, generator=gen)
    fresh_err = (torch.randn(n, generator=gen) * fresh_std).abs()
    assert abs(coverage(fresh_err, fresh_std, lam) - 0.9) < 0.02


def test_accumulator_subsamples_reproducibly_and_matches_the_direct_quantile():
    gen = torch.Generator().manual_seed(1)
    vols = [(torch.rand(1, 1, 10, 10, 10, generator=gen), torch.rand(1, 1, 10, 10, 10, generator=gen) + 0.1)
            for _ in range(3)]  # fmt: skip
    small, again, full = ConformalAccumulator(100, seed=3), ConformalAccumulator(100, seed=3), ConformalAccumulator()
    for err, std in vols:
        for acc in (small, again, full):
            acc.add(err, std, consistency_residual=err / 2)
    assert small.all_scores().numel() == 300 and small.voxels_seen == 3000
    assert torch.equal(small.all_scores(), again.all_scores())
    direct = torch.cat([conformal_scores(e, s) for e, s in vols])
    assert full.lambda_(0.9) == conformal_quantile(direct, 0.9)
    rec = full.record(0.9, tta_passes=4)
    assert rec.coverage_reached >= 0.9 and rec.num_voxels == 3000 and rec.num_volumes == 3
    means = [float((e / 2).mean()) for e, _ in vols]
    assert rec.consistency_residual_max == pytest.approx(max(means))
    assert rec.fraction_above_bound_max == pytest.approx(
        max(float((e / 2 / s > rec.lam).double().mean()) for e, s in vols)
    )


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
def test_the_shrunk_bound_of_an_average_covers_at_the_target_when_members_were_calibrated(rho):
    """Four members with errors of correlation rho and per-voxel scale std: calibrated on one member, the bound
    over-covers their average; shrunk by `ensemble_shrink` it covers at the target again."""
    gen = torch.Generator().manual_seed(2)
    n, k = 100_000, 4
    std = 0.5 + torch.rand(n, generator=gen)
    shared = torch.randn(n, generator=gen) * rho**0.5
    members = torch.stack([(shared + torch.randn(n, generator=gen) * (1 - rho) ** 0.5) * 1.3 * std for _ in range(k)])
    acc = ConformalAccumulator(n)
    acc.add(members[0].abs(), std)
    assert acc.error_variance_ratio() == pytest.approx(1.3**2, rel=0.02)
    rec = acc.record(0.9, tta_passes=4)
    rec.error_variance_ratio = acc.error_variance_ratio()
    average = members.mean(0)
    spread = (members - average).square().mean(0)
    shrink = ensemble_shrink(std, spread, k, rec, torch.ones(n, dtype=torch.bool))
    assert shrink == pytest.approx((rho + (1 - rho) / k) ** 0.5, abs=0.02)  # the average's error scale
    bound = calibrated_uncertainty(std, rec)
    assert abs(coverage(average.abs(), bound * shrink, 1.0) - 0.9) < 0.01
    if rho < 0.5:
        assert coverage(average.abs(), bound, 1.0) > 0.97  # unshrunk: far above the target


def test_ensemble_shrink_limits_and_errors():
    std = torch.ones(10)
    rec = record(std_floor=0.01, error_variance_ratio=4.0)
    mask = torch.ones(10, dtype=torch.bool)
    assert ensemble_shrink(std, torch.zeros(10), 4, rec, mask) == 1.0  # members that agree: no shrink
    assert ensemble_shrink(std, torch.full((10,), 1.0), 4, rec, mask) == pytest.approx(0.75**0.5)  # 1 - 1/4
    assert ensemble_shrink(std, torch.full((10,), 3.0), 4, rec, mask) == pytest.approx(0.5)  # 1/sqrt(members)
    # more spread than the calibrated error allows: the calibration under-predicts here, the bound is not narrowed
    assert ensemble_shrink(std, torch.full((10,), 3.01), 4, rec, mask) == 1.0
    assert ensemble_shrink(std, torch.full((10,), 100.0), 4, rec, mask) == 1.0
    assert ensemble_shrink(std, torch.full((10,), 100.0), 4, rec, torch.zeros(10, dtype=torch.bool)) == 1.0
    with pytest.raises(ValueError, match="no error_variance_ratio"):
        ensemble_shrink(std, torch.zeros(10), 4, record(), mask)
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_shrink(std, torch.zeros(10), 0, rec, mask)


# ---------------------------------------------------------------------------------------------------------------
# spearman


def test_spearman_equals_scipy_on_masked_voxels_with_ties():
    gen = torch.Generator().manual_seed(2)
    a = torch.round(torch.rand(1, 1, 6, 6, 6, generator=gen) * 10) / 10  # ties
    b = a + 0.3 * torch.rand(1, 1, 6, 6, 6, generator=gen)
    mask = torch.rand(1, 1, 6, 6, 6, generator=gen) > 0.4
    expected = stats.spearmanr(a[mask].numpy(), b[mask].numpy()).statistic
    assert spearman(a, b, mask) == pytest.approx(expected, abs=1e-12)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)
    assert spearman(a, a**3 + 1, max_samples=50) == pytest.approx(1.0)  # subsampled, monotone: still exactly 1
    assert math.isnan(spearman(torch.ones(5), torch.rand(5)))


# ---------------------------------------------------------------------------------------------------------------
# trust summary and warning


def volume_and_mask():
    sr = torch.zeros(1, 1, 4, 4, 4)
    sr[..., :2] = 0.5  # foreground: half the voxels
    return sr, sr > 0.05


def test_summary_fields_by_hand_and_bound_exceeded_triggers_warning():
    sr, mask = volume_and_mask()
    residual = torch.where(mask, 0.02, 9.0)  # background residual must not count
    std = torch.full_like(sr, 0.01)
    s = trust_summary(sr, std, residual, mask, record(lam=1.5))
    assert s["foreground_voxels"] == 32 and s["missing"] == []
    assert s["consistency_residual_mean"] == pytest.approx(0.02)
    assert s["tta_std_mean"] == pytest.approx(0.01)
    assert s["calibrated_uncertainty_mean"] == pytest.approx(0.015)
    assert s["fraction_above_bound"] == 1.0  # 0.02 > 1.5 * 0.01 everywhere in the foreground
    assert s["lambda"] == 1.5 and s["coverage_target"] == 0.9
    assert "100.0% of foreground voxels exceed" in s["warning"] and "x the largest" in s["warning"]  # 0.02 > 3 x 0.005
    json.dumps(s)


def test_warning_thresholds():
    sr, mask = volume_and_mask()
    std = torch.full_like(sr, 0.02)  # bound 0.04
    quiet = trust_summary(sr, std, torch.full_like(sr, 0.012), mask, record())  # 2.4x the validation max
    assert quiet["fraction_above_bound"] == 0.0 and quiet["warning"] is None
    loud = trust_summary(sr, std, torch.full_like(sr, 0.016), mask, record())  # 3.2x
    assert loud["warning"].startswith("input looks unlike the training data: mean consistency residual 0.016 is 3.2x")
    residual = torch.full_like(sr, 0.005)
    residual[..., 0, 0, :2] = 0.045  # 2 of 32 foreground voxels above the bound: 6.25% <= 10%
    assert trust_summary(sr, std, residual, mask, record())["warning"] is None
    residual[..., 0, 1:3, :2] = 0.045  # 6 of 32: 18.75% > 10% (mean residual 0.0125: 2.5x, below 3x)
    warning = trust_summary(sr, std, residual, mask, record())["warning"]
    assert "18.8% of foreground voxels exceed the calibrated error bound (limit 10.0%)" in warning
    assert "consistency" not in warning
    # a validation set that already reached 20% above the bound raises the limit
    assert trust_summary(sr, std, residual, mask, record(fraction_above_bound_max=0.2))["warning"] is None


def test_summary_with_missing_parts():
    sr, mask = volume_and_mask()
    no_std = trust_summary(sr, None, torch.full_like(sr, 0.1), None, record())
    assert no_std["missing"] == ["uncertainty"] and no_std["foreground_voxels"] == 32  # mask from SR
    assert no_std["calibrated_uncertainty_mean"] is None and no_std["fraction_above_bound"] is None
    assert no_std["consistency_residual_mean"] == pytest.approx(0.1) and "20.0x" in no_std["warning"]
    nothing = trust_summary(sr, None, None, mask, None)
    assert nothing["missing"] == ["uncertainty", "consistency", "calibration"] and nothing["warning"] is None
    uncalibrated = trust_summary(sr, torch.full_like(sr, 0.01), None, mask, None)
    assert uncalibrated["tta_std_mean"] == pytest.approx(0.01) and uncalibrated["lambda"] is None
    assert ood_warning({"fraction_above_bound": 0.5}, None) is None
    with pytest.raises(ValueError, match="SR shape"):
        trust_summary(sr, torch.zeros(1, 1, 2, 2, 2), None, mask, None)


# ---------------------------------------------------------------------------------------------------------------
# calibration file


def test_calibration_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "models" / "calibration.json"
    assert load_calibration(path) is None
    rec = record(fraction_above_bound_max=0.03)
    save_calibration(path, rec)
    data = json.loads(path.read_text())
    assert data["lambda"] == 2.0 and "lam" not in data and data["tta_passes"] == 8
    assert load_calibration(path) == rec
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]  # no temp file left behind
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match=f"^{path}: not a usable uncertainty calibration"):
        load_calibration(path)
    del data["lambda"], data["tta_passes"]
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"missing field\(s\) \['lambda', 'tta_passes'\]"):
        load_calibration(path)
    path.write_text(json.dumps({**rec.to_dict(), "lambda": -1}))
    with pytest.raises(CalibrationError, match="positive finite"):
        load_calibration(path)


# ---------------------------------------------------------------------------------------------------------------
# end to end on toy volumes


def test_calibrate_volumes_writes_a_usable_record(tmp_path):
    scale = (2, 2, 2)
    gen = torch.Generator().manual_seed(4)
    hrs = [F.avg_pool3d(torch.rand(1, 1, 20, 20, 20, generator=gen), 3, 1) for _ in range(2)]  # smooth 18^3

    def predict(lr):  # trilinear plus an orientation-dependent bias, so passes disagree
        up = F.interpolate(lr, scale_factor=scale, mode="trilinear", align_corners=False)
        return up + 0.02 * torch.linspace(0, 1, up.shape[2]).view(1, 1, -1, 1, 1)

    pairs = [(hr, F.avg_pool3d(hr, scale)) for hr in hrs]

    calls = []

    def consistency(sr, lr):  # (the SR as written, |D(SR) - LR| with D = block average, back onto the HR grid)
        calls.append(sr.shape)
        residual = (F.avg_pool3d(sr, scale) - lr).abs()
        return sr, residual.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)

    rec, report = calibrate_volumes(pairs, predict, consistency, scale, passes=8, target=0.8)
    assert len(calls) == 4  # one run of the step per output: 2 volumes x (single pass, TTA mean)
    assert rec.num_volumes == 2 and rec.tta_passes == 8 and rec.coverage_reached >= 0.8
    assert rec.sr_output == report["sr_output"] in ("single", "tta_mean")
    assert report["mse_fg_mean"][rec.sr_output] == min(report["mse_fg_mean"].values())
    assert rec.consistency_residual_max >= rec.consistency_residual_mean > 0
    assert len(report["psnr_fg"]["single"]) == 2 and all(np.isfinite(report["spearman_std_vs_error"]))
    assert load_calibration(save_calibration(tmp_path / "c.json", rec)) == rec


def test_tta_inferer_returns_the_chosen_output_and_the_std_as_channels():
    from monai.inferers import SimpleInferer

    from bundle.trust.tta import TTAInferer

    lr = torch.rand(1, 2, 3, 4, 5)
    ramp = torch.linspace(0, 1, 6).view(1, 1, 6, 1, 1)

    def network(x):
        return nearest((2, 2, 2))(x) + ramp

    expected = tta_predict(lr, network, 2, passes=4)
    both = TTAInferer(SimpleInferer(), 2, passes=4, output="tta_mean")(lr, network)
    assert both.shape == (1, 4, 6, 8, 10)
    assert torch.equal(both[:, :2], expected.mean) and torch.equal(both[:, 2:], expected.std)
    single = TTAInferer(SimpleInferer(), 2, passes=4, output="single", with_std=False)(lr, network)
    assert torch.equal(single, nearest((2, 2, 2))(lr) + ramp)
    with pytest.raises(ValueError, match="allows only 8"):
        TTAInferer(SimpleInferer(), (2, 3, 4), passes=9)
    with pytest.raises(ValueError, match="'single' or 'tta_mean'"):
        TTAInferer(SimpleInferer(), 2, passes=2, output="mean")
