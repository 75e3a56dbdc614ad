"""The sliding window drops each window's border output: the windowed SR equals the whole-volume SR (issue 36, 4)."""

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer

from bundle.inference.generator import DEFAULT_MARGIN, ClampedSlidingWindowInferer, make_inferer


class LocalNet(torch.nn.Module):
    """Two 3x3x3 convolutions (zero padding) and a x4 trilinear upsampling: a receptive field of 3 LR voxels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.convs = torch.nn.ModuleList(torch.nn.Conv3d(a, b, 3, padding=1) for a, b in ((1, 4), (4, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.convs:
            y = torch.tanh(conv(y))
        return F.interpolate(x + y, scale_factor=4, mode="trilinear", align_corners=False)


def smooth_volume(shape=(32, 28, 16)) -> torch.Tensor:
    g = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij")
    return (torch.exp(-(g[0] ** 2 + (g[1] - 0.2) ** 2 + g[2] ** 2)) + 0.3 * g[0])[None, None]


def seam(sr: torch.Tensor, whole: torch.Tensor) -> float:
    """Largest excess of the SR's mean absolute step along y over the whole-volume SR's, over every y step,
    as a fraction of the whole-volume SR's mean step."""
    step = (sr[0, 0, :, 1:] - sr[0, 0, :, :-1]).abs().mean(dim=(0, 2))
    ref = (whole[0, 0, :, 1:] - whole[0, 0, :, :-1]).abs().mean(dim=(0, 2))
    return float((step - ref).max() / ref.mean())


@torch.no_grad()
def test_windowed_sr_equals_the_whole_volume_sr_without_a_seam():
    x, net = smooth_volume(), LocalNet().eval()
    whole = net(x)
    windowed = make_inferer(True, [16, 16, 12], overlap=0.25)(x, net)
    assert windowed.shape == whole.shape
    assert torch.allclose(windowed, whole, atol=1e-5), float((windowed - whole).abs().max())
    assert seam(windowed, whole) < 1e-3
    # MONAI's Gaussian blending of the same windows keeps border output: a seam (the fault this replaces)
    monai = SlidingWindowInferer([16, 16, 12], overlap=0.25, mode="gaussian")(x, net)
    assert float((monai - whole).abs().max()) > 1e-3 and seam(monai, whole) > 0.05


@pytest.mark.parametrize("n, r", [(40, 16), (17, 8), (9, 6), (100, 24), (24, 24), (30, 7)])
def test_axis_weights_are_zero_in_the_margin_and_sum_to_one(n, r):
    inferer = ClampedSlidingWindowInferer([r, r, r], margin=DEFAULT_MARGIN)
    margin, scale = inferer.margins[0], 4
    starts = inferer.window_starts(n, r)
    weights = inferer.axis_weights(starts, r, scale, margin)
    total = torch.zeros(n * scale, dtype=torch.float64)
    for i, p in enumerate(starts):
        total[p * scale : (p + r) * scale] += weights[i]
        assert weights[i].min() >= 0
        if i > 0:  # a border shared with the previous window: its first `margin` LR voxels are dropped
            assert weights[i][: margin * scale].abs().max() == 0
        if i < len(starts) - 1:
            assert weights[i][(r - margin) * scale :].abs().max() == 0
    assert torch.allclose(total, torch.ones_like(total))


def test_margin_is_at_most_a_quarter_of_the_window_and_the_grid_is_monais():
    inferer = ClampedSlidingWindowInferer([8, 8, 6], overlap=0.25, margin=4)
    assert inferer.margins == [2, 2, 1] and inferer.overlap == 0.5
    assert ClampedSlidingWindowInferer([64, 64, 40], overlap=0.25, margin=4).overlap == 0.25
    calls: list[int] = []
    x = torch.rand(2, 1, 20, 17, 9)
    out = inferer(x, lambda t: calls.append(1) or F.interpolate(t, scale_factor=4, mode="nearest"))
    assert torch.allclose(out, F.interpolate(x, scale_factor=4, mode="nearest"), atol=1e-6)
    from bundle.core.progress import windows_per_pass

    assert len(calls) == 2 * windows_per_pass((20, 17, 9), (8, 8, 6), inferer.overlap)  # progress counts them right
