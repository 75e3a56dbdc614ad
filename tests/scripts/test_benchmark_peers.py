"""scripts/benchmark_peers.py's own method "adapt" (the bundle's per-scan workflow, wired in above the evaluation
stage); the benchmark itself: tests/evaluation/test_peers.py, its packaged scans: tests/evaluation/test_real_scans.py.
"""

import sys

import benchmark_peers as bp
import nibabel as nib
import numpy as np

from bundle.evaluation.peers.cases import Case


def _case(tmp_path):
    folder = tmp_path / "thick" / "thin" / "box_x4"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 8), np.float32), np.eye(4)), folder / "hr.nii.gz")  # 1 mm thin slices
    return Case("thin", "box_x4", folder, 2, 4.0, "box")


def test_adapt_is_unavailable_without_its_config(tmp_path, monkeypatch):
    monkeypatch.setattr(bp, "ADAPT_CONFIG", tmp_path / "no_adapt.json")
    plan = bp.PLANNERS["adapt"](_case(tmp_path), tmp_path / "w", 60)
    assert plan.cmd is None and "not available on this checkout" in plan.unavailable


def test_adapt_runs_the_one_command_line_when_its_config_exists(tmp_path, monkeypatch):
    case = _case(tmp_path)
    config = tmp_path / "adapt.json"
    config.write_text("{}")
    monkeypatch.setattr(bp, "ADAPT_CONFIG", config)
    plan = bp.plan_adapt(case, tmp_path / "work dir", 600)
    assert plan.cmd.startswith(f"{sys.executable} -m monai.bundle run adapting --config_file")
    assert f"--input_image {case.thick}" in plan.cmd and "--output_dir '" in plan.cmd and "--max_minutes 9" in plan.cmd
    assert "--slice_profile" not in plan.cmd and "--slice_thickness" not in plan.cmd  # told nothing: it estimates
    told = bp.plan_adapt_told(case, tmp_path / "work dir", 600)
    assert told.cmd.endswith("--slice_profile box --slice_thickness 4")  # the simulated profile, in mm
    assert plan.output.name == "thick_sr.nii.gz"  # <scan name>_sr.nii.gz for the input thick.nii.gz
    # the note says whether the workflow starts from a template prior (its `warm_start: auto`) or from scratch
    priors = tmp_path / "models" / "adapt_priors"
    monkeypatch.setattr(bp, "ROOT", tmp_path)
    monkeypatch.setattr(bp, "ADAPT_PRIORS", priors)
    assert bp.plan_adapt(case, tmp_path / "w", 600).note == "from scratch (no prior: `make priors`)"
    priors.mkdir(parents=True)
    (priors / "box_x4.pt").write_bytes(b"")
    assert bp.plan_adapt_told(case, tmp_path / "w", 600).note == "warm start: models/adapt_priors/box_x4.pt"
    assert bp.plan_adapt(case, tmp_path / "w", 600).note == "from scratch (no prior: `make priors`)"  # gaussian's
