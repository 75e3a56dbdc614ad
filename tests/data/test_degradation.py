import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Compose, DivisiblePadd

from bundle.core.choices import EVAL_METHODS, METHODS, NOISY_LR_SIGMA, OPERATORS
from bundle.core.geometry import low_resolution_affine
from bundle.data.degradation import (
    PARTIAL_FOURIER_FRACTIONS,
    DegradationParams,
    RandomDegradationd,
    apply_degradation,
    check_evaluation_methods,
    draw_degradation,
    evaluation_lr,
    evaluation_operator,
)
from bundle.data.noise import bias_field, rician_noise, robust_max
from bundle.data.operators import (
    APODISATIONS,
    RIGHT_INVERSES,
    consistency_map,
    degrade,
    forward_operator,
    gaussian_kernel,
    profile_matrix,
    project,
    right_inverse,
)
from bundle.data.transforms import RandPairedCropSamplesd

# LR sizes 5, 3, 7 (odd) and 6, 4, 2 (even) at x4
ODD_HR = (20, 12, 28)
EVEN_HR = (24, 16, 8)


def smooth_volume(shape, seed=0):
    """A positive volume with structure at every scale (random, lightly blurred)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *shape), generator=g)
    return (x + x.roll(1, 1) + x.roll(1, 2) + x.roll(1, 3)) / 4


def named(arr, name="case.nii.gz"):
    return MetaTensor(arr, affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])), meta={"filename_or_obj": name})


@pytest.mark.parametrize("method", METHODS)
def test_shapes_with_odd_sizes_and_batches(method):
    hr = smooth_volume(ODD_HR)
    assert degrade(hr, (4, 4, 4), method).shape == (1, 5, 3, 7)
    assert degrade(hr, (1, 1, 4), method).shape == (1, 20, 12, 7)
    assert degrade(hr, 4, method).shape == (1, 5, 3, 7)
    assert degrade(torch.stack([hr, hr]), (4, 4, 4), method).shape == (2, 1, 5, 3, 7)


@pytest.mark.parametrize("method", METHODS)
def test_thick_slice_mode_changes_only_the_slice_axis(method):
    # constant along z: the LR must be the HR's in-plane image unchanged, whatever the method
    plane = smooth_volume((20, 12, 1))
    hr = plane.expand(1, 20, 12, 28).contiguous()
    lr = degrade(hr, (1, 1, 4), method)
    assert torch.allclose(lr, hr[..., :7], atol=1e-6)
    # and no mixing between in-plane voxels: permuting x and y commutes with the degradation
    hr = smooth_volume(ODD_HR)
    px, py = torch.randperm(20), torch.randperm(12)
    a = degrade(hr[:, px][:, :, py], (1, 1, 4), method)
    b = degrade(hr, (1, 1, 4), method)[:, px][:, :, py]
    assert torch.allclose(a, b, atol=1e-6)


def test_area_is_the_block_mean():
    hr = smooth_volume((8, 12, 4), seed=3)
    lr = degrade(hr, (2, 3, 4), "area")
    ref = torch.zeros(1, 4, 4, 1)
    for i in range(4):
        for j in range(4):
            ref[0, i, j, 0] = sum(
                float(hr[0, 2 * i + a, 3 * j + b, c]) for a in range(2) for b in range(3) for c in range(4)
            ) / (2 * 3 * 4)
    assert torch.allclose(lr, ref, atol=1e-6)


def simulate_low_resolution(hr: torch.Tensor, scale, method: str) -> torch.Tensor:
    """Block average and trilinear resampling as first written (reference: they must not drift)."""
    lr_size = [n // s for n, s in zip(hr.shape[1:], scale, strict=True)]
    x = torch.as_tensor(hr).float()
    if method == "area":
        return F.avg_pool3d(x[None], kernel_size=tuple(scale), stride=tuple(scale))[0]
    return F.interpolate(x[None], size=lr_size, mode="trilinear", align_corners=False)[0]


@pytest.mark.parametrize("method", ["area", "trilinear"])
@pytest.mark.parametrize("scale", [(4, 4, 4), (1, 1, 4)])
def test_area_and_trilinear_match_the_first_simulation_exactly(method, scale):
    for shape in (ODD_HR, EVEN_HR):
        hr = smooth_volume(shape, seed=1)
        assert torch.equal(degrade(hr, scale, method), simulate_low_resolution(hr, scale, method))


def kspace_by_hand(hr: torch.Tensor, s: int, lr_centres=None) -> torch.Tensor:
    """FOV-aligned truncation along x written out as sums of sinusoids: the HR's DFT coefficients of the kept bins,
    evaluated at the LR voxel centres s*i + (s-1)/2 (an even LR size's Nyquist line split into halves at +-m/2)."""
    n = hr.shape[1]
    m = n // s
    j = torch.arange(n, dtype=torch.float64)
    centres = torch.arange(m, dtype=torch.float64) * s + (s - 1) / 2 if lr_centres is None else lr_centres
    out = torch.zeros(1, m, *hr.shape[2:], dtype=torch.float64)
    freqs = [(f, 1.0) for f in range(-(m // 2), m - m // 2)]
    if m % 2 == 0:
        freqs = [(f, 0.5 if f == -m // 2 else 1.0) for f, _ in freqs] + [(m // 2, 0.5)]
    for f, w in freqs:
        coefficient = (hr.double() * torch.exp(-2j * torch.pi * f * j / n)[None, :, None, None]).sum(1) / n
        out += w * (coefficient[:, None] * torch.exp(2j * torch.pi * f * centres / n)[None, :, None, None]).real
    return out


@pytest.mark.parametrize("shape", [ODD_HR, EVEN_HR])
def test_kspace_is_the_band_limited_hr_at_the_lr_voxel_centres(shape):
    hr = smooth_volume(shape, seed=1)
    lr = degrade(hr.double(), (4, 1, 1), "kspace")
    assert torch.allclose(lr, kspace_by_hand(hr, 4), atol=1e-10)
    # the old DFT grid (LR voxel i on HR voxel 4i) is another operator: the test can tell them apart
    old_grid = kspace_by_hand(hr, 4, torch.arange(shape[0] // 4, dtype=torch.float64) * 4)
    assert float((lr - old_grid).abs().max()) > 1e-2


def test_gaussian_keeps_a_constant_volume_constant_up_to_the_edges():
    hr = torch.full((1, *ODD_HR), 0.7)
    for factor in (0.5, 1.0, 1.5):
        lr = degrade(hr, (4, 4, 4), "gaussian", fwhm_factor=factor)
        assert torch.allclose(lr, torch.full_like(lr, 0.7), atol=1e-6)


@pytest.mark.parametrize("factor", [1.0, 1.5])
def test_gaussian_slice_profile_has_the_asked_fwhm_and_area_alignment(factor):
    # impulse at z = p in column x = p: lr[0, p, 0, i] traces LR voxel i's slice profile over p
    n, s = 48, 4
    hr = torch.zeros(1, n, 1, n, dtype=torch.float64)
    for p in range(n):
        hr[0, p, 0, p] = 1.0
    profile = degrade(hr, (1, 1, s), "gaussian", fwhm_factor=factor)[0, :, 0, 5]
    pos = torch.arange(n, dtype=torch.float64)
    centre = float((profile * pos).sum() / profile.sum())
    assert centre == pytest.approx(5 * s + (s - 1) / 2, abs=1e-6)  # centre of HR voxels 20..23, as for area
    fwhm = 2 * math.sqrt(2 * math.log(2)) * math.sqrt(float((profile * (pos - centre) ** 2).sum() / profile.sum()))
    assert fwhm == pytest.approx(factor * s, rel=0.1)
    assert float(profile.sum()) == pytest.approx(1.0, abs=1e-9)


def test_gaussian_profile_matrix_rows_are_the_profile_and_fold_at_the_edges():
    g = profile_matrix(64, 4, 1.0)
    t0, weights = gaussian_kernel(4, 1.0)
    assert g.shape == (16, 64)
    assert torch.allclose(g.sum(1), torch.ones(16, dtype=torch.float64))
    assert torch.equal(g[6, 24 + t0 : 24 + t0 + len(weights)], weights)  # interior row: the kernel itself
    assert torch.equal(g[6], g[7].roll(-4))
    assert g[0, 0] > g[6, 24]  # the first row gets the reflected tail on its edge voxel


@pytest.mark.parametrize("apodisation", APODISATIONS)
def test_kspace_keeps_the_mean_with_any_apodisation(apodisation):
    hr = smooth_volume(EVEN_HR, seed=2)
    lr = degrade(hr, (4, 4, 4), "kspace", apodisation=apodisation, tukey_alpha=0.5)
    assert float(lr.mean()) == pytest.approx(float(hr.mean()), abs=1e-6)
    if apodisation != "none":  # the window smooths: less variance than the plain truncation
        assert float(lr.std()) < float(degrade(hr, (4, 4, 4), "kspace").std())


def draws(seed, n=6, **kwargs):
    t = RandomDegradationd(scale=4, **kwargs)
    Compose([t]).set_random_state(seed=seed)  # what EpochSeedHandler does at each epoch
    hr = named(smooth_volume(EVEN_HR))
    outs = [t({"image": hr}) for _ in range(n)]
    return [o["degradation"] for o in outs], [o["lr"] for o in outs]


def test_random_degradation_is_reproducible_from_the_seed():
    rec_a, lr_a = draws(1000)
    rec_b, lr_b = draws(1000)
    rec_c, lr_c = draws(2000)
    assert rec_a == rec_b
    assert all(torch.equal(a, b) for a, b in zip(lr_a, lr_b, strict=True))
    assert rec_a != rec_c
    assert not all(torch.allclose(a, c) for a, c in zip(lr_a, lr_c, strict=True))
    for rec in rec_a:  # plain scalars, for the training log
        assert set(rec) >= {"method", "apodisation", "fwhm_factor", "noise_sigma", "bias_strength"}
        assert all(isinstance(v, (str, float, int)) for v in rec.values())


def test_draws_cover_every_method_and_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    params = [draw_degradation(rng, noise_max=0.03, bias_max=0.15) for _ in range(400)]
    assert {p.method for p in params} == set(METHODS)
    assert {p.apodisation for p in params if p.method == "kspace"} == set(APODISATIONS)
    assert {p.apodisation for p in params if p.method != "kspace"} == {"none"}
    partial = [p for p in params if p.partial_fourier < 1]
    assert {p.method for p in partial} == {"kspace"} and {p.partial_fourier for p in partial} == set(
        PARTIAL_FOURIER_FRACTIONS
    )
    assert {p.partial_fourier_axis for p in partial} == {0, 1, 2}
    assert 0.3 < len(partial) / sum(p.method == "kspace" for p in params) < 0.7
    fwhm = [p.fwhm_factor for p in params if p.method == "gaussian"]
    assert 0.5 <= min(fwhm) < 0.7 and 1.3 < max(fwhm) <= 1.5
    assert all(0 <= p.noise_sigma <= 0.03 and 0 <= p.bias_strength <= 0.15 for p in params)
    assert max(p.noise_sigma for p in params) > 0.025
    fixed = [draw_degradation(rng, method="gaussian") for _ in range(20)]
    assert {(p.method, p.fwhm_factor, p.apodisation, p.partial_fourier) for p in fixed} == {
        ("gaussian", 1.0, "none", 1.0)
    }


@pytest.mark.parametrize("method", METHODS)
def test_fixed_method_without_noise_or_bias_is_the_plain_degradation(method):
    hr = named(smooth_volume(ODD_HR), "brain.nii.gz")
    t = RandomDegradationd(scale=(1, 1, 4), method=method, noise_max=0.0, bias_max=0.0)
    t.set_random_state(5)
    out = t({"image": hr})
    assert torch.equal(out["lr"].as_tensor(), degrade(hr, (1, 1, 4), method))
    assert out["image"] is hr  # the HR is not touched
    assert torch.allclose(out["lr"].affine, low_resolution_affine(hr.affine, (1, 1, 4)).to(out["lr"].affine))
    assert out["degradation"]["method"] == method


def test_bias_pair_mode_keeps_the_pair_consistent_and_within_bound():
    hr = named(smooth_volume(EVEN_HR) + 0.5)
    t = RandomDegradationd(scale=4, method="area", noise_max=0.0, bias_max=0.15)
    t.set_random_state(0)
    out = t({"image": hr})
    strength = out["degradation"]["bias_strength"]
    assert 0 < strength <= 0.15
    ratio = out["image"] / hr
    assert float(ratio.max()) <= 1 + strength + 1e-6 and float(ratio.min()) >= 1 / (1 + strength) - 1e-6
    assert float((ratio - 1).abs().max()) > 0.5 * strength  # a real, not a negligible, field
    assert torch.allclose(out["lr"], degrade(out["image"], 4, "area"), atol=1e-6)


def test_bias_field_bounds():
    coefficients = np.random.default_rng(3).uniform(-1, 1, 9)
    f = bias_field((20, 16, 12), 0.15, coefficients)
    assert f.shape == (20, 16, 12)
    assert float(f.max()) <= 1.15 + 1e-6 and float(f.min()) >= 1 / 1.15 - 1e-6
    assert max(float(f.max()), 1 / float(f.min())) == pytest.approx(1.15, rel=1e-5)  # reaches its bound
    assert torch.equal(bias_field((4, 4, 4), 0.0, coefficients), torch.ones(4, 4, 4))
    # smooth: neighbouring voxels differ by far less than the field's range
    assert float((f[1:] - f[:-1]).abs().max()) < 0.1 * float(f.max() - f.min()) + 0.02


def test_rician_noise_has_the_asked_std_and_rayleigh_background():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 64, 64, 32)
    x[:, :32] = 1.0  # bright half sets the robust max to 1
    noisy = rician_noise(x, 0.02, g)
    bright, dark = noisy[:, :32], noisy[:, 32:]
    assert float(bright.std()) == pytest.approx(0.02, rel=0.05)
    assert float(bright.mean()) == pytest.approx(1.0, abs=1e-3)
    assert float(dark.min()) >= 0.0
    assert float(dark.mean()) == pytest.approx(0.02 * math.sqrt(math.pi / 2), rel=0.05)  # Rayleigh, not Gaussian
    assert torch.equal(rician_noise(x, 0.0, g), x)
    # a complex LR (partial Fourier) gets its noise before the magnitude: |x + n| with x complex
    phase = torch.exp(1j * torch.full_like(x, 0.7))
    assert torch.allclose(rician_noise(x * phase, 0.0, g), x)
    complex_noisy = rician_noise((x * phase).to(torch.complex64), 0.02, torch.Generator().manual_seed(0))
    assert float(complex_noisy[:, :32].mean()) == pytest.approx(1.0, abs=1e-3)
    assert float(complex_noisy[:, :32].std()) == pytest.approx(0.02, rel=0.05)


def test_partial_fourier_lr_is_a_real_magnitude_that_loses_detail_along_its_axis():
    hr = smooth_volume(EVEN_HR, seed=3) + 0.5
    full = degrade(hr, 4, "kspace")
    params = DegradationParams("kspace", partial_fourier=0.625, partial_fourier_axis=0)
    lr = apply_degradation(hr, 4, params)[1]
    assert lr.shape == full.shape and not lr.is_complex() and float(lr.min()) >= 0
    assert float(lr.mean()) == pytest.approx(float(full.mean()), rel=0.05)  # the magnitude keeps the mean about
    assert float((lr - full).abs().max()) > 1e-3  # but is not the full acquisition
    assert torch.allclose(lr, apply_degradation(hr, 4, params)[1])  # deterministic without noise


def test_noise_through_the_transform_is_clipped_and_on_the_lr_only():
    hr = named(torch.zeros(1, *EVEN_HR).index_fill_(1, torch.arange(12), 1.0))
    t = RandomDegradationd(scale=4, method="area", noise_max=0.03, bias_max=0.0)
    t.set_random_state(1)
    out = t({"image": hr})
    assert out["degradation"]["noise_sigma"] > 0
    assert float(out["lr"].min()) >= 0.0
    assert not torch.allclose(out["lr"], degrade(hr, 4, "area"), atol=1e-4)
    assert out["image"] is hr


def test_random_degradation_after_the_cache_gives_a_new_lr_each_epoch():
    data = [{"image": named(smooth_volume((20, 16, 8), seed=i), f"case{i}.nii.gz")} for i in range(2)]
    pipeline = Compose(
        [
            DivisiblePadd(keys="image", k=4),
            RandomDegradationd(scale=4),
            RandPairedCropSamplesd(lr_roi_size=(2, 2, 2), scale=4, num_samples=3),
        ]
    )
    ds = CacheDataset(data, pipeline, cache_rate=1.0, num_workers=0, progress=False)

    loader = DataLoader(ds, batch_size=1, num_workers=0)

    def epoch(seed):
        pipeline.set_random_state(seed=seed)  # as EpochSeedHandler does at EPOCH_STARTED
        return list(loader)

    first, again, second = epoch(1000), epoch(1000), epoch(2000)
    assert first[0]["lr"].shape == (3, 1, 2, 2, 2) and first[0]["image"].shape == (3, 1, 8, 8, 8)
    assert all(torch.equal(a["lr"], b["lr"]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a["lr"], b["lr"]) for a, b in zip(first, second, strict=True))
    assert "method" in first[0]["degradation"]


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("scale", [(4, 4, 4), (1, 1, 4)])
@pytest.mark.parametrize("shape", [ODD_HR, EVEN_HR])
def test_projection_makes_the_sr_consistent_with_the_lr(operator, scale, shape):
    sr = torch.stack([smooth_volume(shape, seed=4), smooth_volume(shape, seed=5)])  # (B, C, X, Y, Z)
    lr = forward_operator(torch.stack([smooth_volume(shape, seed=6)] * 2), scale, operator)
    out = project(sr, lr, scale, operator)
    assert out.shape == sr.shape and out.dtype == sr.dtype
    err = (forward_operator(out, scale, operator) - lr).abs().max() / lr.abs().max()
    assert float(err) < 1e-5
    single = project(sr[0], lr[0], scale, operator)  # unbatched gives the same
    assert torch.allclose(single, out[0], atol=1e-6)


@pytest.mark.parametrize("operator", OPERATORS)
def test_projection_leaves_a_consistent_sr_unchanged(operator):
    sr = smooth_volume(ODD_HR, seed=7)
    lr = forward_operator(sr, (4, 4, 4), operator)
    assert torch.allclose(project(sr, lr, (4, 4, 4), operator), sr, atol=1e-6)


@pytest.mark.parametrize("inverse", RIGHT_INVERSES)
@pytest.mark.parametrize("operator", OPERATORS)
def test_a_detail_gain_scales_only_what_the_operator_does_not_see(operator, inverse):
    """g = 0 is U(lr); every g and every right inverse keeps D(output) = lr; the output moves linearly in g."""
    sr, lr_source = smooth_volume(ODD_HR, seed=10), smooth_volume(ODD_HR, seed=11)
    lr = forward_operator(lr_source, (4, 4, 4), operator)
    full, none, half = (project(sr, lr, (4, 4, 4), operator, 1.0, g, inverse) for g in (1.0, 0.0, 0.5))
    assert torch.allclose(none, right_inverse(lr, ODD_HR, (4, 4, 4), operator, shape=inverse), atol=1e-6)
    assert torch.allclose(half, (full + none) / 2, atol=1e-6) and not torch.allclose(half, full, atol=1e-3)
    for out in (full, none, half):
        assert float((forward_operator(out, (4, 4, 4), operator) - lr).abs().max() / lr.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="detail_gain"):
        project(sr, lr, (4, 4, 4), operator, detail_gain=1.5)


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("scale", [(4, 4, 4), (1, 1, 5), (3, 3, 3)], ids=str)
def test_the_bspline_right_inverse_is_a_right_inverse_that_keeps_a_flat_lr_flat(operator, scale):
    shape = tuple(24 - 24 % s for s in scale)
    lr = forward_operator(smooth_volume(shape, seed=12), scale, operator)
    up = right_inverse(lr, shape, scale, operator, shape="bspline")
    assert up.shape[-3:] == shape
    assert torch.allclose(forward_operator(up, scale, operator), lr, atol=1e-5)
    flat = torch.full_like(lr, 0.3)
    assert torch.allclose(
        right_inverse(flat, shape, scale, operator, shape="bspline"),
        torch.full((1, *shape), 0.3, dtype=lr.dtype),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="right inverse shape"):
        right_inverse(lr, shape, scale, operator, shape="sinc")


def test_the_bspline_correction_of_block_average_has_no_block_edges():
    """The minimum-norm right inverse of block average repeats each LR voxel (steps every 4 HR voxels); the
    B-spline-shaped one rises over several voxels: its largest jump between neighbours is under half the step."""
    lr = torch.zeros(1, 5, 3, 3, dtype=torch.float64)
    lr[0, 2, 1, 1] = 1.0
    blocks = right_inverse(lr, (20, 3, 3), (4, 1, 1), "area")
    smooth = right_inverse(lr, (20, 3, 3), (4, 1, 1), "area", shape="bspline")
    jump = lambda v: float(v[0, :, 1, 1].diff().abs().max())  # noqa: E731
    assert jump(blocks) == pytest.approx(1.0) and jump(smooth) < 0.5 * jump(blocks)


@pytest.mark.parametrize("operator", OPERATORS)
def test_forward_operator_is_the_training_degradation(operator):
    hr = smooth_volume(EVEN_HR, seed=8)
    assert torch.equal(forward_operator(hr, (4, 4, 4), operator), degrade(hr, (4, 4, 4), operator))
    batch = torch.stack([hr, hr])
    assert torch.equal(forward_operator(batch, (1, 1, 4), operator)[1], degrade(hr, (1, 1, 4), operator))


def test_consistency_map_marks_the_block_of_a_changed_lr_voxel():
    sr = smooth_volume(EVEN_HR, seed=9)[None]
    lr = forward_operator(sr, 4, "area")
    assert torch.allclose(consistency_map(sr, lr, 4, "area"), torch.zeros_like(sr), atol=1e-6)
    lr[0, 0, 1, 2, 0] += 0.5
    cmap = consistency_map(sr, lr, 4, "area")
    assert cmap.shape == sr.shape
    expected = torch.zeros_like(sr)
    expected[0, 0, 4:8, 8:12, 0:4] = 0.5
    assert torch.allclose(cmap, expected, atol=1e-6)


def test_bad_input_gives_one_clear_error():
    with pytest.raises(ValueError, match="divide by the scale"):
        degrade(torch.rand(1, 10, 8, 8), 4, "area")
    with pytest.raises(ValueError, match="brain.nii.gz.*divide"):
        RandomDegradationd(scale=4)({"image": named(torch.rand(1, 10, 8, 8), "brain.nii.gz")})
    with pytest.raises(ValueError, match="method must be one of"):
        degrade(torch.rand(1, 8, 8, 8), 4, "cubic")
    with pytest.raises(ValueError, match="'random' or one of"):
        RandomDegradationd(method="cubic")
    with pytest.raises(ValueError, match="operator must be one of"):
        forward_operator(torch.rand(1, 8, 8, 8), 4, "trilinear")
    with pytest.raises(ValueError, match="apodisation must be one of"):
        degrade(torch.rand(1, 8, 8, 8), 4, "kspace", apodisation="hann")
    with pytest.raises(ValueError, match="LR shape"):
        project(torch.rand(1, 8, 8, 8), torch.rand(1, 2, 2, 3), 4, "area")


def test_noise_max_default_is_the_configs_value():
    """One source: the transforms' default and the config id `noise_max` of configs/train.json are NOISE_MAX, and a
    transform built without the option draws noise up to it and not beyond."""
    import inspect
    import json
    from pathlib import Path

    from bundle.core.choices import NOISE_MAX
    from bundle.data.degradation import SimulateLowResolutiond

    config = json.loads((Path(__file__).resolve().parents[2] / "configs" / "train.json").read_text())
    assert config["noise_max"] == NOISE_MAX
    for fn in (draw_degradation, RandomDegradationd.__init__, SimulateLowResolutiond.__init__):
        assert inspect.signature(fn).parameters["noise_max"].default == NOISE_MAX, fn.__qualname__
    assert RandomDegradationd(scale=4).options["noise_max"] == NOISE_MAX
    rng = np.random.default_rng(0)
    sigmas = [draw_degradation(rng).noise_sigma for _ in range(300)]
    assert max(sigmas) <= NOISE_MAX and max(sigmas) > 0.9 * NOISE_MAX


def test_evaluation_lr_of_a_fixed_degradation_is_degrade():
    hr = smooth_volume(EVEN_HR)
    for method in METHODS:
        assert torch.equal(evaluation_lr(hr, 4, method, "case"), degrade(hr, 4, method))


def test_noisy_lr_is_the_gaussian_profile_plus_seeded_rician_noise():
    hr = smooth_volume((32, 32, 32)) + 1.0  # far from 0: Rician noise is then almost Gaussian, of std sigma * max
    clean = degrade(hr, 4, "gaussian")
    noisy = evaluation_lr(hr, 4, "noisy", "case_a")
    assert noisy.shape == clean.shape
    expected_std = NOISY_LR_SIGMA * robust_max(clean)
    assert float((noisy - clean).std()) == pytest.approx(expected_std, rel=0.15)
    assert abs(float((noisy - clean).mean())) < 0.2 * expected_std
    # the same case gives the same noise (evaluation, calibration and reader study agree); another case does not
    assert torch.equal(noisy, evaluation_lr(hr, 4, "noisy", "case_a"))
    assert not torch.equal(noisy, evaluation_lr(hr, 4, "noisy", "case_b"))


def test_evaluation_operators_and_unknown_degradations():
    assert [evaluation_operator(m) for m in EVAL_METHODS] == ["kspace", "area", "gaussian", None, None, "gaussian"]
    hr = smooth_volume(EVEN_HR)
    assert torch.equal(evaluation_lr(hr, 4, "kspace_hamming", "c"), degrade(hr, 4, "kspace", apodisation="hamming"))
    with pytest.raises(ValueError, match="evaluation degradation must be one of"):
        evaluation_lr(smooth_volume(EVEN_HR), 4, "blurry", "case")
    with pytest.raises(ValueError, match="needs the case name"):  # else every volume would get the same noise
        evaluation_lr(smooth_volume(EVEN_HR), 4, "noisy", "")
    assert check_evaluation_methods(["kspace", "noisy"]) == ("kspace", "noisy")
    for bad, named in (([], "empty"), (["kspace", "cubic"], "'cubic'")):
        with pytest.raises(ValueError, match=f"eval_lr_methods: .*{named}"):
            check_evaluation_methods(bad)


def test_partial_fourier_on_an_axis_with_scale_one_still_leaves_lines_out():
    """Thick-slice mode (1, 1, 4): partial Fourier drawn on an in-plane axis acts there (it was dropped silently);
    the LR stays real, non-negative and keeps the plain truncation's shape."""
    hr = smooth_volume(EVEN_HR, seed=4) + 0.5
    plain = degrade(hr, (1, 1, 4), "kspace")
    for axis in (0, 1, 2):
        params = DegradationParams("kspace", partial_fourier=0.625, partial_fourier_axis=axis)
        lr = apply_degradation(hr, (1, 1, 4), params)[1]
        assert lr.shape == plain.shape and not lr.is_complex() and float(lr.min()) >= 0
        assert float((lr - plain).abs().max()) > 1e-3, axis
