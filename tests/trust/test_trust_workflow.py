"""Trust outputs through the bundle runner (in-process): calibration, uncertainty and consistency maps, trust
summary, projection."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import infer, lr_volume, ok, run_bundle


def test_inference_writes_consistency_uncertainty_and_trust_summary(trained, tiny_dataset, tmp_path):
    # a copy of the shared trained model: the calibration written beside it must not reach other tests' inference
    work = tmp_path / "run"
    shutil.copytree(trained[0] / "models", work / "models")
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "scan.nii.gz", shape=(10, 9, 6))
    ok(run_bundle(
        "run", "calibrating", "--config_file", "['configs/train.json','configs/calibrate.json','configs/demo.json',"
        "'configs/tiny.json']", "--dataset_dir", str(tiny_dataset), "--ckpt_dir", str(work / "models"),
        "--output_dir", str(work / "outputs"), "--uncertainty", "4",
    ))  # fmt: skip
    calibration = json.loads((work / "models" / "calibration.json").read_text())
    assert calibration["tta_passes"] == 4 and calibration["lambda"] > 0 and calibration["coverage_reached"] >= 0.9
    report = json.loads((work / "models" / "calibration_report.json").read_text())
    # the out-of-distribution rows cover every degradation of eval_lr_methods, the noisy LR included
    assert {r["degradation"] for r in report["ood_rows"]} == {"kspace", "kspace_hamming", "area", "gaussian", "noisy"}
    ok(infer((work,), inp, tmp_path / "out", "--uncertainty", "4", "--ckpt_dir", str(work / "models")))
    out = tmp_path / "out"
    sr = nib.load(out / "scan_sr.nii.gz")
    for name in ("scan_consistency.nii.gz", "scan_uncertainty.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == sr.shape == (40, 36, 24) and np.allclose(img.affine, sr.affine)
        assert np.isfinite(img.get_fdata()).all() and img.get_fdata().min() >= 0
    summary = json.loads((out / "scan_sr.json").read_text())
    assert summary["missing"] == [] and summary["lambda"] == calibration["lambda"]
    assert 0 <= summary["fraction_above_bound"] <= 1 and summary["calibrated_uncertainty_mean"] > 0
    assert summary["outputs"]["sr"].endswith("scan_sr.nii.gz") and summary["input"].endswith("scan.nii.gz")
    # the calibrated uncertainty map is lambda * std in the input's intensity units: above zero where it matters
    assert nib.load(out / "scan_uncertainty.nii.gz").get_fdata().mean() > 0


@pytest.mark.parametrize("operator", ["area", "kspace", "gaussian"])
def test_projection_makes_the_output_consistent_with_the_input(trained, tmp_path, operator):
    from bundle.data.operators import forward_operator

    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "scan.nii.gz", shape=(10, 9, 6))
    ok(infer(trained, inp, tmp_path / "out", "--consistency", "project", "--consistency_operator", operator))
    sr = torch.as_tensor(nib.load(tmp_path / "out" / "scan_sr.nii.gz").get_fdata())[None]
    lr = torch.as_tensor(nib.load(inp / "scan.nii.gz").get_fdata())[None]
    # D is linear and keeps constants, so D(restored SR) = restored D(normalised SR) = the input itself
    again = forward_operator(sr, (4, 4, 4), operator)
    assert torch.allclose(again, lr, atol=1e-4 * float(lr.abs().max()))
