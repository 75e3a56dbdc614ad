"""End-to-end checks through MONAI's bundle runner: training, resume, inference, evaluation, model-zoo checks."""

import csv
import json
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import EVAL, INFER, ROOT, TRAIN, run_bundle, tiny_generator


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A tiny model trained 3 epochs through the bundle runner, then resumed to 4.

    With the seed's fixed k-space simulation, so that the loss falling over 4 epochs is a fair test (random
    degradations redraw every epoch's inputs; their reproducibility is tested on their own below).
    """
    work = tmp_path_factory.mktemp("run")
    common = ["--config_file", TRAIN, "--dataset_dir", str(tiny_dataset), "--lr_method", "kspace"]
    common += ["--ckpt_dir", str(work / "models"), "--output_dir", str(work / "outputs")]
    first = ok(run_bundle("run", "training", *common, "--max_epochs", "3"))
    second = ok(run_bundle("run", "training", *common, "--max_epochs", "4"))
    return work, first, second


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
    from bundle.checkpoints import list_checkpoints

    epoch, last = list_checkpoints(tmp_path / "models")[-1]
    args[args.index("--max_epochs") + 1] = str(epoch + 1)
    out = ok(run_bundle(*args))
    assert f"resuming from {last}" in out and f"Epoch[{epoch + 1}] Complete" in out
    assert f"Epoch[{epoch}] Complete" not in out


def lr_volume(path, shape=(8, 8, 6), spacing=(2.0, 3.0, 4.0), seed=0):
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) * 100, affine), path)
    return affine


def infer(trained, input_path, output_dir, *extra):
    work = trained[0]
    return run_bundle(
        "run", "inference", "--config_file", INFER, "--input_dir", str(input_path), "--output_dir", str(output_dir),
        "--ckpt_path", str(work / "models" / "model.pt"), *extra,
    )  # fmt: skip


def test_inference_shape_affine_and_sliding_window_agreement(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    affine = lr_volume(inp / "scan.nii.gz", shape=(18, 20, 9))
    ok(infer(trained, inp, tmp_path / "whole", "--sliding_window", "False"))
    ok(infer(trained, inp, tmp_path / "sw", "--sliding_window", "True", "--roi_size", "[12,12,8]"))
    whole = nib.load(tmp_path / "whole" / "scan_sr.nii.gz")
    sw = nib.load(tmp_path / "sw" / "scan_sr.nii.gz")
    assert whole.shape == (72, 80, 36)
    assert np.allclose(whole.header.get_zooms(), (0.5, 0.75, 1.0))
    expected_origin = affine[:3, 3] + np.array([2.0, 3.0, 4.0]) * (1 / 4 - 1) / 2
    assert np.allclose(whole.affine[:3, 3], expected_origin)
    a, b = whole.get_fdata(), sw.get_fdata()
    # windows see less context at their borders; blended, the volumes agree closely on average
    assert np.abs(a - b).mean() < 0.02 * (a.max() - a.min())
    assert 0 <= a.min() and a.max() < 150  # intensities back in the input's range


def test_inference_reads_nrrd_and_dicom_series(trained, tmp_path):
    import itk

    inp = tmp_path / "in"
    inp.mkdir()
    arr = (np.random.default_rng(0).random((6, 8, 8)) * 1000).astype(np.int16)  # itk order: z, y, x
    img = itk.image_from_array(arr)
    img.SetSpacing([2.0, 2.0, 3.0])
    itk.imwrite(img, str(inp / "vol.nrrd"))
    series = inp / "series"
    series.mkdir()
    names = itk.NumericSeriesFileNames.New()
    names.SetSeriesFormat(str(series / "IM%03d.dcm"))
    names.SetStartIndex(1)
    names.SetEndIndex(arr.shape[0])
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New()
    writer.SetInput(img)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.SetFileNames(names.GetFileNames())
    writer.Update()
    ok(infer(trained, inp, tmp_path / "out", "--sliding_window", "False"))
    assert nib.load(tmp_path / "out" / "vol_sr.nii.gz").shape == (32, 32, 24)
    assert nib.load(tmp_path / "out" / "series_sr.nii.gz").shape == (32, 32, 24)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("2d", "expected a 3D volume|smaller than required"),
        ("nan", "NaN"),
        ("empty", "cannot be read as an image"),
        ("text", "cannot be read as an image"),
        ("small", "smaller than required"),
    ],
)
def test_bad_input_one_clear_error_and_no_output(trained, tmp_path, kind, message):
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "good.nii.gz")
    bad = inp / "bad.nii.gz"
    if kind == "2d":
        nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), bad)
    elif kind == "nan":
        arr = np.random.rand(8, 8, 8).astype(np.float32)
        arr[2, 2, 2] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), bad)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("this is not an image")
    else:
        nib.save(nib.Nifti1Image(np.random.rand(3, 3, 3).astype(np.float32), np.eye(4)), bad)
    proc = infer(trained, inp, tmp_path / "out")
    assert proc.returncode != 0
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "bad.nii.gz" in last, last
    import re

    assert re.search(message, last), last
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluation_reports_and_beats_nothing_silently(trained, tiny_dataset, tmp_path):
    work = trained[0]
    out = ok(
        run_bundle(
            "run", "evaluating", "--config_file", EVAL, "--dataset_dir", str(tiny_dataset), "--output_dir",
            str(tmp_path), "--ckpt_path", str(work / "models" / "model.pt"),
        )
    )  # fmt: skip
    assert "LPIPS skipped" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {"sr", "sr_project", "trilinear", "bspline"}
    assert "lpips" not in summary["methods"]["sr"] and summary["lpips_missing_reason"]
    rows = list(csv.DictReader(open(tmp_path / "per_case.csv")))
    assert len(rows) == 12 and rows[0]["case"] == "BRATS_004"  # 4 methods x 3 degradations of one volume
    assert {r["degradation"] for r in rows} == {"kspace", "area", "gaussian"}
    assert set(summary["degradations"]) == {"kspace", "area", "gaussian"}
    md = (tmp_path / "summary.md").read_text()
    assert "| sr |" in md and "LPIPS missing" in md
    assert (tmp_path / "figures" / "BRATS_004_kspace.png").stat().st_size > 10_000
    assert "| kspace |" in md and "LR made by **gaussian**" in md


def test_metadata_is_valid_against_model_zoo_schema():
    ok(
        run_bundle(
            "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath",
            str(ROOT / "tests" / "assets" / "meta_schema_20240725.json"),
        )
    )  # fmt: skip
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "image" in meta["network_data_format"]["inputs"] and "pred" in meta["network_data_format"]["outputs"]


def test_verify_net_in_out():
    out = ok(
        run_bundle(
            "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file",
            "configs/inference.json",
        )
    )  # fmt: skip
    assert "data shape of network is verified with no error" in out


def test_ckpt_export_torchscript_gives_same_output(trained, tmp_path):
    work = trained[0]
    ts = tmp_path / "model.ts"
    ok(
        run_bundle(
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


def test_json_configs_indented_by_four_spaces():
    for path in (ROOT / "configs").glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4), f"{path.name} is not indented by 4 spaces"


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


def test_model_zoo_file_rules():
    import yaml

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    large = {f["path"] for f in yaml.safe_load((ROOT / "large_files.yml").read_text())["large_files"]}
    assert "models/model.pt" in large
    for name in ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md"):
        assert name in tracked
    too_big = [f for f in tracked if (ROOT / f).stat().st_size >= 1_000_000 and f not in large]
    assert not too_big, too_big


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


def test_inference_every_channel_of_a_multichannel_scan(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    arr = np.random.default_rng(0).random((10, 10, 6, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), inp / "multi.nii.gz")
    ok(infer(trained, inp, tmp_path / "all", "--modality_channel", "all", "--sliding_window", "False"))
    ok(infer(trained, inp, tmp_path / "one", "--modality_channel", "2", "--sliding_window", "False"))
    every = nib.load(tmp_path / "all" / "multi_sr.nii.gz").get_fdata()
    one = nib.load(tmp_path / "one" / "multi_sr.nii.gz").get_fdata()
    assert every.shape == (40, 40, 24, 3) and one.shape == (40, 40, 24)
    assert np.allclose(every[..., 2], one, atol=1e-4)  # channel-wise: channel 2 alone gives the same result


def test_inference_writes_consistency_uncertainty_and_trust_summary(trained, tiny_dataset, tmp_path):
    work = trained[0]
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
    ok(infer(trained, inp, tmp_path / "out", "--uncertainty", "4", "--ckpt_dir", str(work / "models")))
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
    from bundle.degradation import forward_operator

    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "scan.nii.gz", shape=(10, 9, 6))
    ok(infer(trained, inp, tmp_path / "out", "--consistency", "project", "--consistency_operator", operator))
    sr = torch.as_tensor(nib.load(tmp_path / "out" / "scan_sr.nii.gz").get_fdata())[None]
    lr = torch.as_tensor(nib.load(inp / "scan.nii.gz").get_fdata())[None]
    # D is linear and keeps constants, so D(restored SR) = restored D(normalised SR) = the input itself
    again = forward_operator(sr, (4, 4, 4), operator)
    assert torch.allclose(again, lr, atol=1e-4 * float(lr.abs().max()))


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
    from bundle.checkpoints import is_finite_state, list_checkpoints

    for _, path in list_checkpoints(models):
        assert is_finite_state(torch.load(path, weights_only=True)["network"])[0], path


def test_dicom_series_in_derived_dicom_series_out(trained, tmp_path):
    """A series written with pydicom -> inference with output_format dicom -> read back with ITK and pydicom."""
    import pydicom
    from test_dicom import corner_box, write_series

    from bundle.dicom_series import LoadImageOrSeriesd

    inp = tmp_path / "in"
    _, source_files, source_uid = write_series(inp / "study", n=8)
    ok(infer(trained, inp, tmp_path / "out", "--output_format", "dicom", "--sliding_window", "False"))
    out = tmp_path / "out" / "study_sr"
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 8 * 4  # one file per output slice
    lr = LoadImageOrSeriesd("image")({"image": [str(p) for p in source_files], "series_uid": source_uid})["image"]
    sr = LoadImageOrSeriesd("image")({"image": str(out)})["image"]
    assert tuple(sr.shape[-3:]) == tuple(4 * n for n in lr.shape[-3:])
    assert np.allclose(np.linalg.norm(sr.affine[:3, :3], axis=0), np.linalg.norm(lr.affine[:3, :3], axis=0) / 4)
    directions = lambda a: np.asarray(a)[:3, :3] / np.linalg.norm(np.asarray(a)[:3, :3], axis=0)  # noqa: E731
    assert np.allclose(directions(sr.affine), directions(lr.affine), atol=1e-5)  # same orientation
    assert np.allclose(corner_box(sr.affine, sr.shape[-3:]), corner_box(lr.affine, lr.shape[-3:]), atol=1e-3)
    first, source = pydicom.dcmread(files[0]), pydicom.dcmread(source_files[0])
    assert first.PatientID == source.PatientID and first.StudyInstanceUID == source.StudyInstanceUID
    assert first.SeriesInstanceUID != source.SeriesInstanceUID and first.SOPInstanceUID != source.SOPInstanceUID
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "NOT FOR DIAGNOSTIC USE" in first.SeriesDescription
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == len(files)
    summary = json.loads((tmp_path / "out" / "study_sr.json").read_text())
    assert summary["outputs"]["sr"].endswith("study_sr")


def test_outputs_in_the_input_folder_are_never_taken_as_inputs_nor_overwrite_an_input(trained, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    lr_volume(folder / "case.nii.gz", shape=(10, 9, 6))
    lr_volume(folder / "case_sr.nii.gz", shape=(8, 8, 6), seed=1)  # a real input that happens to end in _sr
    foreign = (folder / "case_sr.nii.gz").read_bytes()
    proc = infer(trained, folder, folder)
    assert proc.returncode == 1 and "case_sr.nii.gz: exists and is not an earlier output" in proc.stderr
    assert (folder / "case_sr.nii.gz").read_bytes() == foreign  # the foreign file is untouched
    (folder / "case_sr.nii.gz").unlink()
    ok(infer(trained, folder, folder))
    first = sorted(p.name for p in folder.iterdir())
    assert "case_sr.nii.gz" in first and "case_sr_sr.nii.gz" not in first
    ok(infer(trained, folder, folder))  # a rerun replaces its own outputs and does not super-resolve them
    assert sorted(p.name for p in folder.iterdir()) == first
