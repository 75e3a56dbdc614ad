"""The evaluation's comparison figure names the case and degradation, labels each method with its PSNR and
SSIM, and has colour bars for the intensity and the error scales."""

from __future__ import annotations

import torch

from bundle.evaluation import figures as report


def test_comparison_figure_titles_scores_and_colour_bars(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    torch.manual_seed(0)
    hr = torch.rand(1, 1, 16, 16, 8)
    lr = torch.rand(1, 1, 4, 4, 2)
    preds = {"sr": hr * 0.95, "trilinear": hr * 0.9, "bspline": hr * 0.92}  # not in display order
    scores = {
        "sr": {"psnr": 31.234, "ssim": 0.9123},
        "trilinear": {"psnr": 28.5, "ssim": 0.8},
        "bspline": {"psnr": 30.0, "ssim": 0.9},
    }
    report.comparison_figure(lr, preds, hr, tmp_path / "f.png", (4, 4, 4), title="case_1, LR by area", scores=scores)
    fig = figures[0]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "LR",
        "cubic B-spline\nPSNR 30.00 dB\nSSIM 0.900",
        "trilinear\nPSNR 28.50 dB\nSSIM 0.800",
        "SR\nPSNR 31.23 dB\nSSIM 0.912\n+1.23 dB / +0.012 vs B-spline",
        "HR",
        "|cubic B-spline - HR|",
        "|SR - HR|",
    ]  # B-spline first, its error map beside the SR's
    assert "LR | cubic B-spline | trilinear | SR | HR" in fig._suptitle.get_text()
    assert fig._suptitle.get_text().startswith("case_1, LR by area: ")
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"intensity (normalised)", "|error| (normalised)"} <= labels  # the two colour bars
