"""The command-line tools run and write what they promise (timings themselves are not asserted)."""

import json
import subprocess
import sys

import nibabel as nib
import pytest
from conftest import ROOT, tiny_settings


@pytest.mark.slow  # 80 s: the benchmark presets run end to end; `make test-slow`
@pytest.mark.integration
def test_benchmark_writes_results_with_ratios(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "all", "--preset", "tiny", "--output_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = json.loads((tmp_path / "train_step_tiny.json").read_text())
    off, ten = step["0 (off)"], step["10 / plane"]
    assert ten["median_s"] > 0 and ten["peak_mem_mib"] > 0
    assert ten["ratio_vs_off"] == pytest.approx(ten["median_s"] / off["median_s"])  # each ratio is to the off step
    perceptual = json.loads((tmp_path / "perceptual_tiny.json").read_text())
    floor, ours = perceptual["floor (bare VGG, same slices)"], perceptual["RandomSlicePerceptualLoss"]
    assert ours["ratio_vs_floor"] == pytest.approx(ours["median_s"] / floor["median_s"])
    assert (tmp_path / "inference_tiny.md").read_text().count("|") > 10
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "data", "--volume", "[32,32,24]", "--lr_patch", "[4,4,4]",
         "--patches", "2", "--repeats", "1", "--output_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "data_pipeline.json").read_text())
    assert all(r["patches_per_s"] > 0 for k, r in data.items() if k != "machine")


@pytest.mark.slow
def test_ablation_runs_every_study(tiny_dataset, tmp_path, monkeypatch):
    import ablation

    tiny = dict(tiny_settings(), max_epochs=1)
    scale = dict(ablation.SCALES["demo"], base=tiny, slices=[0, 2], blocks=[1], patches=[[4, 4, 4]])
    monkeypatch.setitem(ablation.SCALES, "demo", scale)
    ablation.ablation(scale="demo", output_dir=str(tmp_path), dataset_dir=str(tiny_dataset), repeats=2)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"slices=0", "slices=2", "blocks=1", "lr_patch=4x4x4"}
    assert all(r["psnr"] > 0 and r["s_per_epoch"] > 0 for r in results.values())
    for r in results.values():  # mean and sd over the two seeds, each run in its own folder
        assert r["seeds"] == [0, 1] and len(r["runs"]) == 2
        psnrs = [run["psnr"] for run in r["runs"]]
        assert r["psnr"] == pytest.approx(sum(psnrs) / 2) and r["psnr_sd"] == pytest.approx(
            abs(psnrs[0] - psnrs[1]) / 2**0.5
        )
    assert (tmp_path / "slices_0" / "seed_1" / "eval" / "summary.json").is_file()
    assert "±" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "quality_vs_time.png").is_file()


def test_real_scans_are_an_msd_test_set_of_two_real_volumes(tmp_path):
    from make_real_scans import make_real_scans

    from bundle.data.datalist import msd_datalist

    out = make_real_scans(output_dir=str(tmp_path / "real"))
    items = msd_datalist(out, section="test")
    shapes = sorted(tuple(nib.load(i["image"]).shape) for i in items)
    assert shapes == [(33, 41, 25), (128, 96, 24)]  # the T1 and the first EPI volume, as shipped
    assert not (tmp_path / "real.partial").exists()
