"""`python -m monai.bundle` as a user types it, each in a new process (marker `integration`)."""

import csv
import subprocess
import sys

import nibabel as nib
import pytest
import torch
from conftest import INFER, ROOT, TRAIN, lr_volume, ok, run_bundle_subprocess, tiny_generator


@pytest.mark.slow  # 31 s: two torchrun processes; the multi-GPU path, run by `make test-slow`
@pytest.mark.integration
def test_ddp_training_two_processes_gloo(tiny_dataset, tmp_path):
    """A real 2-process DDP run on CPU (gloo) through torchrun and the bundle runner."""
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
        "-m", "monai.bundle", "run", "training",
        "--config_file", "['configs/train.json','configs/demo.json','configs/tiny.json','configs/multi_gpu_train.json']",
        "--dataset_dir", str(tiny_dataset), "--max_epochs", "2", "--num_val", "2",
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "train_log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # written once, by rank 0 only
    assert int(rows[0]["iterations"]) == 1  # 1 training volume, padded to one per rank
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "conv_first.weight" in state  # saved unwrapped from DDP
    assert log.count("Saved checkpoint at epoch: 2") == 1


@pytest.mark.integration
def test_bundle_copied_elsewhere_runs_inference(trained, tmp_path):
    import shutil

    work = trained[0]
    copy = tmp_path / "sr_bundle"
    for name in ("configs", "bundle", "LICENSE"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / name)
    (copy / "models").mkdir()
    shutil.copy(work / "models" / "model.pt", copy / "models" / "model.pt")
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "scan.nii.gz", shape=(10, 10, 6))
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    cfg = f"['{copy}/configs/inference.json','{copy}/configs/demo.json','{copy}/configs/tiny.json']"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", cfg, "--bundle_root", str(copy),
         "--input_dir", str(inp)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)
    assert nib.load(copy / "outputs" / "sr" / "scan_sr.nii.gz").shape == (40, 40, 24)


@pytest.mark.integration
def test_readme_commands_as_typed(tiny_dataset, tmp_path):
    """Training, inference and a bad value, each `python -m monai.bundle run ...` in its own process as the
    README gives it: the paths that no in-process test can stand in for (interpreter start, sys.path from
    bundle_root, the one-line error printed by Python itself, exit status)."""
    models, out = tmp_path / "models", tmp_path / "out"
    ok(run_bundle_subprocess(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset), "--max_epochs", "1",
        "--ckpt_dir", str(models), "--output_dir", str(out),
    ))  # fmt: skip
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "scan.nii.gz", shape=(10, 9, 6))
    ok(run_bundle_subprocess(
        "run", "inference", "--config_file", INFER, "--input_dir", str(inp), "--output_dir", str(tmp_path / "sr"),
        "--ckpt_path", str(models / "model.pt"),
    ))  # fmt: skip
    assert nib.load(tmp_path / "sr" / "scan_sr.nii.gz").shape == (40, 36, 24)
    bad = run_bundle_subprocess("run", "training", "--config_file", TRAIN, "--max_epochs", "abc")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == "error: config id max_epochs: expected an integer >= 1, got 'abc'"


@pytest.mark.integration
def test_ckpt_export_torchscript_gives_same_output(trained, tmp_path):
    work = trained[0]
    ts = tmp_path / "model.ts"
    ok(
        run_bundle_subprocess(
            "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(work / "models" / "model.pt"),
            "--meta_file", "configs/metadata.json", "--config_file", "['configs/inference.json','configs/tiny.json']",
        )
    )  # fmt: skip
    net = tiny_generator().eval()
    net.load_state_dict(torch.load(work / "models" / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(ts))
    x = torch.rand(1, 1, 6, 5, 4)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


@pytest.mark.integration
def test_verify_net_in_out():
    out = ok(
        run_bundle_subprocess(
            "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file",
            "configs/inference.json",
        )
    )  # fmt: skip
    assert "data shape of network is verified with no error" in out
