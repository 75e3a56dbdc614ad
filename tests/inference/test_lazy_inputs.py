"""A bundle's properties are readable before any input exists; inputs are checked (and the output folder locked)
when the workflow runs."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import INFER, ROOT, refused_while_locked, run_bundle, tiny_generator

CONFIGS = [str(ROOT / "configs" / name) for name in ("inference.json", "demo.json", "tiny.json")]


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(tiny_generator().state_dict(), path)
    return path


def test_properties_readable_without_an_input(model, tmp_path):
    from monai.bundle import create_workflow

    missing_input, out = tmp_path / "no_such_input", tmp_path / "out"
    workflow = create_workflow(
        config_file=CONFIGS, workflow_type="inference", bundle_root=str(ROOT), ckpt_path=str(model),
        input_dir=str(missing_input), output_dir=str(out),
    )  # fmt: skip
    assert workflow.check_properties() == []
    for name in workflow.properties:
        getattr(workflow, name)  # every property, `dataset` and `evaluator` included, with no input present
    assert not out.exists()  # reading properties wrote nothing
    with pytest.raises(SystemExit) as err:  # the input check runs when the workflow runs
        workflow.run()
    assert str(missing_input) in str(err.value)
    assert not out.exists()


def test_a_second_inference_into_a_locked_output_folder_stops_in_one_line(model, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 6)).astype(np.float32), np.eye(4)), inp / "a.nii")
    out = tmp_path / "sr"
    args = ["run", "inference", "--config_file", INFER, "--input_dir", str(inp), "--output_dir", str(out)]
    args += ["--ckpt_path", str(model), "--uncertainty", "0", "--sliding_window", "False"]
    assert "--output_dir" in refused_while_locked(out, *args)
    assert sorted(os.listdir(out)) == [".lock"]  # nothing written by the refused run
    done = run_bundle(*args)  # the holder was killed: its lock is taken over
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taking over the lock" in done.stdout + done.stderr
    expected = [".sr_outputs.json", "a_consistency.nii.gz", "a_preview.png", "a_sr.json", "a_sr.nii.gz"]
    assert sorted(os.listdir(out)) == expected
