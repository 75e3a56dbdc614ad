"""The per-scan preview: tri-planar, RAS display whatever the storage, radiological left-right, written as PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.inference.preview import planes, write_preview


def volume(affine: np.ndarray) -> MetaTensor:
    """8x6x4 with the x = last plane bright: the subject's right in RAS storage, left in LAS storage."""
    arr = torch.zeros(1, 8, 6, 4)
    arr[:, -1] = 1.0
    return MetaTensor(arr, affine=torch.as_tensor(affine))


@pytest.mark.parametrize("flip_x, bright_on_display_left", [(False, True), (True, False)])
def test_planes_show_the_subjects_right_on_the_left(flip_x, bright_on_display_left):
    affine = np.diag([-2.0 if flip_x else 2.0, 1.0, 3.0, 1.0])  # LAS or RAS storage
    axial = dict((p[0], p) for p in planes(volume(affine)))["axial"]
    _, image, aspect, letters, spacing = axial
    assert image.shape == (6, 8) and letters[:2] == ("R", "L")
    assert aspect == pytest.approx(0.5) and spacing == pytest.approx(2.0)
    # RAS storage: the last x plane is the subject's right (+x = Right), which radiological display puts on the left
    assert (image[:, 0].mean() > image[:, -1].mean()) == bright_on_display_left


def test_preview_png_is_written(tmp_path):
    img = volume(np.diag([2.0, 2.0, 3.0, 1.0]))
    sr = MetaTensor(torch.rand(1, 32, 24, 16), affine=torch.as_tensor(np.diag([0.5, 0.5, 0.75, 1.0])))
    path = write_preview(tmp_path / "scan_preview.png", img, sr, sr * 0.1, "uncertainty", "scan: input, x4 SR")
    from PIL import Image

    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 300
    assert not [p for p in tmp_path.iterdir() if p.name != "scan_preview.png"]  # nothing half-written left


@pytest.mark.parametrize("with_map", [True, False])
def test_preview_is_large_with_readable_text(tmp_path, monkeypatch, with_map):
    """>= 1200 px wide (it was 624 x 576) and every text on it >= 12 pt at its dpi (6-9 pt before)."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text
    from PIL import Image

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    img = volume(np.diag([2.0, 2.0, 3.0, 1.0]))
    sr = MetaTensor(torch.rand(1, 32, 24, 16) * 1000, affine=torch.as_tensor(np.diag([0.5, 0.5, 0.75, 1.0])))
    trust = sr * 0.1 if with_map else None
    path = write_preview(tmp_path / "scan_preview.png", img, sr, trust, "uncertainty", "scan: input, x4 SR")
    with Image.open(path) as png:
        assert png.size[0] >= 1200 and png.size[1] >= 1000, png.size
    texts = [t for t in figures[0].findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert len(texts) > 30
    small = sorted({(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 12})
    assert not small, small
