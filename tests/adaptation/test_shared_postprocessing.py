"""Per-scan adaptation post-processes as inference does: the same normalisation and outlier guard, the same
consistency step (its map of the network's output before projection), non-negative rule and calibrated bound."""

import json

import nibabel as nib
import numpy as np
import torch
from conftest import ok
from monai.data import MetaTensor
from test_adapting_workflow import adapt, thick_scan

import bundle.adaptation.workflow as workflow
from bundle.data.operators import consistency_map
from bundle.data.robust_intensity import OUTLIER_KEY, robust_normalise, robust_range
from bundle.data.transforms import RobustNormalised
from bundle.trust import record as trust_record
from bundle.trust import units
from bundle.trust.consistency import ConsistencyStep


def test_adapting_calls_inference_s_functions_for_each_step():
    assert workflow.robust_normalise is robust_normalise
    assert workflow.ConsistencyStep is ConsistencyStep
    assert workflow.nonnegative_applies is units.nonnegative_applies
    assert workflow.calibrated_uncertainty is trust_record.calibrated_uncertainty


def test_adapting_s_consistency_map_measures_the_network_output_before_projection(tmp_path, monkeypatch):
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (SR in, LR, output) of the whole-scan step
    bounds: list[torch.Tensor] = []
    call, bound = ConsistencyStep.__call__, trust_record.calibrated_uncertainty

    def recording_call(self, sr, lr):
        result = call(self, sr, lr)
        if sr.dim() == 4:  # the whole scan (the held-out images come as a batch)
            steps.append((sr.clone(), lr.clone(), result.output.clone()))
        return result

    def recording_bound(std, calibration):
        bounds.append(bound(std, calibration))
        return bounds[-1]

    monkeypatch.setattr(ConsistencyStep, "__call__", recording_call)
    monkeypatch.setattr(workflow, "calibrated_uncertainty", recording_bound)
    scan, out = tmp_path / "p.nii.gz", tmp_path / "out"
    thick_scan(scan, seed=2)
    ok(adapt(scan, out, "--adapt_fit#max_iterations", "5", "--consistency", "project", "--uncertainty", "2"))
    summary = json.loads((out / "p_sr.json").read_text())
    lo, hi = robust_range(torch.from_numpy(np.asarray(nib.load(scan).dataobj, dtype=np.float32)))
    (sr, lr, projected), span = steps[0], hi - lo  # the first: the SR (then the members, for their spread)
    written = torch.from_numpy(np.asarray(nib.load(out / "p_consistency.nii.gz").dataobj, dtype=np.float32))
    fwhm = summary["geometry"]["thickness"] / 4  # 1 mm in-plane, x4
    before = consistency_map(sr, lr, (1, 1, 4), "gaussian", fwhm)[0] * span
    after = consistency_map(projected, lr, (1, 1, 4), "gaussian", fwhm)[0] * span
    assert torch.allclose(written, before, atol=1e-3 * span)  # the map of the output before projection ...
    assert float(written.max()) > 100 * float(after.max()) and float(written.max()) > 1e-3 * span  # ... not ~0
    assert summary["consistency_step"]["map"] == "of the network's output before projection"
    if summary["fallback_to_bspline"]:
        assert summary["missing"] == ["calibration"] and not (out / "p_uncertainty.nii.gz").exists()
    else:  # the bound is inference's function, on the calibration adapting made (its floor recorded), shrunk for
        # the average of the orientations and turns by the factor the summary gives
        uncertainty = np.asarray(nib.load(out / "p_uncertainty.nii.gz").dataobj, dtype=np.float32)
        u = summary["uncertainty"]
        shrink = u["ensemble"]["shrink"]
        assert np.allclose(uncertainty, bounds[-1][None].numpy()[0] * shrink * span, rtol=1e-5)
        assert u["consistency_mode"] == "project" and summary["missing"] == []
        floor = u["lambda"] * u["std_floor"] * span / u["ensemble"]["members"] ** 0.5
        assert uncertainty.min() >= floor * (1 - 1e-4)
    # under "project" inference's non-negative rule leaves the projected SR as it is (a clamp would undo it)
    assert not units.nonnegative_applies("auto", 100.0, consistency="project")


def test_adapting_and_inference_normalise_alike_and_the_outlier_guard_fires_in_both(tmp_path):
    scan, out = tmp_path / "s.nii.gz", tmp_path / "out"
    thick_scan(scan, seed=3)
    image = nib.load(scan)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[3, 4, 5], data[10, 11, 2] = 1e30, 5e29  # a corrupted conversion: two voxels far beyond the tissue
    nib.save(nib.Nifti1Image(data, image.affine), scan)
    volume = torch.from_numpy(data)
    inference = RobustNormalised("image", clip=False)({"image": MetaTensor(volume[None])})["image"]
    adapting, ranges, record = robust_normalise(volume[None], str(scan))
    assert torch.equal(inference.as_tensor(), adapting) and float(adapting.max()) == 4.0  # clamped at 1 + 3
    assert json.loads(inference.meta[OUTLIER_KEY]) == record and record["clipped_voxels"] == 2
    ok(adapt(scan, out, "--adapt_fit#max_iterations", "1", "--uncertainty", "1", "--consistency", "map"))
    summary = json.loads((out / "s_sr.json").read_text())
    assert summary["input_outliers"] == json.loads(json.dumps(record))  # the guard fired in adapting too
    sr = np.asarray(nib.load(out / "s_sr.nii.gz").dataobj)
    assert np.isfinite(sr).all() and sr.max() < 5 * ranges[0][1]  # no spike reached the network
