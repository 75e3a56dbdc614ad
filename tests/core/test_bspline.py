"""The fixed cubic B-spline upsampler against scipy's `ndimage.zoom` (the evaluation's baseline) and an exact
reference, and the generator's B-spline residual base built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.core.bspline import (
    PREFILTER_TOLERANCE,
    BSplineUpsample3D,
    bspline_phase_kernels,
    bspline_prefilter_taps,
    bspline_resize,
    cubic_bspline,
    mirror_indices,
)
from bundle.core.networks import RRDBNet3D


def scipy_bspline(volume: np.ndarray, scale) -> np.ndarray:
    """What bundle.evaluation.protocol.upsample_baseline(lr, scale, "bspline") computes."""
    return ndimage.zoom(volume, scale, order=3, mode="grid-mirror", grid_mode=True)


def ours(volume: np.ndarray, scale) -> np.ndarray:
    return BSplineUpsample3D(scale)(torch.from_numpy(volume)[None, None])[0, 0].numpy()


def exact_line(values: np.ndarray, scale: float) -> np.ndarray:
    """Exact cubic B-spline interpolation of the half-sample symmetric extension of a 1-D line, at voxel-centred
    fine positions (round(n * scale) of them): the extension has period 2n, so the prefilter is an exact division in
    the Fourier domain."""
    n = len(values)
    size = int(round(n * scale))
    period = np.concatenate([values, values[::-1]])
    kernel = np.zeros(2 * n)
    kernel[0] += 4 / 6
    kernel[1 % (2 * n)] += 1 / 6
    kernel[-1] += 1 / 6
    coeffs = np.real(np.fft.ifft(np.fft.fft(period) / np.fft.fft(kernel)))
    out = np.empty(size)
    for o in range(size):
        t = (o + 0.5) * n / size - 0.5
        first = math.floor(t) - 1
        out[o] = sum(coeffs[k % (2 * n)] * cubic_bspline(t - k) for k in range(first, first + 4))
    return out


@pytest.mark.parametrize(
    "shape, scale",
    [
        ((7, 9, 5), (4, 4, 4)),  # odd sizes
        ((8, 6, 10), (4, 4, 4)),  # even sizes
        ((6, 7, 5), (1, 1, 4)),  # thick slices: through-plane only
        ((5, 6, 7), (2, 3, 4)),  # a different factor, odd and even, per axis
    ],
)
def test_matches_scipy_zoom_everywhere_borders_included(shape, scale):
    rng = np.random.default_rng(sum(shape))
    volume = (rng.random(shape) * 3 - 1).astype(np.float32)  # intensity range about 3
    ref = scipy_bspline(volume, scale)
    out = ours(volume, scale)
    assert out.shape == ref.shape == tuple(n * s for n, s in zip(shape, scale, strict=True))
    span = float(volume.max() - volume.min())
    assert np.abs(out - ref).max() <= 1e-5 * span


def test_matches_scipy_on_a_smooth_volume_of_demo_patch_size():
    x, y, z = np.meshgrid(*(np.linspace(0, 1, n) for n in (12, 12, 8)), indexing="ij")
    volume = (np.sin(5 * x) * np.cos(3 * y) + z**2).astype(np.float32)
    assert np.abs(ours(volume, 4) - scipy_bspline(volume, 4)).max() <= 1e-5 * float(np.ptp(volume))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_short_axes_are_exact_where_scipy_approximates(n):
    """Axes of 1-4 voxels (an LR patch edge, a thin slab): the mirror extension is an index gather, exact for any
    length; scipy's recursive-filter start is approximate there (up to ~2e-4 of the range for 2 voxels)."""
    line = np.random.default_rng(n).random(n)
    exact = exact_line(line, 4)
    volume = line.astype(np.float32)[:, None, None]
    got = ours(volume, (4, 1, 1))[:, 0, 0]
    assert np.abs(got - exact).max() <= 1e-6
    assert np.abs(got - scipy_bspline(volume, (4, 1, 1))[:, 0, 0]).max() <= 1e-3


@pytest.mark.parametrize("n, factor", [(1, 4.5), (2, 4.5), (3, 5.0), (4, 4.5), (40, 4.5), (9, 2.5)])
def test_resize_to_any_factor_is_exact(n, factor):
    """`bspline_resize` (the evaluation's and the peer benchmark's baseline) at whole and fractional factors: the
    exact interpolation everywhere, and scipy's zoom where scipy is exact (axes long enough for its filter start)."""
    line = np.random.default_rng(n).random(n)
    size = int(round(n * factor))
    got = bspline_resize(torch.from_numpy(line)[None, None, :, None, None], (size, 1, 1))[0, 0, :, 0, 0].numpy()
    assert np.abs(got - exact_line(line, factor)).max() <= 1e-6
    if n >= 9:
        assert np.abs(got - scipy_bspline(line, size / n)).max() <= 1e-6


def test_resize_by_whole_factors_is_the_networks_upsampler():
    volume = torch.rand(2, 1, 5, 6, 3, dtype=torch.float32)
    assert torch.equal(bspline_resize(volume, (20, 6, 12)), BSplineUpsample3D((4, 1, 4))(volume))
    with pytest.raises(ValueError):
        bspline_resize(volume[0], (20, 6, 12))


@pytest.mark.parametrize("factor", [4.0, 4.5, 5.0])
def test_resize_keeps_a_blobs_position(factor):
    """LR voxel i is centred at output (i + 0.5) * factor - 0.5: a smooth blob's centroid stays where it was."""
    n, centre = 16, 6.3
    line = np.exp(-0.5 * ((np.arange(n) - centre) / 1.5) ** 2)
    size = int(round(n * factor))
    up = bspline_resize(torch.from_numpy(line)[None, None, :, None, None], (size, 1, 1))[0, 0, :, 0, 0].numpy()
    at_lr = (np.arange(size) + 0.5) / factor - 0.5  # each output voxel's LR coordinate
    assert float((up * at_lr).sum() / up.sum()) == pytest.approx(centre, abs=0.02)


def test_prefilter_inverts_the_bspline_sampling_filter():
    taps = torch.tensor(bspline_prefilter_taps(), dtype=torch.float64)
    assert taps.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert torch.equal(taps, taps.flip(0))
    sampled = torch.nn.functional.conv1d(taps[None, None], torch.tensor([[[1 / 6, 4 / 6, 1 / 6]]], dtype=torch.float64))
    delta = torch.zeros_like(sampled)
    delta[..., delta.shape[-1] // 2] = 1
    assert (sampled - delta).abs().max() <= PREFILTER_TOLERANCE
    assert len(bspline_prefilter_taps(1e-3)) < len(taps)  # a looser tolerance truncates sooner


def test_phase_kernels_sum_to_one_and_mirror_each_other():
    kernels = bspline_phase_kernels(4)[:, 0]
    assert torch.allclose(kernels.sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-12)
    # phases -3/8 and +3/8 are reflections of each other
    assert torch.allclose(kernels[0], kernels[3].flip(0), atol=1e-15)
    assert torch.allclose(kernels[1], kernels[2].flip(0), atol=1e-15)
    with pytest.raises(ValueError, match="scale"):
        bspline_phase_kernels(0)


def test_mirror_indices_reflect_about_the_half_sample():
    assert mirror_indices(3, 4, torch.device("cpu")).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]
    assert mirror_indices(1, 2, torch.device("cpu")).tolist() == [0, 0, 0, 0, 0]


def test_constants_stay_constant_and_ramps_stay_linear_inside():
    const = torch.full((1, 2, 6, 5, 7), 0.37)
    assert torch.allclose(BSplineUpsample3D(4)(const), torch.full((1, 2, 24, 20, 28), 0.37), atol=1e-6)
    ramp = torch.arange(40, dtype=torch.float32).reshape(1, 1, 40, 1, 1).expand(1, 1, 40, 3, 3)
    up = BSplineUpsample3D((4, 1, 1))(ramp)[0, 0, :, 1, 1]
    fine = (torch.arange(160, dtype=torch.float32) + 0.5) / 4 - 0.5  # voxel-centred input coordinates
    # the mirror folds the ramp at each border; the fold fades as 0.268^distance: 0.2 voxel at the border,
    # below 1e-3 from 4 voxels in and 1e-5 from 12 voxels in
    assert (up[:2] - fine[:2]).abs().max() > 0.1
    assert torch.allclose(up[48:112], fine[48:112], atol=1e-5)


def test_batch_and_channels_are_upsampled_independently():
    x = torch.rand(2, 3, 5, 6, 5)
    up = BSplineUpsample3D(4)
    batched = up(x)
    assert torch.allclose(batched[1, 2:3][None], up(x[1:2, 2:3]), atol=1e-7)


def test_no_state_dict_entries_and_rejects_non_5d():
    up = BSplineUpsample3D(4)
    assert list(up.state_dict()) == [] and [name for name, _ in up.named_buffers()] == [
        "kernel_x",
        "kernel_y",
        "kernel_z",
    ]
    with pytest.raises(ValueError, match="5-D"):
        up(torch.rand(1, 4, 4, 4))
    with pytest.raises(ValueError, match="scale"):
        BSplineUpsample3D((4, 0, 4))


def test_bfloat16_autocast_does_not_round_the_base():
    x = torch.rand(1, 1, 6, 5, 4)
    up = BSplineUpsample3D(4)
    scripted = torch.jit.script(up)
    ref = up(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, script = up(x), scripted(x)
    assert eager.dtype == script.dtype == torch.float32
    assert (eager - ref).abs().max() <= 1e-7 and (script - ref).abs().max() <= 1e-7


def test_generator_with_bspline_base_starts_as_the_evaluation_baseline():
    from bundle.evaluation.protocol import upsample_baseline

    for scale in ((4, 4, 4), (1, 1, 4)):
        lr = torch.rand(1, 1, 7, 6, 5)
        generator = RRDBNet3D(features=8, growth=4, num_blocks=1, scale=scale, residual_base="bspline")
        with torch.no_grad():
            out = generator(lr)
        assert (out - upsample_baseline(lr, scale, "bspline")).abs().max() <= 1e-5


def test_every_base_has_the_same_checkpoint_keys_and_a_trilinear_checkpoint_loads():
    trilinear = RRDBNet3D(features=8, growth=4, num_blocks=1, residual_base="trilinear")
    bspline = RRDBNet3D(features=8, growth=4, num_blocks=1, residual_base="bspline")
    none = RRDBNet3D(features=8, growth=4, num_blocks=1)
    assert list(trilinear.state_dict()) == list(bspline.state_dict()) == list(none.state_dict())
    bspline.load_state_dict(trilinear.state_dict())  # strict: same keys, same shapes


def test_bad_residual_base_is_refused():
    with pytest.raises(ValueError, match="residual_base must be one of"):
        RRDBNet3D(features=8, growth=4, num_blocks=1, residual_base="cubic")


def test_bspline_generator_builds_on_the_meta_device():
    """The export checks a checkpoint against networks built under torch.device('meta')."""
    with torch.device("meta"):
        generator = RRDBNet3D(features=8, growth=4, num_blocks=1, residual_base="bspline")
    assert generator.conv_last.weight.is_meta


@pytest.mark.parametrize("scale", [4, (1, 1, 4)])
def test_scripted_generator_with_bspline_base_saves_loads_and_matches(tmp_path, scale):
    """What `monai.bundle ckpt_export` does: script, save, load elsewhere; the kernels travel in the archive."""
    generator = RRDBNet3D(features=8, growth=4, num_blocks=1, scale=scale, residual_base="bspline").eval()
    torch.nn.init.normal_(generator.conv_last.weight, std=0.01)  # a trained-looking residual
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(generator), str(path))
    loaded = torch.jit.load(str(path))
    x = torch.rand(1, 1, 5, 6, 4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), generator(x), atol=1e-6)


@pytest.mark.parametrize("config", ["configs/inference.json", "configs/train.json"])
def test_config_id_residual_base_reaches_the_network_and_is_checked(config):
    from monai.bundle import ConfigParser

    from bundle.config_check import check_ids
    from bundle.core.errors import ConfigError

    parser = ConfigParser()
    parser.read_config(config)
    parser["residual_base"] = "bspline"
    parser["num_blocks"], parser["features"], parser["growth"] = 1, 8, 4
    network = parser.get_parsed_content("network_def")
    assert network.residual_base == "bspline"
    with pytest.raises(ConfigError, match="config id residual_base: expected one of 'none', 'trilinear', 'bspline'"):
        check_ids(residual_base=True)  # the old boolean id's value
