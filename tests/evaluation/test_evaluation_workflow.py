"""Evaluation through the bundle runner (in-process): per-degradation tables, baselines, figures."""

import csv
import json

import pytest
from conftest import EVAL, ok, run_bundle


def test_evaluation_reports_and_beats_nothing_silently(trained, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MRI_SR_WEIGHTS_DIR", str(tmp_path / "no_weights"))  # LPIPS without ImageNet weights: missing
    work = trained[0]
    out = ok(
        run_bundle(
            "run", "evaluating", "--config_file", EVAL, "--dataset_dir", str(tiny_dataset), "--output_dir",
            str(tmp_path), "--ckpt_path", str(work / "models" / "model.pt"),
        )
    )  # fmt: skip
    assert "LPIPS skipped" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["methods"]) == ["bspline", "trilinear", "sr", "sr_project"]  # B-spline first
    assert "lpips" not in summary["methods"]["sr"] and summary["lpips_missing_reason"]
    rows = list(csv.DictReader(open(tmp_path / "per_case.csv")))
    # 4 methods x 4 degradations of one volume, and 3 for Hamming-filtered k-space (no operator models it)
    assert len(rows) == 19 and rows[0]["case"] == "BRATS_004"
    assert {r["degradation"] for r in rows} == {"kspace", "kspace_hamming", "area", "gaussian", "noisy"}
    assert "sr_project" not in {r["method"] for r in rows if r["degradation"] == "kspace_hamming"}
    noisy = {r["method"]: r for r in rows if r["degradation"] == "noisy"}
    clean = {r["method"]: r for r in rows if r["degradation"] == "gaussian"}
    assert "sr_project" in noisy  # projected with the noise-free slice profile's operator
    assert float(noisy["bspline"]["psnr"]) < float(clean["bspline"]["psnr"])  # the noise costs the baseline
    assert [r["method"] for r in rows[:4]] == ["bspline", "trilinear", "sr", "sr_project"]
    sr, bspline = rows[2], rows[0]
    assert float(sr["psnr_gain_over_bspline"]) == pytest.approx(float(sr["psnr"]) - float(bspline["psnr"]))
    # every output gets its best shift; the geometry line judges the SR
    for r in rows:
        assert all(abs(float(r[f"best_shift_{a}"])) <= 3 for a in "xyz"), r
    scans = summary["per_scan"]
    degradations = ("kspace", "kspace_hamming", "area", "gaussian", "noisy")
    assert all(len(e["sr_best_shift"]) == 3 for e in scans)
    geometry = summary["worst_case"]["geometry"]
    assert geometry["largest_shift"] == max(max(abs(t) for t in e["sr_best_shift"]) for e in scans)
    assert [(e["case"], e["degradation"]) for e in scans] == [("BRATS_004", d) for d in degradations]
    worst = min(e["sr_gain_over_bspline"]["psnr"] for e in scans)
    assert summary["worst_case"]["psnr"]["gain"] == pytest.approx(worst)
    assert set(summary["degradations"]) == set(degradations)
    md = (tmp_path / "summary.md").read_text()
    assert "| sr |" in md and "LPIPS missing" in md
    assert (tmp_path / "figures" / "BRATS_004_kspace.png").stat().st_size > 10_000
    assert "| kspace |" in md and "LR made by **gaussian**" in md
    assert "Worst case over 1 scan(s) x 5 degradation(s)" in md and "| BRATS_004 | area |" in md
    assert "geometry:" in md and "SR best shift (voxels)" in md


def test_evaluation_scores_the_output_the_estimated_operator_projects(trained, tiny_dataset, tmp_path):
    """With an operator estimator beside the model, the "sr" row is the SR projected with the estimated operator:
    a sure k-space estimate makes it the true-operator projection on k-space LR, and k-space on every other LR."""
    import shutil

    import torch

    from bundle.core.choices import OPERATORS
    from bundle.trust.operator_estimate import OperatorEstimator

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained[0] / "models" / "model.pt", models / "model.pt")
    estimator = OperatorEstimator(features=4)  # zero weights: the logits are the biases, whatever the LR
    for p in estimator.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        estimator.classify.bias.copy_(torch.log(torch.tensor([{"kspace": 0.98}.get(op, 0.01) for op in OPERATORS])))
    torch.save({"state_dict": estimator.state_dict(), "features": 4}, models / "operator_estimator.pt")
    out = tmp_path / "eval"
    ok(
        run_bundle(
            "run", "evaluating", "--config_file", EVAL, "--dataset_dir", str(tiny_dataset), "--output_dir",
            str(out), "--ckpt_path", str(models / "model.pt"), "--consistency", "project",
            "--consistency_operator", "auto",
        )
    )  # fmt: skip
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    sr = {r["degradation"]: r for r in rows if r["method"] == "sr"}
    true_operator = {r["degradation"]: r for r in rows if r["method"] == "sr_project"}
    assert {r["operator"] for r in sr.values()} == {"kspace"} and all(r["projected"] == "True" for r in sr.values())
    assert float(sr["kspace"]["psnr"]) == pytest.approx(float(true_operator["kspace"]["psnr"]), abs=1e-4)
    # a block-average LR projected with k-space is another output than its true-operator projection (with the tiny
    # model the two PSNRs can lie within 1e-3 dB of each other, far above the metric's rounding)
    assert float(sr["area"]["psnr"]) != pytest.approx(float(true_operator["area"]["psnr"]), abs=1e-5)
    assert float(sr["area"]["mse"]) != pytest.approx(float(true_operator["area"]["mse"]), rel=1e-6)
