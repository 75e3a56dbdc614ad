"""The evaluation's comparison figure names the case and degradation, labels each method with its PSNR and
SSIM, and has colour bars for the intensity and the error scales."""

from __future__ import annotations

import torch

from bundle.evaluation import figures as report

COLOUR_BARS = ("intensity (normalised)", "|error| (normalised)")


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
        "SR\nPSNR 31.23 dB\nSSIM 0.912\n+1.23 dB / +0.012\nvs B-spline",
        "HR",
        "|cubic B-spline - HR|",
        "|SR - HR|",
    ]  # B-spline first, its error map beside the SR's
    assert "LR | cubic B-spline | trilinear | SR | HR" in fig._suptitle.get_text()
    assert fig._suptitle.get_text().startswith("case_1, LR by area: ")
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"intensity (normalised)", "|error| (normalised)"} <= labels  # the two colour bars


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_comparison_figure_titles_do_not_overlap_and_no_empty_gap(tmp_path, monkeypatch):
    """Every method (four-line titles of the SR and projected SR included) and both error maps: no title overlaps
    another or the suptitle, and the panels sit next to each other: between two neighbouring panels of a row at
    most a colour bar's width (the old layout left three panel widths empty before the error maps)."""
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    torch.manual_seed(0)
    hr = torch.rand(1, 1, 32, 32, 24)
    lr = torch.nn.functional.avg_pool3d(hr, 4)
    preds = {k: hr * f for k, f in (("bspline", 0.92), ("trilinear", 0.9), ("sr", 0.97), ("sr_project", 0.98))}
    scores = {k: {"psnr": 30.0 + i, "ssim": 0.9 + i / 100} for i, k in enumerate(preds)}
    report.comparison_figure(lr, preds, hr, tmp_path / "f.png", (4, 4, 4), title="case_1, LR by kspace", scores=scores)
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titled = [ax for ax in fig.axes if ax.get_title()]
    boxes = [ax.title.get_window_extent(renderer) for ax in titled] + [fig._suptitle.get_window_extent(renderer)]
    assert len(titled) == 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not _overlap(a, b), (a, b)
    panels = [ax for ax in fig.axes if ax.images and ax.get_ylabel() not in COLOUR_BARS]
    assert len(panels) == 3 * 8
    width = min(ax.get_position().width for ax in panels)
    for row_y in sorted({round(ax.get_position().y0, 3) for ax in panels}):
        row = sorted(
            (ax.get_position() for ax in panels if round(ax.get_position().y0, 3) == row_y), key=lambda p: p.x0
        )
        gaps = [b.x0 - a.x1 for a, b in zip(row, row[1:], strict=False)]
        assert len(row) == 8 and max(gaps) < 0.5 * width, gaps


def test_worst_case_figure_draws_the_lowest_gain_the_summary_names(tmp_path):
    """Of every scan x degradation offered, the one with the lowest SR PSNR gain over cubic B-spline is drawn as
    figures/worst_case.png once the summary's worst case names it; nothing when it names another or none."""
    from PIL import Image

    torch.manual_seed(0)
    hr = torch.rand(1, 1, 16, 16, 8)
    lr = torch.nn.functional.avg_pool3d(hr, 2)
    fig = report.WorstCaseFigure()
    for case, sr_psnr in (("case_a", 31.0), ("case_b", 29.5), ("case_c", 30.5)):
        scores = {"sr": {"psnr": sr_psnr, "ssim": 0.9}, "bspline": {"psnr": 30.0, "ssim": 0.9}}
        fig.offer(case, "area", scores, lr, {"bspline": hr * 0.9, "sr": hr * 0.95}, hr)
    assert fig.kept["case"] == "case_b" and fig.kept["gain"] == -0.5
    assert fig.write(tmp_path, {"psnr": {"case": "case_a", "degradation": "area", "gain": 1.0}}, (2, 2, 2)) is None
    assert fig.write(tmp_path, {"psnr": None}, (2, 2, 2)) is None and not list(tmp_path.iterdir())
    named = {"psnr": {"case": "case_b", "degradation": "area", "gain": -0.5}}
    path = fig.write(tmp_path, named, (2, 2, 2))
    assert path == tmp_path / report.WORST_CASE_FIGURE and Image.open(path).size[0] > 1000


def test_uncertainty_figure_panels_are_the_same_size_without_gaps(tmp_path, monkeypatch):
    """The error and uncertainty maps are as large as the SR and HR panels (the colour bar no longer shrinks them)
    and neighbouring panels of a row sit at most half a panel apart."""
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    torch.manual_seed(0)
    hr = torch.rand(1, 1, 32, 32, 24)
    report.uncertainty_figure(hr * 0.9, hr, hr * 0.1, tmp_path / "u.png")
    fig = figures[0]
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.images and not ax.get_ylabel().startswith("|error|")]
    assert len(panels) == 12
    for row_y in sorted({round(ax.get_position().y0, 3) for ax in panels}):
        row = sorted(
            (ax.get_position() for ax in panels if round(ax.get_position().y0, 3) == row_y), key=lambda p: p.x0
        )
        widths = [p.width for p in row]
        assert len(row) == 4 and max(widths) < 1.05 * min(widths), widths
        assert max(b.x0 - a.x1 for a, b in zip(row, row[1:], strict=False)) < 0.5 * min(widths)
