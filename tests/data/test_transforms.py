import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from bundle.core.geometry import super_resolution_affine
from bundle.data.degradation import SimulateLowResolutiond
from bundle.data.operators import degrade as simulate_low_resolution
from bundle.data.transforms import (
    CheckVolumed,
    RandPairedCropSamplesd,
    RestoreIntensityd,
    RobustNormalised,
    SelectChanneld,
)


def named(arr, name="case.nii.gz", affine=None):
    return MetaTensor(torch.as_tensor(arr, dtype=torch.float32), affine=affine, meta={"filename_or_obj": name})


def test_kspace_lr_has_expected_shape_and_keeps_mean():
    hr = torch.rand(1, 24, 16, 12)
    lr = simulate_low_resolution(hr, (4, 4, 4), "kspace")
    assert lr.shape == (1, 6, 4, 3)
    assert torch.isclose(lr.mean(), hr.mean(), atol=1e-6)


def test_kspace_lr_of_a_band_limited_volume_is_its_sampling_at_the_lr_voxel_centres():
    # a volume whose spectrum fits inside the LR band is reproduced exactly on the coarse grid, whose voxel i is
    # centred on HR position 4i + 1.5 (the FOV-aligned grid of every operator and of the LR affine)
    x = torch.arange(16.0, dtype=torch.float64)
    wave = torch.cos(2 * torch.pi * x / 16)[:, None, None] * torch.ones(16, 16, 16, dtype=torch.float64)
    lr = simulate_low_resolution(wave[None] + 1, (4, 4, 4), "kspace")
    assert lr.std(dim=(2, 3)).max() < 1e-10  # no variation along y, z
    centres = torch.arange(4, dtype=torch.float64) * 4 + 1.5
    assert torch.allclose(lr[0, :, 0, 0], torch.cos(2 * torch.pi * centres / 16) + 1, atol=1e-10)


def test_area_and_trilinear_methods():
    hr = torch.rand(1, 8, 8, 8)
    assert torch.allclose(simulate_low_resolution(hr, (2, 2, 2), "area"), F.avg_pool3d(hr[None], 2)[0])
    assert simulate_low_resolution(hr, (4, 4, 2), "trilinear").shape == (1, 2, 2, 4)


def test_lr_simulation_rejects_indivisible_size_naming_file():
    with pytest.raises(ValueError, match="brain.nii.gz.*divide"):
        SimulateLowResolutiond(scale=4)({"image": named(torch.rand(1, 10, 8, 8), "brain.nii.gz")})


def test_lr_simulation_rejects_unknown_method():
    with pytest.raises(ValueError, match="kspace"):
        SimulateLowResolutiond(method="cubic")


def test_random_lr_simulation_depends_on_the_file_name_not_on_how_its_path_is_spelled(tmp_path, monkeypatch):
    # the validation LR of lr_method "random" is drawn from (seed, file name): the same file reached through an
    # absolute path, a relative one or a symlinked folder must give the same LR, or the validation score (and the
    # best model) of one configuration would change with where the dataset lies
    import nibabel as nib
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    arr = np.random.default_rng(0).random((16, 12, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(data_dir / "BRATS_007.nii.gz"))
    (tmp_path / "link").symlink_to(data_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    load = EnsureChannelFirstd("image", channel_dim="no_channel")
    simulate = SimulateLowResolutiond(scale=4, method="random", seed=0, noise_max=0.05)
    lrs = [
        simulate(load(LoadImaged("image")({"image": path})))["lr"]
        for path in (str(data_dir / "BRATS_007.nii.gz"), "data/BRATS_007.nii.gz", "./link/BRATS_007.nii.gz")
    ]
    assert lrs[0].shape == (1, 4, 3, 2)
    assert torch.equal(lrs[0], lrs[1]) and torch.equal(lrs[0], lrs[2])
    # while another file name (or another seed) draws another degradation, so the mix is not one degradation
    drawn = {
        str(SimulateLowResolutiond(method="random", seed=seed)._params(name))
        for seed in (0, 1)
        for name in ("/a/BRATS_007.nii.gz", "/a/BRATS_008.nii.gz")
    }
    assert len(drawn) == 4


def test_paired_crops_are_aligned_with_area_lr():
    hr = named(torch.rand(1, 32, 24, 16))
    data = SimulateLowResolutiond(scale=4, method="area")({"image": hr})
    crop = RandPairedCropSamplesd(lr_roi_size=(3, 2, 2), scale=4, num_samples=5, foreground_prob=0.5)
    crop.set_random_state(3)
    samples = crop(data)
    assert len(samples) == 5
    for s in samples:
        assert s["lr"].shape == (1, 3, 2, 2) and s["image"].shape == (1, 12, 8, 8)
        assert torch.allclose(F.avg_pool3d(s["image"][None], 4)[0], s["lr"], atol=1e-6)


def test_paired_crop_per_axis_scale():
    hr = named(torch.rand(1, 16, 16, 5))
    data = SimulateLowResolutiond(scale=(4, 4, 1), method="area")({"image": hr})
    s = RandPairedCropSamplesd(lr_roi_size=(2, 2, 3), scale=(4, 4, 1), num_samples=1)(data)[0]
    assert s["lr"].shape == (1, 2, 2, 3) and s["image"].shape == (1, 8, 8, 3)


def test_paired_crop_rejects_volume_smaller_than_patch():
    data = {"lr": named(torch.rand(1, 4, 4, 4), "small.nii.gz"), "image": named(torch.rand(1, 16, 16, 16))}
    with pytest.raises(ValueError, match="small.nii.gz.*smaller than the LR patch"):
        RandPairedCropSamplesd(lr_roi_size=(5, 4, 4), scale=4)(data)


def test_select_channel_and_errors():
    img = named(torch.stack([torch.zeros(4, 4, 4), torch.ones(4, 4, 4)]), "four.nii.gz")
    assert SelectChanneld("image", channel=1)({"image": img})["image"].mean() == 1
    assert SelectChanneld("image", channel="all")({"image": img})["image"].shape[0] == 2
    with pytest.raises(ValueError, match="four.nii.gz.*channel 3"):
        SelectChanneld("image", channel=3)({"image": img})
    with pytest.raises(ValueError, match="index or 'all'"):
        SelectChanneld("image", channel="flair")


@pytest.mark.parametrize(
    "arr, message",
    [
        (torch.rand(1, 8, 8), "expected a 3D volume"),
        (torch.full((1, 8, 8, 8), float("nan")), "NaN"),
        (torch.ones(1, 8, 8, 8), "constant"),
        (torch.rand(1, 8, 8, 2), "smaller than required"),
    ],
)
def test_check_volume_errors_name_the_file(arr, message):
    with pytest.raises(ValueError, match=f"scan.nii.gz.*{message}"):
        CheckVolumed("image", min_size=(4, 4, 4))({"image": named(arr, "scan.nii.gz")})


def test_robust_normalisation_round_trip():
    arr = torch.randn(1, 10, 10, 10) * 100 + 500
    d = RobustNormalised("image", lower=0, upper=100, clip=False)({"image": named(arr)})
    assert d["image"].min() == 0 and d["image"].max() == 1
    d["pred"] = d["image"].clone()
    restored = RestoreIntensityd("pred", ref_key="image")(d)["pred"]
    assert torch.allclose(torch.as_tensor(restored), arr, atol=1e-3)


def test_robust_normalisation_is_per_channel():
    arr = torch.stack([torch.rand(6, 6, 6), torch.rand(6, 6, 6) * 1000 + 50])
    d = RobustNormalised("image", lower=0, upper=100)({"image": named(arr)})
    assert torch.allclose(d["image"].amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(d["image"].amax(dim=(1, 2, 3)), torch.ones(2))
    d["pred"] = d["image"].clone()
    assert torch.allclose(torch.as_tensor(RestoreIntensityd("pred")(d)["pred"]), arr, rtol=1e-4)


def test_robust_normalisation_clips_to_unit_range():
    arr = torch.rand(1, 10, 10, 10)
    out = RobustNormalised("image", lower=5, upper=95)({"image": named(arr)})["image"]
    assert out.min() == 0 and out.max() == 1


def test_sr_affine_spacing_and_extent():
    a = torch.tensor([[0.0, 0, 2.0, 10], [0, -3.0, 0, 20], [1.5, 0, 0, -5], [0, 0, 0, 1]], dtype=torch.float64)
    s = (4, 4, 2)
    sr = super_resolution_affine(a, s)
    lr_shape = np.array([5, 6, 7])
    # spacing divides by the scale
    assert np.allclose(np.linalg.norm(sr[:3, :3].numpy(), axis=0), np.linalg.norm(a[:3, :3].numpy(), axis=0) / s)

    # the outer voxel faces coincide: the physical box is the same
    def box(affine, shape):
        corners = np.array([[-0.5, -0.5, -0.5, 1], [*(shape - 0.5), 1]]).T
        return (affine.numpy() @ corners)[:3]

    assert np.allclose(box(a, lr_shape), box(sr, lr_shape * np.array(s)))
