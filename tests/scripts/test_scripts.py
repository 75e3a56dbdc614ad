"""The command-line tools run and write what they promise (timings themselves are not asserted)."""

import json
import subprocess
import sys

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


def finished_variant(vdir, sr_psnr: float, bspline_psnr: float, sr_ssim: float, bspline_ssim: float) -> None:
    """What a trained and evaluated variant leaves (so the ablation reads it instead of running it)."""
    (vdir / "eval").mkdir(parents=True)

    def score(psnr: float, ssim: float) -> dict:
        return {
            k: {"mean": v, "sd": 0, "n": 2} for k, v in {"mse": 10 ** (-psnr / 10), "psnr": psnr, "ssim": ssim}.items()
        }

    methods = {
        "bspline": score(bspline_psnr, bspline_ssim),
        "trilinear": score(1.0, 0.1),
        "sr": score(sr_psnr, sr_ssim),
    }
    (vdir / "eval" / "summary.json").write_text(json.dumps({"methods": methods}))
    (vdir / "train_log.csv").write_text("epoch,seconds\n1,2.0\n2,4.0\n")
    (vdir / "train_seconds.txt").write_text("7.5")


def test_ablation_quality_axis_is_the_gain_over_bspline(tmp_path, monkeypatch):
    """From finished variants (hand-made summaries): results, table and plot use SR minus cubic B-spline."""
    import ablation
    import matplotlib.figure

    scale = dict(ablation.SCALES["demo"], slices=[0], blocks=[1], patches=[[4, 4, 4]])
    monkeypatch.setitem(ablation.SCALES, "demo", scale)
    finished_variant(tmp_path / "slices_0" / "seed_0", 21.0, 20.5, 0.60, 0.58)  # +0.5 dB, +0.02
    finished_variant(tmp_path / "slices_0" / "seed_1", 21.0, 20.7, 0.60, 0.59)  # +0.3 dB, +0.01
    finished_variant(tmp_path / "blocks_1" / "seed_0", 20.0, 20.8, 0.55, 0.58)  # -0.8 dB, -0.03
    finished_variant(tmp_path / "blocks_1" / "seed_1", 20.0, 20.6, 0.55, 0.57)  # -0.6 dB, -0.02
    finished_variant(tmp_path / "lr_patch_4x4x4" / "seed_0", 25.0, 25.0, 0.7, 0.7)
    finished_variant(tmp_path / "lr_patch_4x4x4" / "seed_1", 25.0, 25.0, 0.7, 0.7)
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    ablation.ablation(scale="demo", output_dir=str(tmp_path), repeats=2)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["slices=0"]["psnr_gain_bspline"] == pytest.approx(0.4)
    assert results["slices=0"]["psnr_gain_bspline_sd"] == pytest.approx(0.2 / 2**0.5)
    assert results["blocks=1"]["ssim_gain_bspline"] == pytest.approx(-0.025)
    assert results["slices=0"]["psnr"] == pytest.approx(21.0)  # the absolute PSNR stays
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[2].startswith("| variant | **PSNR gain over cubic B-spline (dB)** | SSIM gain over cubic B-spline |")
    assert table[5].startswith("| blocks=1 | **-0.70 ± 0.14** | -0.0250 ± 0.0071 |")
    ax = saved[0].axes[0]
    assert ax.get_ylabel() == "PSNR gain over cubic B-spline (dB)"
    points = sorted(float(bar.lines[0].get_ydata()[0]) for bar in ax.containers)  # one errorbar per variant
    assert points == pytest.approx([-0.7, 0.0, 0.4])


def test_ablation_refuses_a_summary_without_bspline(tmp_path, monkeypatch):
    import ablation

    scale = dict(ablation.SCALES["demo"], slices=[0], blocks=[], patches=[])
    monkeypatch.setitem(ablation.SCALES, "demo", scale)
    finished_variant(tmp_path / "slices_0" / "seed_0", 21.0, 20.5, 0.6, 0.58)
    summary = tmp_path / "slices_0" / "seed_0" / "eval" / "summary.json"
    data = json.loads(summary.read_text())
    del data["methods"]["bspline"]
    summary.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"summary.json: no SR or cubic B-spline PSNR"):
        ablation.ablation(scale="demo", output_dir=str(tmp_path))
