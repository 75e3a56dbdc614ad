"""Inference output names: no collisions, no foreign file overwritten, own outputs never taken as inputs."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.core.errors import OutputError
from bundle.data.datalist import inference_datalist
from bundle.inference.output_names import (
    MANIFEST_NAME,
    OutputPlan,
    check_writable,
    plan_outputs,
    read_manifest,
    record_outputs,
)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def nifti(path, value: float = 1.0):
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), value, np.float32), np.eye(4)), path)
    return path


def names(planned):
    return {os.path.basename(p["source"]): os.path.basename(p["output"]) for p in planned}


def save_like_inference(plan: OutputPlan, item: dict) -> None:
    """The postprocessing tail of inference.json: the SR writer, with the item's planned name."""
    from bundle.inference.writer import SaveSROutputsd

    pred = MetaTensor(torch.ones(1, 4, 4, 4), affine=torch.eye(4))
    SaveSROutputsd(output_dir=str(plan.output_dir))({"pred": pred, **item})


def test_same_stem_inputs_get_distinct_readable_names(tmp_path):
    for name in ("case.mha", "case.nii.gz", "other.nii.gz"):
        touch(tmp_path / "in" / name)
    planned = plan_outputs(inference_datalist(tmp_path / "in"), tmp_path / "out")
    assert names(planned) == {
        "case.mha": "case_mha_sr.nii.gz",
        "case.nii.gz": "case_nii_sr.nii.gz",
        "other.nii.gz": "other_sr.nii.gz",
    }
    assert all(p["output"].startswith(str(tmp_path / "out")) for p in planned)


def test_nii_and_nii_gz_and_dicom_folder_stay_apart(tmp_path):
    for name in ("case.nii", "case.nii.gz", "series/1.dcm", "Series.mha"):
        touch(tmp_path / "in" / name)
    items = [{"image": str(tmp_path / "in" / n)} for n in ("case.nii", "case.nii.gz", "series", "Series.mha")]
    planned = plan_outputs(items, tmp_path / "out")
    assert [p["output_name"] for p in planned] == ["case_nii", "case_nii_gz", "series_dicom", "Series_mha"]


def test_unresolvable_collision_names_both_inputs(tmp_path):
    items = [{"image": str(touch(tmp_path / n))} for n in ("case.mha", "case.nii.gz", "case_mha.nii")]
    with pytest.raises(OutputError) as err:
        plan_outputs(items, tmp_path / "out")
    text = str(err.value)
    assert "case_mha.nii: would write the same output name 'case_mha'" in text and "case.mha" in text
    assert "\n" not in text and err.value.code == f"error: {text}"


def test_rerun_in_place_skips_own_outputs_and_may_replace_them(tmp_path, caplog):
    folder = tmp_path / "scans"
    folder.mkdir()
    nifti(folder / "scan.nii.gz")
    plan = OutputPlan(inference_datalist(folder), folder)
    assert names(plan.items) == {"scan.nii.gz": "scan_sr.nii.gz"}
    save_like_inference(plan, plan.items[0])
    assert (folder / "scan_sr.nii.gz").is_file()
    assert read_manifest(folder)["scan_sr.nii.gz"] == {"input": str(folder / "scan.nii.gz"), "complete": True}
    assert not list(folder.glob(".*.tmp"))

    listed = [os.path.basename(i["image"]) for i in inference_datalist(folder)]
    assert listed == ["scan.nii.gz", "scan_sr.nii.gz"]  # the folder listing alone would take the output
    with caplog.at_level(logging.INFO, logger="bundle.inference.output_names"):
        again = OutputPlan(inference_datalist(folder), folder)
    assert names(again.items) == {"scan.nii.gz": "scan_sr.nii.gz"}  # own earlier output: may be replaced
    assert "scan_sr.nii.gz: skipped, an output of an earlier run" in caplog.text


def test_foreign_file_named_like_an_output_is_an_input_and_never_overwritten(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    nifti(folder / "scan.nii.gz")
    nifti(folder / "scan_sr.nii.gz", 2.0)  # the user's own file, not ours
    with pytest.raises(OutputError) as err:
        plan_outputs(inference_datalist(folder), folder)
    text = str(err.value)
    assert text.startswith(f"{folder / 'scan_sr.nii.gz'}: exists and is not an earlier output of ")
    assert str(folder / "scan.nii.gz") in text and "--output_dir" in text and "\n" not in text
    # into another folder both are real inputs
    planned = plan_outputs(inference_datalist(folder), tmp_path / "out")
    assert names(planned) == {"scan.nii.gz": "scan_sr.nii.gz", "scan_sr.nii.gz": "scan_sr_sr.nii.gz"}


def test_output_of_another_input_is_not_overwritten(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = nifti(tmp_path / "a" / "case.nii.gz"), nifti(tmp_path / "b" / "case.nii.gz", 3.0)
    out = tmp_path / "out"
    plan = OutputPlan([{"image": str(a)}], out)
    save_like_inference(plan, plan.items[0])
    with pytest.raises(OutputError, match=r"case_sr\.nii\.gz: exists and is not an earlier output of .*b"):
        plan_outputs([{"image": str(b)}], out)
    assert plan_outputs([{"image": str(a)}], out)[0]["output"] == str(out / "case_sr.nii.gz")


def test_pending_output_of_a_crashed_run_may_be_replaced(tmp_path):
    src = nifti(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    record_outputs(out, ["scan_sr.nii.gz"], str(src), complete=False)  # what the writer records first
    touch(out / "scan_sr.nii.gz")  # half-written when the run died
    assert read_manifest(out)["scan_sr.nii.gz"]["complete"] is False
    assert plan_outputs([{"image": str(src)}], out)[0]["output_name"] == "scan"


def test_dotted_stem_reaches_save_imaged_intact(tmp_path):
    src = nifti(tmp_path / "sub-01.run1.nii.gz")
    plan = OutputPlan([{"image": str(src)}], tmp_path / "out")
    save_like_inference(plan, plan.items[0])
    assert plan.items[0]["output"] == str(tmp_path / "out" / "sub-01.run1_sr.nii.gz")
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST_NAME, "sub-01.run1_sr.json", "sub-01.run1_sr.nii.gz"]
    assert nib.load(plan.items[0]["output"]).shape == (4, 4, 4)


def test_check_writable_leaves_nothing_not_even_the_folder(tmp_path):
    folder = check_writable(tmp_path / "a" / "b")
    assert folder == tmp_path / "a" / "b" and os.listdir(tmp_path) == []  # made at the first write
    (tmp_path / "c").mkdir()
    assert check_writable(tmp_path / "c") == tmp_path / "c" and os.listdir(tmp_path / "c") == []


def test_unwritable_output_folder_is_one_line(tmp_path):
    touch(tmp_path / "file")
    with pytest.raises(OutputError) as err:
        check_writable(tmp_path / "file" / "out")
    assert str(err.value).startswith(f"{tmp_path / 'file' / 'out'}: cannot write output there (")
    assert "--output_dir" in str(err.value) and "\n" not in str(err.value)


def test_read_only_output_folder_is_one_line(tmp_path):
    """A folder that refuses writes, also for root (who ignores permission bits): a read-only bind would need
    mounts, so the write itself is made to fail as the kernel would (EACCES / EROFS)."""
    import errno

    folder = tmp_path / "ro"
    folder.mkdir()
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", refuse)
        with pytest.raises(OutputError, match="cannot write output there .*Read-only file system"):
            check_writable(folder)
    assert list(folder.iterdir()) == []


def test_corrupt_manifest_is_named(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    src = touch(tmp_path / "in" / "scan.nii.gz")
    with pytest.raises(OutputError, match=rf"{MANIFEST_NAME}: unreadable record of earlier outputs"):
        plan_outputs([{"image": str(src)}], tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"outputs": {"x_sr.nii.gz": "no input key"}}))
    with pytest.raises(OutputError, match="unreadable record"):
        read_manifest(tmp_path)
