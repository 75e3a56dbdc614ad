"""What inference says about the SR it wrote, in the log and in `<name>_sr.json`: a thick-slice input (the output
keeps its thick slices; `run adapting` is the tool for them) and which SR was written under `--uncertainty N`."""

import json

from conftest import infer, lr_volume, ok


def warning_lines(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if " - WARNING - " in line and text in line]


def test_thick_slice_scan_warns_once_naming_run_adapting_and_the_summary_says_so(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "thick.nii.gz", shape=(12, 12, 4), spacing=(1.0, 1.0, 5.0))
    lr_volume(inp / "iso.nii.gz", shape=(10, 10, 8), spacing=(1.0, 1.0, 1.2))
    log = ok(infer(trained, inp, tmp_path / "out", "--sliding_window", "False"))
    warned = warning_lines(log, "run adapting")
    assert len(warned) == 1, log[-3000:]
    assert "thick.nii.gz" in warned[0] and "[1, 1, 5] mm" in warned[0], warned[0]
    assert "[0.25, 0.25, 1.25] mm" in warned[0], warned[0]  # what the user gets instead
    thick = json.loads((tmp_path / "out" / "thick_sr.json").read_text())
    assert thick["input_spacing_mm"] == [1.0, 1.0, 5.0]
    assert "run adapting" in thick["spacing_warning"] and "thick.nii.gz" in thick["spacing_warning"]
    iso = json.loads((tmp_path / "out" / "iso_sr.json").read_text())
    assert iso["input_spacing_mm"] == [1.0, 1.0, 1.2] and iso["spacing_warning"] is None


def test_thick_slice_rule_is_the_adapting_workflows_and_a_slice_axis_scale_clears_it():
    import torch
    from monai.data import MetaTensor

    from bundle.adaptation.geometry import MIN_RATIO, find_geometry
    from bundle.inference.spacing import thick_slice_warning

    def scan(spacing):
        return MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([*spacing, 1.0])))

    below, above = (1.0, 1.0, 0.99 * MIN_RATIO), (1.0, 1.0, 1.01 * MIN_RATIO)
    assert thick_slice_warning(scan(below), "a.nii", 4) is None
    assert thick_slice_warning(scan(above), "a.nii", 4) is not None
    find_geometry(above)  # adapting takes it
    # a model trained for thick slices (scale [1, 1, 4], configs/thick_slice.json) makes the output near isotropic
    assert thick_slice_warning(scan((1.0, 1.0, 5.0)), "a.nii", (1, 1, 4)) is None


def calibration_file(path, sr_output: str, passes: int) -> str:
    record = {"lambda": 2.0, "coverage_target": 0.9, "coverage_reached": 0.9, "tta_passes": passes}
    record.update({"std_floor": 1e-3, "num_voxels": 100, "num_volumes": 1, "sr_output": sr_output})
    path.write_text(json.dumps(record))
    return str(path)


def test_uncertainty_says_when_the_written_sr_is_the_tta_mean(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "scan.nii.gz", spacing=(2.0, 2.0, 2.0))
    common = ("--sliding_window", "False", "--uncertainty", "2", "--calibration_path")
    mean_log = ok(infer(trained, inp, tmp_path / "mean", *common, calibration_file(tmp_path / "m.json", "tta_mean", 2)))
    said = [line for line in mean_log.splitlines() if "mean of 2 test-time augmentation passes" in line]
    assert len(said) == 1, mean_log[-3000:]
    assert json.loads((tmp_path / "mean" / "scan_sr.json").read_text())["sr_output"] == "tta_mean"
    single_log = ok(
        infer(trained, inp, tmp_path / "single", *common, calibration_file(tmp_path / "s.json", "single", 2))
    )
    assert "test-time augmentation passes" not in single_log
    assert json.loads((tmp_path / "single" / "scan_sr.json").read_text())["sr_output"] == "single"
    off_log = ok(infer(trained, inp, tmp_path / "off", "--sliding_window", "False"))
    assert "test-time augmentation passes" not in off_log
    assert json.loads((tmp_path / "off" / "scan_sr.json").read_text())["sr_output"] == "single"
