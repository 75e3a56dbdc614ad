"""scripts/benchmark_peers.py's own method "adapt" (the bundle's per-scan workflow, wired in above the evaluation
stage), and make_real_scans' packaged scans; the benchmark itself: tests/evaluation/test_peers.py."""

import sys

import benchmark_peers as bp
import nibabel as nib
import numpy as np
import pytest

from bundle.evaluation.peers.cases import Case


def _case(tmp_path):
    folder = tmp_path / "thick" / "thin" / "box_x4"
    folder.mkdir(parents=True)
    return Case("thin", "box_x4", folder, 2, 4.0, "box")


def test_adapt_is_unavailable_without_its_config(tmp_path, monkeypatch):
    monkeypatch.setattr(bp, "ADAPT_CONFIG", tmp_path / "no_adapt.json")
    plan = bp.PLANNERS["adapt"](_case(tmp_path), tmp_path / "w", 60)
    assert plan.cmd is None and "not available on this checkout" in plan.unavailable


def test_packaged_scan_is_read_from_the_cached_archive_and_checked(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    import make_real_scans as mrs

    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([1.0, 1.0, 1.0, 1.0]))
    payload = img.to_bytes()
    cache = tmp_path / "wheels"
    cache.mkdir()
    with tarfile.open(cache / "fakepkg-1.0.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("fakepkg-1.0/data/scan.nii")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached archive must not be downloaded again")

    monkeypatch.setattr(mrs.subprocess, "run", no_network)
    good = mrs.PackagedFile("fakepkg", "1.0", "fakepkg-1.0/data/scan.nii", hashlib.sha256(payload).hexdigest(), "MIT")
    np.testing.assert_array_equal(mrs.load_scan(good, cache).get_fdata(), img.get_fdata())
    bad = mrs.PackagedFile("fakepkg", "1.0", "fakepkg-1.0/data/scan.nii", "0" * 64, "MIT")
    with pytest.raises(SystemExit, match="SHA-256"):
        mrs.load_scan(bad, cache)
    with pytest.raises(SystemExit, match="unknown scan"):
        mrs.select_scans("T1_nibabel,nope")
    assert mrs.select_scans("demo") == ["T1_nibabel", "EPI_nibabel", "T1_pycortex_S1_crop96"]
    assert mrs.select_scans("all") == ["T1_nibabel", "EPI_nibabel", "T1_pycortex_S1"]  # as shipped: no crops


def test_adapt_runs_the_one_command_line_when_its_config_exists(tmp_path, monkeypatch):
    case = _case(tmp_path)
    config = tmp_path / "adapt.json"
    config.write_text("{}")
    monkeypatch.setattr(bp, "ADAPT_CONFIG", config)
    plan = bp.plan_adapt(case, tmp_path / "work dir", 600)
    assert plan.cmd.startswith(f"{sys.executable} -m monai.bundle run adapting --config_file")
    assert f"--input_image {case.thick}" in plan.cmd and "--output_dir '" in plan.cmd and "--max_minutes 9" in plan.cmd
    assert plan.cmd.endswith("--slice_profile box")  # the workflow models the simulated profile, not its default
    assert plan.output.name == "thick_sr.nii.gz"  # <scan name>_sr.nii.gz for the input thick.nii.gz
    # the note says whether the workflow starts from a template prior (its `warm_start: auto`) or from scratch
    priors = tmp_path / "models" / "adapt_priors"
    monkeypatch.setattr(bp, "ROOT", tmp_path)
    monkeypatch.setattr(bp, "ADAPT_PRIORS", priors)
    assert bp.plan_adapt(case, tmp_path / "w", 600).note == "from scratch (no prior: `make priors`)"
    priors.mkdir(parents=True)
    (priors / "box_x4.pt").write_bytes(b"")
    assert bp.plan_adapt(case, tmp_path / "w", 600).note == "warm start: models/adapt_priors/box_x4.pt"
