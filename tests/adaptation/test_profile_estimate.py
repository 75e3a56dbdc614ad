"""The slice profile from the scan itself: the estimate's width on volumes made thick with a known profile, and
how the workflow chooses between the user, the header and the estimate."""

import json

import numpy as np
import pytest
import torch
from dicom_helpers import write_dicom_series

from bundle.adaptation.acquisition import SliceHeader, dicom_slice_header, sidecar_slice_header
from bundle.adaptation.geometry import find_geometry
from bundle.adaptation.profile import choose_profile, effective_fwhm, estimate_profile
from bundle.data.operators import degrade


def isotropic_texture(size: int = 80, correlation: float = 1.5, seed: int = 0) -> torch.Tensor:
    """(size,)*3 random texture with the same statistics along every axis (Gaussian-filtered noise)."""
    x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(seed))
    taps = torch.arange(-6, 7, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * correlation**2))
    kernel = kernel / kernel.sum()
    for dim in range(3):
        shape = [1, 1, 1]
        shape[dim] = 13
        padding = [6 if d == dim else 0 for d in range(3)]
        x = torch.nn.functional.conv3d(x, kernel.view(1, 1, *shape), padding=padding)
    return x[0, 0]


@pytest.fixture(scope="module")
def texture() -> torch.Tensor:
    return isotropic_texture()


@pytest.mark.parametrize(
    "operator, shape, thickness, factor",
    [("gaussian", "gaussian", 5, 5), ("gaussian", "gaussian", 3, 5), ("area", "box", 3, 5), ("area", "box", 2, 4)],
)
def test_the_estimate_finds_the_effective_width_of_a_known_profile(texture, operator, shape, thickness, factor):
    thick = degrade(texture[None], (1, 1, factor), operator, fwhm_factor=thickness / factor)[0]
    estimate = estimate_profile(thick, find_geometry([1.0, 1.0, float(factor)]), bootstraps=50)
    # the width that blurs alike (a box and a Gaussian of equal variance cannot be told apart by their spectra)
    assert abs(effective_fwhm(estimate.shape, estimate.thickness) - effective_fwhm(shape, thickness)) < 0.35
    assert estimate.low <= estimate.thickness <= estimate.high
    assert estimate.agrees_with(shape, thickness)


def test_a_gap_is_seen_a_wrong_told_width_is_not_agreed_with(texture):
    gap = degrade(texture[None], (1, 1, 5), "gaussian", fwhm_factor=0.6)[0]  # a 3 mm slice every 5 mm
    full = degrade(texture[None], (1, 1, 5), "gaussian", fwhm_factor=1.0)[0]
    geometry = find_geometry([1.0, 1.0, 5.0])
    narrow, wide = estimate_profile(gap, geometry), estimate_profile(full, geometry)
    assert effective_fwhm(narrow.shape, narrow.thickness) < effective_fwhm(wide.shape, wide.thickness) - 1.0
    assert not narrow.agrees_with("gaussian", 5.0)


def test_too_few_slices_to_estimate_is_an_error_and_the_choice_falls_back_to_the_spacing_with_a_warning():
    thin = torch.rand(40, 40, 4)
    geometry = find_geometry([1.0, 1.0, 5.0])
    with pytest.raises(ValueError, match="too few"):
        estimate_profile(thin, geometry)
    choice = choose_profile(thin, geometry, "auto", None, None, source="scan.nii.gz")
    assert (choice.geometry.thickness, choice.geometry.profile) == (5.0, "gaussian")
    assert (choice.thickness_source, choice.profile_source) == ("default", "default")
    assert any("cannot be estimated" in w and "scan.nii.gz" in w for w in choice.warnings)


def test_user_then_header_then_estimate_and_disagreements_are_warned_and_judged(texture):
    gap = degrade(texture[None], (1, 1, 5), "gaussian", fwhm_factor=0.6)[0]
    geometry = find_geometry([1.0, 1.0, 5.0])
    estimated = choose_profile(gap, geometry, "auto", None, None)
    assert estimated.thickness_source == estimated.profile_source == "estimate" and not estimated.warnings
    assert all(t != estimated.geometry.thickness for _, t in estimated.alternatives)  # the interval's ends
    # a nominal 5 mm in the header: the shape that blurs like the scan at 5 mm is a box (a Gaussian of FWHM 5 mm
    # would blur far more than a 3 mm one), and nothing disagrees
    header = SliceHeader(5.0, 5.0, "DICOM IM0.dcm")
    told = choose_profile(gap, geometry, "auto", None, header)
    assert told.thickness_source == "header" and told.geometry.thickness == 5.0
    assert told.geometry.profile == "box" and told.profile_source == "estimate" and not told.warnings
    # 8 mm explains the scan with no shape: said, and the model is judged on the scan's own profile as well
    told = choose_profile(gap, geometry, "auto", None, SliceHeader(8.0, None, "DICOM IM0.dcm"))
    assert told.geometry.thickness == 8.0
    assert any("in the header (DICOM IM0.dcm) is 8 mm" in w for w in told.warnings)
    assert told.alternatives == ((told.estimate.shape, told.estimate.thickness),)
    user = choose_profile(gap, geometry, "box", 3.2, header)
    assert (user.geometry.profile, user.geometry.thickness) == ("box", 3.2)
    assert (user.profile_source, user.thickness_source) == ("user", "user")
    record = json.loads(json.dumps(user.as_dict()))
    assert record["header"]["read_from"] == "DICOM IM0.dcm" and record["thickness_source"] == "user"


def test_a_header_spacing_that_contradicts_the_slice_positions_is_warned():
    geometry = find_geometry([1.0, 1.0, 5.0])
    choice = choose_profile(torch.rand(40, 40, 4), geometry, "auto", None, SliceHeader(3.0, 6.0, "sidecar x.json"))
    assert any("SpacingBetweenSlices 6 mm" in w for w in choice.warnings)
    assert choice.geometry.thickness == 3.0 and choice.thickness_source == "header"


def test_slice_thickness_and_spacing_are_read_from_a_dicom_series_and_a_bids_sidecar(tmp_path):
    files = write_dicom_series(tmp_path / "series", np.zeros((8, 6, 3), dtype=np.int16), slice_spacing=4.0)
    header = dicom_slice_header(files[0])
    assert header is not None and header.slice_thickness == 4.0 and header.spacing_between_slices is None
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    assert sidecar_slice_header(scan) is None
    (tmp_path / "scan.json").write_text(json.dumps({"SliceThickness": 3, "SpacingBetweenSlices": 5.0}))
    header = sidecar_slice_header(scan)
    assert header is not None and (header.slice_thickness, header.spacing_between_slices) == (3.0, 5.0)
    (tmp_path / "scan.json").write_text(json.dumps({"SliceThickness": 0}))
    assert sidecar_slice_header(scan) is None  # zero is no thickness
    (tmp_path / "scan.json").write_text("{not json")
    assert sidecar_slice_header(scan) is None
