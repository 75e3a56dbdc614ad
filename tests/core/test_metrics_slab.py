"""SSIM of a one-voxel-thick slab is the 2-D SSIM of its plane (per-scan adaptation trains on such slabs)."""

import pytest
import torch
from monai.metrics import SSIMMetric

from bundle.core.metrics import SeparableSSIMLoss, ssim_3d


def test_slab_ssim_equals_monai_2d_ssim_of_the_plane():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 1, 20, 24, generator=gen)
    y = (x + 0.1 * torch.rand(2, 1, 1, 20, 24, generator=gen)).clamp(0, 1)
    ours = ssim_3d(x, y, data_range=1.0, win_size=7)
    monai_2d = SSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", win_size=7, reduction="none")
    reference = monai_2d(x[:, :, 0], y[:, :, 0]).reshape(-1)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ssim_3d(x, y, win_size=7), ssim_3d(x.transpose(2, 3), y.transpose(2, 3), win_size=7))


def test_slab_ssim_with_a_mask_and_as_a_loss():
    x = torch.rand(1, 1, 1, 16, 16)
    mask = torch.zeros_like(x)
    mask[..., :8, :] = 1
    assert ssim_3d(x, x, win_size=7, mask=mask).item() == pytest.approx(1.0)
    loss = SeparableSSIMLoss(win_size=7)(x, 1 - x)
    assert 0.0 < loss.item() <= 2.0


def test_too_small_or_all_singleton_volumes_are_refused():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim_3d(torch.rand(1, 1, 1, 5, 16), torch.rand(1, 1, 1, 5, 16), win_size=7)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim_3d(torch.rand(1, 1, 1, 1, 1), torch.rand(1, 1, 1, 1, 1), win_size=7)
