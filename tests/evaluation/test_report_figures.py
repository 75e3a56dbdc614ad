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
    preds = {"trilinear": hr * 0.9, "sr": hr * 0.95}
    scores = {"sr": {"psnr": 31.234, "ssim": 0.9123}, "trilinear": {"psnr": 28.5, "ssim": 0.8}}
    report.comparison_figure(lr, preds, hr, tmp_path / "f.png", (4, 4, 4), title="case_1, LR by area", scores=scores)
    fig = figures[0]
    titles = [ax.get_title() for ax in fig.axes]
    assert "sr\nPSNR 31.23 dB\nSSIM 0.912" in titles and "trilinear\nPSNR 28.50 dB\nSSIM 0.800" in titles
    assert fig._suptitle.get_text().startswith("case_1, LR by area: ")
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"intensity (normalised)", "|error| (normalised)"} <= labels  # the two colour bars
