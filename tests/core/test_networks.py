import pytest
import torch
from conftest import tiny_generator

from bundle.core.networks import Discriminator3D, RRDBNet3D, upsampling_stages, voxel_shuffle


@pytest.mark.parametrize("scale, expected", [(2, (14, 18, 10)), (4, (28, 36, 20)), ((4, 4, 1), (28, 36, 5))])
def test_generator_output_is_scale_times_input_for_odd_sizes(scale, expected):
    out = tiny_generator(scale=scale)(torch.rand(2, 1, 7, 9, 5))
    assert out.shape == (2, 1, *expected)


def test_x4_is_two_x2_stages_and_per_axis_scales_split():
    assert upsampling_stages((4, 4, 4)) == [(2, 2, 2), (2, 2, 2)]
    assert upsampling_stages((4, 4, 1)) == [(2, 2, 1), (2, 2, 1)]
    assert upsampling_stages((3, 1, 2)) == [(3, 1, 2)]


def test_voxel_shuffle_matches_naive_reference():
    r = (2, 3, 1)
    x = torch.randn(2, 3 * 6, 2, 3, 4)
    out = voxel_shuffle(x, list(r))
    ref = torch.empty(2, 3, 4, 9, 4)
    for c in range(3):
        for i in range(2):
            for j in range(3):
                for k in range(1):
                    ref[:, c, i::2, j::3, k::1] = x[:, c * 6 + i * 3 + j + k]
    assert torch.equal(out, ref)


def test_icnr_upsampler_starts_as_nearest_neighbour():
    up = tiny_generator(scale=2).upsample[0]
    out = up(torch.rand(1, 8, 3, 3, 3))
    blocks = out.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2)  # every 2x2x2 block is constant
    assert torch.allclose(blocks, blocks[..., :1, :1, :1].expand_as(blocks), atol=1e-6)


def test_trilinear_residual_base_starts_at_trilinear():
    x = torch.rand(1, 1, 4, 5, 6)
    out = tiny_generator(residual_base="trilinear")(x)
    ref = torch.nn.functional.interpolate(x, scale_factor=4, mode="trilinear", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-6)


def test_gradients_reach_first_layer():
    g = tiny_generator(residual_base="none")  # with a base, the last layer starts at zero and passes no gradient
    g(torch.rand(1, 1, 4, 4, 4)).mean().backward()
    assert g.conv_first.weight.grad is not None and g.conv_first.weight.grad.abs().sum() > 0


def test_generator_rejects_non_5d_input():
    with pytest.raises(ValueError, match="5-D"):
        tiny_generator()(torch.rand(1, 4, 4, 4))


def test_generator_torchscript_export_gives_same_output():
    g = tiny_generator(scale=(4, 4, 1), residual_base="trilinear").eval()
    x = torch.rand(1, 1, 5, 6, 3)
    scripted = torch.jit.script(g)
    assert torch.allclose(scripted(x), g(x), atol=1e-6)


def test_parameter_counts_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "README.md").read_text()
    for blocks in (5, 10, 15):
        n = sum(p.numel() for p in RRDBNet3D(num_blocks=blocks).parameters())
        assert f"{n:,}" in docs, f"parameter count of the {blocks}-block generator ({n:,}) not in docs/README.md"


@pytest.mark.parametrize("size", [(48, 48, 32), (16, 16, 16), (40, 40, 24)])
def test_discriminator_global_logit_for_any_patch(size):
    d = Discriminator3D(features=4, num_stages=3)
    assert d(torch.rand(2, 1, *size)).shape == (2, 1)


def test_discriminator_seed_patch_size():
    d = Discriminator3D(features=8)
    with torch.no_grad():
        assert d(torch.rand(1, 1, 120, 120, 80)).shape == (1, 1)


def test_patch_discriminator_returns_logit_map():
    d = Discriminator3D(features=4, num_stages=3, patch=True)
    assert d(torch.rand(2, 1, 48, 48, 32)).shape == (2, 1, 6, 6, 4)


def test_discriminator_rejects_too_small_input():
    with pytest.raises(ValueError, match="smaller"):
        Discriminator3D(features=4, num_stages=4)(torch.rand(1, 1, 8, 32, 32))


def test_bad_norm_rejected():
    with pytest.raises(ValueError, match="norm"):
        Discriminator3D(norm="group")
