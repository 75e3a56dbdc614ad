"""`run adapting`'s held-out calibration: the bound holds for every plausible slice profile."""

import dataclasses
import math

import torch

from bundle.adaptation.geometry import ScanGeometry
from bundle.adaptation.pairs import InPlanePairs, split_slices
from bundle.adaptation.settings import OutputSettings, TrustSettings
from bundle.adaptation.workflow import PerScanAdaptation

GEOMETRY = ScanGeometry((1.0, 1.0, 4.0), 2, 4.0, 4, 2.0, "gaussian")  # assumed: a 2 mm Gaussian slice every 4 mm


def smooth_images(n=16, size=32, seed=0):
    """(n, size, size) images of a smooth random texture in [0.2, 1] (all foreground)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    return 0.2 + 0.8 * (fine - fine.min()) / (fine.max() - fine.min())


def upsampler(x):
    """Slabs (B, 1, 1, Q, S) -> (B, 1, 1, Q, 4S): nearest x4 plus a ramp along Q, which the Q flip of the test-time
    augmentation reverses, so the passes disagree (a TTA std above 0)."""
    ramp = torch.linspace(0, 0.05, x.shape[3])[:, None]
    return x.repeat_interleave(4, dim=-1) + ramp


def held_out(tmp_path, alternatives, passes=2, geometry=GEOMETRY, consistency="project"):
    pairs = InPlanePairs(smooth_images(), geometry)
    split = split_slices(16, 0.5, 0)
    trust = TrustSettings(uncertainty=passes, consistency=consistency)
    workflow = PerScanAdaptation("scan.nii.gz", OutputSettings(str(tmp_path)), trust=trust)
    return workflow._held_out(upsampler, pairs, split, geometry, alternatives)


def test_a_wider_plausible_profile_widens_the_bound_and_calibrates_it(tmp_path):
    alone, alone_record = held_out(tmp_path, ())
    stats, record = held_out(tmp_path, (("gaussian", 8.0),))  # a much wider profile: larger errors
    assert stats["lam_assumed"] == alone_record.lam == alone["lam"]
    other = stats["other_profiles"][0]
    assert other["profile"] == "gaussian" and other["thickness_mm"] == 8.0
    assert other["lam"] > 1.2 * stats["lam_assumed"]
    assert record.lam == stats["lam"] == other["lam"]  # the widest profile's lambda ...
    assert record.error_variance_ratio > alone_record.error_variance_ratio  # ... and its error per unit variance
    assert stats["coverage_check"] > alone["coverage_check"] and other["coverage_check"] >= 0.8
    # the assumed profile's own numbers are unchanged by the alternative
    assert stats["psnr_sr"] == alone["psnr_sr"] and math.isfinite(other["psnr_sr"])


def test_a_plausible_profile_that_needs_a_narrower_bound_leaves_the_assumed_calibration(tmp_path):
    # assumed: 8 mm; the alternative's 2 mm blurs less, and unprojected its pairs are easier
    wide = dataclasses.replace(GEOMETRY, thickness=8.0)
    _, alone_record = held_out(tmp_path, (), geometry=wide, consistency="map")
    stats, record = held_out(tmp_path, (("gaussian", 2.0),), geometry=wide, consistency="map")
    assert stats["other_profiles"][0]["lam"] < stats["lam_assumed"]
    assert record.lam == alone_record.lam and record.error_variance_ratio == alone_record.error_variance_ratio


def test_with_one_pass_the_profiles_are_judged_but_nothing_is_calibrated(tmp_path):
    stats, record = held_out(tmp_path, (("gaussian", 8.0),), passes=1)
    assert record is None and "lam" not in stats["other_profiles"][0]
    assert stats["other_profiles"][0]["psnr_sr"] < stats["psnr_sr"]  # the wider profile's pairs are harder
