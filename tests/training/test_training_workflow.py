"""Training through the bundle runner (in-process): loss terms, checkpoints, resume, determinism, divergence,
thick-slice geometry."""

import csv
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, TRAIN, lr_volume, ok, run_bundle


def test_training_logs_terms_writes_checkpoints_and_loss_falls(trained):
    work, log, _ = trained
    for term in ("mse=", "ssim=", "perceptual=", "adversarial=", "discriminator=", "perceptual_seconds="):
        assert term in log
    assert "weights from random initialisation" in log  # the VGG choice is logged
    assert (work / "models" / "model.pt").is_file()
    assert list((work / "models").glob("checkpoint*.pt"))
    rows = list(csv.DictReader(open(work / "outputs" / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_total"]) < float(rows[0]["train_total"])
    assert float(rows[0]["patches_per_second"]) > 0
    state = torch.load(work / "models" / "model.pt", weights_only=True)
    assert "conv_first.weight" in state


def test_second_run_resumes_from_latest_checkpoint(trained):
    _, _, resumed = trained
    assert "resuming from" in resumed and "epoch=3.pt" in resumed
    assert "Epoch[4] Complete" in resumed and "Epoch[1] Complete" not in resumed


@pytest.mark.slow
def test_killed_run_resumes(tiny_dataset, tmp_path):
    args = ["run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset)]
    args += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"), "--max_epochs", "50"]
    proc = subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "models").glob("checkpoint*.pt")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from bundle.training.checkpoints import list_checkpoints

    epoch, last = list_checkpoints(tmp_path / "models")[-1]
    args[args.index("--max_epochs") + 1] = str(epoch + 1)
    out = ok(run_bundle(*args))
    assert f"resuming from {last}" in out and f"Epoch[{epoch + 1}] Complete" in out
    assert f"Epoch[{epoch}] Complete" not in out


def _iteration_losses(log: str, epoch: int) -> list[str]:
    import re

    return re.findall(rf"epoch {epoch} iteration \d+: total=(\S+) mse=(\S+)", log)


def test_fixed_seed_repeats_and_resumed_run_matches_uninterrupted(tiny_dataset, tmp_path):
    def train(name: str, epochs: int) -> str:
        return ok(
            run_bundle(
                "run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset),
                "--ckpt_dir", str(tmp_path / name / "models"), "--output_dir", str(tmp_path / name / "out"),
                "--max_epochs", str(epochs), "--val_interval", "100",
            )
        )  # fmt: skip

    straight = train("straight", 2)
    first = train("interrupted", 1)
    resumed = train("interrupted", 2)
    assert "resuming from" in resumed
    # the same seed gives the same first epoch, iteration by iteration
    assert _iteration_losses(straight, 1) == _iteration_losses(first, 1) != []
    # after resuming, the next epoch's losses match the uninterrupted run
    a, b = _iteration_losses(straight, 2), _iteration_losses(resumed, 2)
    assert len(a) == len(b) == 2
    for (ta, ma), (tb, mb) in zip(a, b, strict=True):
        assert abs(float(ta) - float(tb)) <= 1e-3 * abs(float(ta)) and abs(float(ma) - float(mb)) <= 1e-3 * float(ma)


def test_diverging_training_stops_with_one_line_and_keeps_no_broken_weights(tiny_dataset, tmp_path):
    models = tmp_path / "models"
    args = ["run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset)]
    args += ["--ckpt_dir", str(models), "--output_dir", str(tmp_path / "out")]
    ok(run_bundle(*args, "--max_epochs", "1"))  # one good epoch: a checkpoint and model.pt
    good = torch.load(models / "model.pt", weights_only=True)
    proc = run_bundle(*args, "--max_epochs", "3", "--learning_rate", "1e6", "--d_learning_rate", "1e6")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: training diverged at epoch 2, iteration"), errors
    assert "loss" in errors[0] or "gradient" in errors[0]
    kept = torch.load(models / "model.pt", weights_only=True)
    assert all(torch.equal(good[k], kept[k]) for k in good)  # model.pt untouched
    from bundle.training.checkpoints import is_finite_state, list_checkpoints

    for _, path in list_checkpoints(models):
        assert is_finite_state(torch.load(path, weights_only=True)["network"])[0], path


def test_thick_slice_mode_only_divides_the_slice_spacing(tiny_dataset, tmp_path):
    configs = "['configs/train.json','configs/demo.json','configs/thick_slice.json','configs/tiny.json']"
    ok(run_bundle(
        "run", "training", "--config_file", configs, "--dataset_dir", str(tiny_dataset), "--max_epochs", "1",
        "--lr_patch_size", "[16,16,4]", "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "o"),
    ))  # fmt: skip
    inp = tmp_path / "in"
    inp.mkdir()
    affine = lr_volume(inp / "thick.nii.gz", shape=(12, 10, 6), spacing=(0.9, 0.9, 5.0))
    infer_cfg = "['configs/inference.json','configs/demo.json','configs/thick_slice.json','configs/tiny.json']"
    ok(run_bundle(
        "run", "inference", "--config_file", infer_cfg, "--input_dir", str(inp), "--output_dir", str(tmp_path / "sr"),
        "--ckpt_path", str(tmp_path / "models" / "model.pt"),
    ))  # fmt: skip
    img = nib.load(tmp_path / "sr" / "thick_sr.nii.gz")
    assert img.shape == (12, 10, 24)
    assert np.allclose(img.header.get_zooms(), (0.9, 0.9, 1.25))
    assert np.allclose(img.affine[:3, 3], affine[:3, 3] + np.array([0.0, 0.0, 5.0 * (1 / 4 - 1) / 2]))
    assert nib.load(tmp_path / "sr" / "thick_consistency.nii.gz").shape == (12, 10, 24)
