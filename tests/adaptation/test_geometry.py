"""Slice axis, factors and slice profiles of per-scan adaptation, against hand-made references."""

import math

import pytest
import torch

from bundle.adaptation.geometry import degrade_along_last, find_geometry, from_slabs, in_plane_images, to_slabs
from bundle.core.errors import ConfigError, DatasetError


@pytest.mark.parametrize(
    "spacing, axis, ratio, scale",
    [
        ((1.0, 1.0, 4.0), 2, 4.0, 4),
        ((0.9, 5.0, 0.9), 1, 5.0 / 0.9, 6),
        ((4.4, 1.0, 1.0), 0, 4.4, 4),
        ((1, 1, 2.2), 2, 2.2, 2),
    ],
)
def test_slice_axis_ratio_and_integer_scale(spacing, axis, ratio, scale):
    g = find_geometry(spacing)
    assert g.slice_axis == axis and g.ratio == pytest.approx(ratio) and g.scale == scale
    assert set(g.in_plane_axes) == {0, 1, 2} - {axis}
    assert g.thickness == pytest.approx(spacing[axis])  # default: thickness = slice spacing
    # the profile's FWHM in thin voxels is the thickness over the in-plane spacing, whatever the integer scale
    assert g.fwhm_factor * g.scale == pytest.approx(spacing[axis] / g.in_plane_spacing)
    assert g.output_spacing[axis] == pytest.approx(spacing[axis] / scale)
    assert g.scale3[axis] == scale and sum(g.scale3) == scale + 2


def test_explicit_thickness_and_errors():
    assert find_geometry((1, 1, 4), slice_thickness=5.0).fwhm_factor == pytest.approx(5.0 / 4)
    with pytest.raises(DatasetError, match=r"scan.nii.gz: voxel spacing .* is not thick-slice"):
        find_geometry((1.0, 1.0, 1.2), source="scan.nii.gz")
    with pytest.raises(ConfigError, match="slice_profile must be one of"):
        find_geometry((1, 1, 4), profile="sinc")
    with pytest.raises(DatasetError, match="not three positive numbers"):
        find_geometry((1, 0, 4))


def test_box_profile_is_the_mean_of_the_thin_voxels_each_thick_voxel_covers():
    g = find_geometry((1, 1, 4), profile="box")
    images = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8) ** 1.5
    lr = degrade_along_last(images, g)
    expected = torch.stack([images[..., 4 * i : 4 * i + 4].mean(-1) for i in range(2)], dim=-1)
    assert torch.allclose(lr, expected)


@pytest.mark.parametrize("spacing", [(1, 1, 4), (1, 1, 5), (1, 1, 4.4)])
def test_gaussian_profile_of_an_impulse_is_the_integrated_gaussian_centred_on_the_covered_voxels(spacing):
    g = find_geometry(spacing)
    s, fwhm = g.scale, spacing[2] / 1.0
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    images = torch.zeros(1, 1, 12 * s, dtype=torch.float64)
    c = 6 * s + 1  # an interior thin voxel
    images[0, 0, c] = 1.0
    lr = degrade_along_last(images, g)[0, 0]

    def weight(i: int) -> float:  # the Gaussian centred on s*i + (s-1)/2, integrated over thin voxel c
        centre = s * i + (s - 1) / 2
        cdf = lambda x: 0.5 * (1 + math.erf((x - centre) / (sigma * math.sqrt(2))))  # noqa: E731
        return cdf(c + 0.5) - cdf(c - 0.5)

    expected = torch.tensor([weight(i) for i in range(12)], dtype=torch.float64)
    expected_sum = sum(weight(i) for i in range(12))
    assert lr.sum().item() == pytest.approx(expected_sum, rel=2e-3)  # the taps are cut at 4 sigma and renormalised
    assert torch.allclose(lr, expected, atol=2e-4)


def test_slabs_round_trip_and_in_plane_images():
    volume = torch.rand(6, 10, 4)
    for slice_axis, across in ((2, 0), (2, 1), (0, 1), (1, 2)):
        slabs = to_slabs(volume, slice_axis, across)
        assert slabs.shape[:3] == (volume.shape[across], 1, 1) and slabs.shape[-1] == volume.shape[slice_axis]
        assert torch.equal(from_slabs(slabs, slice_axis, across), volume)
    images = in_plane_images(torch.rand(22, 17, 5), slice_axis=2, multiple=4)
    assert images.shape == (5, 20, 16)  # centred crop to multiples of the scale
    with pytest.raises(DatasetError, match="too small"):
        in_plane_images(torch.rand(8, 8, 5), slice_axis=2, multiple=4)
