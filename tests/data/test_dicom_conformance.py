"""The derived DICOM series pass a DICOM validator and carry what a PACS needs: ImageType value 3, identity
rescale when the values fit, a window, and the uncertainty as its own series referencing the SR series."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from dicom_helpers import write_series
from monai.data import MetaTensor

from bundle.data.dicom_series import LoadImageOrSeriesd, dicom_series_items
from bundle.data.transforms import super_resolution_affine
from bundle.inference.dicom_out import write_derived_series, write_trust_map_series

DCIODVFY = shutil.which("dciodvfy")


def derived(tmp_path, signed=True, window=None):
    """A source series (8 slices), its x4 SR (trilinear, real values) and an uncertainty map series."""
    _, paths, _ = write_series(tmp_path / "in" / "head", n=8, signed=signed)
    if window is not None:
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.WindowCenter, ds.WindowWidth = window
            ds.save_as(p)
    lr = LoadImageOrSeriesd("image")(dicom_series_items(tmp_path / "in" / "head")[0])["image"]
    lr = lr if lr.ndim == 4 else lr[None]
    sr = F.interpolate(lr.as_tensor()[None].float(), scale_factor=4, mode="trilinear")[0]
    affine = super_resolution_affine(lr.affine, (4, 4, 4))
    sr_files = write_derived_series(sr, affine, paths, tmp_path / "sr", "m", "1", 4)
    uncertainty = MetaTensor(sr.abs() * 0.013 + 0.5, affine=affine, meta=dict(lr.meta))
    write_trust_map_series(uncertainty, tmp_path / "sr", tmp_path / "unc", "UNCERTAINTY", "m", "1", 4)
    return sr, sr_files, sorted((tmp_path / "unc").glob("*.dcm")), uncertainty


@pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools; `make test` installs it)"
)
def test_dciodvfy_reports_no_error_on_the_sr_and_the_uncertainty_series(tmp_path):
    _, sr_files, map_files, _ = derived(tmp_path)
    for path in (sr_files[0], sr_files[-1], map_files[0]):
        proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path}: {errors}"


def test_image_type_identity_rescale_and_window(tmp_path):
    sr, sr_files, _, _ = derived(tmp_path, signed=True, window=("400", "900"))
    first = pydicom.dcmread(sr_files[0])
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)  # values fit 16 bits as they are
    assert (float(first.WindowCenter), float(first.WindowWidth)) == (400.0, 900.0)  # the source's, same units
    assert np.abs(first.pixel_array.T.astype(float) - sr[0, :, :, 0].numpy()).max() <= 0.5


def test_window_from_the_values_when_the_source_has_none(tmp_path):
    sr, sr_files, _, _ = derived(tmp_path / "a", signed=False)
    first = pydicom.dcmread(sr_files[0])
    low, high = np.quantile(sr.numpy(), [0.01, 0.99])
    assert float(first.WindowCenter) == pytest.approx((low + high) / 2, rel=0.02)
    assert float(first.WindowWidth) == pytest.approx(high - low, rel=0.02)


def test_uncertainty_series_references_the_sr_series_and_keeps_its_fractions(tmp_path):
    _, sr_files, map_files, uncertainty = derived(tmp_path)
    srs = [pydicom.dcmread(f) for f in sr_files]
    maps = [pydicom.dcmread(f) for f in map_files]
    assert len(maps) == len(srs)
    m0 = maps[0]
    assert list(m0.ImageType) == ["DERIVED", "SECONDARY", "UNCERTAINTY"]
    assert m0.SeriesInstanceUID != srs[0].SeriesInstanceUID and m0.SeriesNumber == srs[0].SeriesNumber + 1
    assert m0.RelatedSeriesSequence[0].SeriesInstanceUID == srs[0].SeriesInstanceUID
    assert "uncertainty" in m0.SeriesDescription and m0.SeriesDescription.endswith("NOT FOR DIAGNOSTIC USE")
    for k in (0, len(maps) - 1):  # each map slice names the SR slice it qualifies
        assert maps[k].SourceImageSequence[0].ReferencedSOPInstanceUID == srs[k].SOPInstanceUID
        assert maps[k].ImagePositionPatient == srs[k].ImagePositionPatient
    back = LoadImageOrSeriesd("image")({"image": str(tmp_path / "unc")})["image"]
    step = float(m0.RescaleSlope)
    assert step < 0.01  # the full 16-bit range: fractions of an intensity unit survive
    assert torch.allclose(torch.as_tensor(back).reshape(-1).float(), uncertainty.reshape(-1).float(), atol=step)
