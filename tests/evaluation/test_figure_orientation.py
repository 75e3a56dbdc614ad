"""The evaluation's comparison figure reads like the per-scan preview: RAS display orientation with orientation
letters and a 10 mm scale bar when the HR volume carries its affine, and no letters when it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.evaluation import figures as report


def draw(monkeypatch, tmp_path, hr: torch.Tensor):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    lr = torch.nn.functional.avg_pool3d(torch.as_tensor(hr).as_subclass(torch.Tensor), 2)
    preds = {"trilinear": hr * 0.9, "sr": hr * 0.95}
    report.comparison_figure(lr, preds, hr, tmp_path / "f.png", (2, 2, 2), title="case_1, LR by area")
    return figures[0]


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def hr_volume(x_spacing: float) -> MetaTensor:
    """(1, 1, 16, 12, 8) with the last x plane bright; x spacing negative = LAS storage."""
    arr = torch.zeros(1, 1, 16, 12, 8)
    arr[..., -1, :, :] = 1.0
    return MetaTensor(arr, affine=torch.as_tensor(np.diag([x_spacing, 1.0, 1.0, 1.0])))


@pytest.mark.parametrize("x_spacing, bright_on_display_left", [(1.0, True), (-1.0, False)])
def test_panels_have_letters_scale_bar_and_radiological_orientation(
    monkeypatch, tmp_path, x_spacing, bright_on_display_left
):
    fig = draw(monkeypatch, tmp_path, hr_volume(x_spacing))
    hr_axial = next(ax for ax in fig.axes if ax.get_title() == "HR")
    assert {"R", "L", "P", "A", "10 mm"} <= set(texts(hr_axial))
    image = np.asarray(hr_axial.images[0].get_array())
    assert image.shape == (12, 16)  # rows = A-P, columns = R-L
    assert (image[:, 0].mean() > image[:, -1].mean()) == bright_on_display_left
    row_names = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel() in ("axial", "coronal", "sagittal")]
    assert row_names == ["axial", "coronal", "sagittal"]
    assert "radiological" in fig._suptitle.get_text()


def test_without_an_affine_no_letters_are_claimed(monkeypatch, tmp_path):
    fig = draw(monkeypatch, tmp_path, torch.rand(1, 1, 16, 12, 8))
    assert not any(t in ("R", "L", "10 mm") for ax in fig.axes for t in texts(ax))
    assert "voxel axes" in fig._suptitle.get_text()
