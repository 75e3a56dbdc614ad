"""Scoring in world coordinates and the geometry line: a misplaced SR must cost score and show as a shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.core.metrics import psnr_from_mse
from bundle.evaluation.alignment import SHIFT_TOLERANCE, best_shift, on_reference_grid
from bundle.evaluation.protocol import geometry_line, worst_case, worst_case_line


def smooth(shape=(40, 36, 32), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *shape), generator=g)
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 2, 2, 2))).double()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr_from_mse(((a - b) ** 2).mean()))


AFFINE = torch.tensor([[0, 0, -1.0, 50.0], [1.0, 0, 0, -20.0], [0, 1.0, 0, 3.0], [0, 0, 0, 1]], dtype=torch.float64)


def test_the_same_grid_is_compared_as_it_is():
    x = smooth()
    assert on_reference_grid(x, AFFINE, AFFINE.clone(), tuple(x.shape)) is x


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_moving_the_reference_affine_by_one_voxel_lowers_the_score(axis):
    """The SR equals the HR voxel for voxel; with the reference's affine moved by one voxel along an array axis the
    comparison through the affines must see the SR one voxel off, and the PSNR fall."""
    hr = smooth()
    sr = hr.clone()
    moved = AFFINE.clone()
    moved[:3, 3] += AFFINE[:3, axis]  # one voxel along array axis `axis`, in world units
    same = psnr(on_reference_grid(sr, AFFINE, AFFINE, tuple(hr.shape)), hr)
    shifted = on_reference_grid(sr, AFFINE, moved, tuple(hr.shape))
    assert same == float("inf") or same > 100
    assert psnr(shifted, hr) < 40
    # the resampled SR is the SR one voxel further along that axis (inside the volume)
    inner = [slice(None)] + [slice(0, -1) if d == axis else slice(None) for d in range(3)]
    ahead = [slice(None)] + [slice(1, None) if d == axis else slice(None) for d in range(3)]
    assert torch.allclose(shifted[tuple(inner)], sr[tuple(ahead)], atol=1e-9)


@pytest.mark.parametrize("shift", [(0.0, 1.5, 0.0), (-0.7, 0.0, 0.35), (2.0, -1.25, 0.5)])
def test_best_shift_finds_a_known_displacement(shift):
    # a head-like object: texture inside a soft ball, background around it (as the evaluation's volumes)
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in (40, 36, 32)], indexing="ij")
    ball = torch.sigmoid(10.0 - torch.sqrt(sum(g**2 for g in grid)))
    hr = smooth() * ball
    moved = torch.from_numpy(ndimage.shift(hr.numpy(), (0, *shift), order=3, mode="grid-wrap"))
    assert best_shift(hr, hr) == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(best_shift(moved, hr), shift, atol=0.051)
    with pytest.raises(ValueError, match="one shape"):
        best_shift(hr, hr[..., :-1])


def entry(case, degradation, gain, shift):
    return {
        "case": case,
        "degradation": degradation,
        "psnr": {},
        "ssim": {},
        "sr_gain_over_bspline": {"psnr": gain, "ssim": 0.01},
        "sr_best_shift": list(shift),
    }


def test_a_displaced_sr_fails_the_goal_and_says_where():
    aligned = [entry("a", "kspace", 1.2, (0.0, 0.05, 0.0)), entry("b", "area", 0.9, (0.1, 0.0, -0.2))]
    assert geometry_line(aligned)["aligned"] and geometry_line(aligned)["largest_shift"] == pytest.approx(0.2)
    assert worst_case(aligned)["goal_met"]
    assert f"within {SHIFT_TOLERANCE} voxel" in worst_case_line({"worst_case": worst_case(aligned), "per_scan": []})
    displaced = aligned + [entry("c", "kspace", 2.0, (1.5, 1.5, 1.5))]
    wc = worst_case(displaced)
    assert not wc["goal_met"] and wc["geometry"]["case"] == "c" and wc["geometry"]["largest_shift"] == 1.5
    line = worst_case_line({"worst_case": wc, "per_scan": displaced})
    assert "does NOT meet" in line and "displaced by [1.5, 1.5, 1.5]" in line and "(c, kspace)" in line


def test_gain_figure_draws_every_scan_and_refuses_an_empty_summary(tmp_path):
    from PIL import Image

    from bundle.evaluation.figures import gain_figure

    per_scan = [entry("a", "kspace", 1.2, (0, 0, 0)), entry("b", "area", -0.3, (0, 0, 0))]
    summaries = {"old": {"per_scan": per_scan}, "new": {"per_scan": per_scan[:1]}}  # "new" misses a cell: NaN bar
    path = gain_figure(summaries, tmp_path / "gains.png", "test")
    with Image.open(path) as image:
        assert image.size[0] > 600 and image.size[1] > 500
    with pytest.raises(ValueError, match="no per-scan table"):
        gain_figure({"empty": {}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
