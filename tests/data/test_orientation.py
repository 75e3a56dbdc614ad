"""The SR does not depend on how a scan is stored: flipped, axis-permuted and DICOM copies give the same SR.

Also: non-negative inputs give non-negative outputs, and the trust summary is in the units of the maps."""

from __future__ import annotations

import json
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import INFER, run_bundle, tiny_generator
from dicom_helpers import write_series
from monai.data import MetaTensor

from bundle.core.geometry import super_resolution_affine
from bundle.data.dicom_series import LoadImageOrSeriesd, dicom_series_items
from bundle.data.orientation import RestoreOrientationd, ToTrainingOrientationd, axcodes_of
from bundle.data.transforms import SuperResolutionAffined


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("codes", ["LAS", "RPI", "ASL", "SLP"])
def test_to_training_orientation_and_back_is_exact(codes):
    """A volume stored in `codes` reaches the network in RAS; its SR grid goes back to `codes` with the SR affine
    of the stored volume (nearest-neighbour x4 stands in for the network, so the expected SR is known)."""
    rng = np.random.default_rng(0)
    ras = nib.Nifti1Image(rng.random((5, 6, 7)).astype(np.float32), np.diag([2.0, 3.0, 4.0, 1.0]))
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    stored = ras.as_reoriented(ornt)
    image = MetaTensor(
        torch.as_tensor(np.ascontiguousarray(stored.dataobj))[None], affine=torch.as_tensor(stored.affine)
    )
    d = ToTrainingOrientationd("image")({"image": image})
    assert axcodes_of(d["image"].affine) == "RAS" and d["image"].meta["sr_original_axcodes"] == codes
    assert torch.equal(d["image"].as_tensor()[0], torch.as_tensor(np.asarray(ras.dataobj)))
    d["pred"] = torch.as_tensor(d["image"]).repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    d = RestoreOrientationd("pred")(SuperResolutionAffined("pred")(d))
    expected = torch.as_tensor(image).repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.equal(d["pred"].as_tensor(), expected)
    np.testing.assert_allclose(d["pred"].affine.numpy(), super_resolution_affine(image.affine, (4, 4, 4)), atol=1e-9)


def test_bad_orientation_code_is_refused():
    with pytest.raises(ValueError, match="three-letter orientation code"):
        ToTrainingOrientationd("image", axcodes="RRS")


def canonical_sr(path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(path))
    return img.get_fdata(), img.affine


def test_flipped_permuted_and_dicom_copies_give_the_same_sr(tmp_path):
    """One scan stored four ways (DICOM series, NIfTI in RAS, z-flipped, axes permuted) -> the same SR, stored as
    its input was; a random-weight network is as orientation-sensitive as a trained one."""
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(tiny_generator().state_dict(), ckpt)
    inp = tmp_path / "in"
    write_series(inp / "series", n=12, signed=False)  # oblique, LPS-stored, values 0..999
    item = dicom_series_items(inp / "series")[0]
    lr = LoadImageOrSeriesd("image")(item)["image"]
    lr = lr[0] if lr.ndim == 4 else lr
    ras = nib.as_closest_canonical(nib.Nifti1Image(lr.numpy().astype(np.float32), lr.affine.numpy()))
    assert axcodes_of(lr.affine) != "RAS"  # so that the DICOM and the NIfTI are stored differently
    nib.save(ras, inp / "scan.nii.gz")
    nib.save(ras.as_reoriented(np.array([[0, 1], [1, 1], [2, -1]])), inp / "flipped.nii.gz")  # z-flipped storage
    swap = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("ASR"))
    nib.save(ras.as_reoriented(swap), inp / "permuted.nii.gz")
    out = tmp_path / "out"
    ok(run_bundle(
        "run", "inference", "--config_file", INFER, "--input_dir", str(inp), "--output_dir", str(out),
        "--ckpt_path", str(ckpt), "--uncertainty", "0",
    ))  # fmt: skip
    reference, affine = canonical_sr(out / "scan_sr.nii.gz")
    span = reference.max() - reference.min()
    for name in ("flipped", "permuted", "series"):
        sr, sr_affine = canonical_sr(out / f"{name}_sr.nii.gz")
        assert sr.shape == reference.shape, name
        np.testing.assert_allclose(sr_affine, affine, atol=1e-3, err_msg=name)
        assert np.abs(sr - reference).max() <= 1e-4 * span, name
    stored = nib.load(out / "flipped_sr.nii.gz")
    assert nib.aff2axcodes(stored.affine) == nib.aff2axcodes(nib.load(inp / "flipped.nii.gz").affine)  # as stored

    # non-negative magnitude input -> non-negative SR (the random network undershoots without the clamp)
    assert reference.min() >= 0
    summary = json.loads((out / "scan_sr.json").read_text())
    assert summary["units"].startswith("input intensity units")
    ((low, high),) = summary["intensity_range"]
    consistency = nib.load(out / "scan_consistency.nii.gz").get_fdata()
    sr_stored = nib.load(out / "scan_sr.nii.gz").get_fdata()
    mask = sr_stored > low + 0.05 * (high - low)  # the summary's foreground (SR above 5% of the robust range)
    assert summary["consistency_residual_mean"] == pytest.approx(consistency[mask].mean(), rel=1e-3)
    assert summary["normalised"]["consistency_residual_mean"] == pytest.approx(
        summary["consistency_residual_mean"] / (high - low), rel=1e-6
    )
