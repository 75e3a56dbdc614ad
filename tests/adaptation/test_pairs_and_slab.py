"""In-plane training pairs and held-out splits; the generator on one-voxel slabs equals the 3-D one."""

import pytest
import torch

from bundle.adaptation.geometry import degrade_along_last, find_geometry
from bundle.adaptation.pairs import InPlanePairs, rotate_images, split_slices
from bundle.adaptation.predict import predict_slabs
from bundle.adaptation.slab import SlabConv3d, as_slab_network
from bundle.core.errors import DatasetError
from bundle.core.networks import RRDBNet3D


def test_split_is_disjoint_seeded_and_refuses_too_few_slices():
    split = split_slices(20, 0.3, seed=1)
    parts = [set(split.train), set(split.calibration), set(split.check)]
    assert set.union(*parts) == set(range(20)) and sum(map(len, parts)) == 20
    assert len(split.calibration) == 3 and len(split.check) == 3
    assert split == split_slices(20, 0.3, seed=1) and split != split_slices(20, 0.3, seed=2)
    small = split_slices(6)
    assert len(small.train) >= 2 and len(small.calibration) >= 2 and len(small.check) >= 2
    with pytest.raises(DatasetError, match="5 slices are too few"):
        split_slices(5)


def test_patch_pairs_are_crops_of_the_image_pairs_in_both_orientations():
    g = find_geometry((1, 1, 4))
    images = torch.rand(3, 16, 24)
    pairs = InPlanePairs(images, g)
    assert pairs.lr[0].shape == (3, 16, 6) and pairs.lr[1].shape == (3, 24, 4)
    assert torch.allclose(pairs.lr[1], degrade_along_last(images.transpose(1, 2), g))
    lr, hr = pairs.sample((0, 2), batch_size=32, size=8, generator=torch.Generator().manual_seed(0))
    assert lr.shape == (32, 1, 1, 8, 2) and hr.shape == (32, 1, 1, 8, 8)
    for k in range(32):  # each HR patch is a crop of some image pair (possibly flipped); its LR the same crop
        h, low = hr[k, 0, 0], lr[k, 0, 0]
        found = False
        for o in (0, 1):
            for flips in ([], [0], [1], [0, 1]):
                hr_all = torch.flip(pairs.hr[o], [d + 1 for d in flips]) if flips else pairs.hr[o]
                lr_all = torch.flip(pairs.lr[o], [d + 1 for d in flips]) if flips else pairs.lr[o]
                for i in range(3):
                    for q0 in range(hr_all.shape[1] - 7):
                        for j0 in range(lr_all.shape[2] - 1):
                            if torch.equal(hr_all[i, q0 : q0 + 8, 4 * j0 : 4 * j0 + 8], h):
                                found = found or torch.equal(lr_all[i, q0 : q0 + 8, j0 : j0 + 2], low)
        assert found
    lr_whole, hr_whole = pairs.whole((1, 2), 1)
    assert lr_whole.shape == (2, 1, 1, 24, 4) and torch.equal(hr_whole[0, 0, 0], images[1].T)


def test_all_phases_cuts_pairs_at_every_decimation_phase_and_each_lr_is_the_profile_of_its_hr():
    g = find_geometry((1, 1, 4), profile="box")  # a box slab has no support outside itself: D(hr patch) == lr patch
    n, q, u = 3, 24, 24
    images = (
        1e5 * torch.arange(n).view(n, 1, 1) + 1e3 * torch.arange(q).view(1, q, 1) + torch.arange(u).view(1, 1, u)
    ).float()  # every value names its image, row and column
    pairs = InPlanePairs(images, g, all_phases=True)
    assert [lr.shape[2] for lr in pairs.phase_lr[0]] == [6, 5, 5, 5]
    assert torch.allclose(pairs.phase_lr[0][3], degrade_along_last(images[:, :, 3:23], g))
    assert len(InPlanePairs(images, g).phase_lr[0]) == 1  # off: the first phase only
    lr, hr = pairs.sample((0, 1, 2), batch_size=200, size=8, generator=torch.Generator().manual_seed(1))
    phases = set()
    for low, high in zip(lr[:, 0, 0], hr[:, 0, 0], strict=True):
        assert torch.allclose(degrade_along_last(high[None], g)[0], low)
        v = int(high.min()) % 100000
        degraded_axis_start = v % 1000 if abs(float(high[0, 1] - high[0, 0])) == 1 else v // 1000
        phases.add(degraded_axis_start % 4)
    assert phases == {0, 1, 2, 3}


def test_rotate_images_turns_in_pixel_space_whatever_the_aspect():
    x = torch.rand(2, 16, 16)
    assert torch.allclose(rotate_images(x, 0.0), x, atol=1e-5)
    assert torch.allclose(rotate_images(x, 90.0), torch.rot90(x, 1, (1, 2)), atol=1e-5)
    # a non-square image: a horizontal bar turned by 90 degrees is a vertical bar of the same length, not stretched
    bar = torch.zeros(1, 21, 41)
    bar[0, 10, 15:26] = 1.0
    turned = rotate_images(bar, 90.0)[0]
    assert turned.shape == (21, 41)
    column = turned[:, 20]
    assert torch.allclose(column[5:16], torch.ones(11), atol=1e-4) and float(column[:4].abs().max()) < 1e-4
    with pytest.raises(ValueError, match="rotations"):
        InPlanePairs(torch.rand(2, 8, 8), find_geometry((1, 1, 4)), rotations=-1)


def test_rotations_add_degraded_rotated_copies_and_never_sample_a_held_out_image():
    g = find_geometry((1, 1, 4), profile="box")
    images = torch.arange(1.0, 7.0).view(6, 1, 1) * torch.ones(6, 24, 24)  # image i holds only the value i + 1
    images[:, 8:16, 8:16] += 0.5  # and a square, so that a rotation changes it
    pairs = InPlanePairs(images, g, rotations=2)
    assert [len(r) for r in pairs.rotated] == [2, 2]
    hr30, lr30 = pairs.rotated[0][0]
    assert torch.allclose(hr30, rotate_images(images, 30.0)) and torch.allclose(lr30, degrade_along_last(hr30, g))
    hr60, _ = pairs.rotated[1][1]
    assert torch.allclose(hr60, rotate_images(images, 60.0).transpose(1, 2))
    assert InPlanePairs(images, g).rotated == ([], [])
    lr, hr = pairs.sample((1, 4), batch_size=300, size=8, generator=torch.Generator().manual_seed(2))
    for h in hr[:, 0, 0]:  # images 1 and 4 only (value 2 or 5, up to 0.5 above in the square, bicubic overshoot)
        assert any(v - 0.2 < float(h.min()) and float(h.max()) < v + 0.7 for v in (2.0, 5.0))
    # some patches are rotated: their square's edges are not aligned with the axes (values between 0 and 0.5)
    fractional = (hr - hr.floor()).flatten()
    assert bool(((fractional > 0.05) & (fractional < 0.45)).any())
    for low, high in zip(lr[:, 0, 0], hr[:, 0, 0], strict=True):
        assert low.shape == (8, 2) and high.shape == (8, 8)


def test_slab_network_equals_the_3d_network_and_keeps_its_checkpoint_keys():
    torch.manual_seed(0)
    reference = RRDBNet3D(features=8, growth=4, num_blocks=1, scale=(1, 1, 4), residual_base="bspline")
    torch.nn.init.normal_(reference.conv_last.weight, std=0.05)
    slab = RRDBNet3D(features=8, growth=4, num_blocks=1, scale=(1, 1, 4), residual_base="bspline")
    slab.load_state_dict(reference.state_dict())
    as_slab_network(slab)
    assert any(isinstance(m, SlabConv3d) for m in slab.modules())
    assert slab.state_dict().keys() == reference.state_dict().keys()
    x = torch.rand(3, 1, 1, 12, 5)
    assert torch.allclose(slab(x), reference(x), atol=1e-6)
    thick = torch.rand(1, 1, 3, 6, 5)  # not a slab: the 3-D path
    assert torch.allclose(slab(thick), reference(thick), atol=1e-6)


def test_slab_tta_mean_and_std():
    def predict(x):  # a "network" that is not flip-equivariant: x4 nearest plus a ramp along the last axis
        up = x.repeat_interleave(4, dim=-1)
        return up + torch.linspace(0, 1, up.shape[-1])

    slabs = torch.rand(2, 1, 1, 6, 3)
    mean, std = predict_slabs(predict, slabs, passes=4, batch_size=1)
    up = slabs.repeat_interleave(4, dim=-1)
    ramp = torch.linspace(0, 1, 12)
    assert torch.allclose(
        mean, up + (ramp + ramp.flip(0)) / 2 * 1.0, atol=1e-6
    )  # flips of the last axis average the ramp
    assert torch.allclose(std, ((ramp - ramp.flip(0)).abs() / 2).expand_as(std), atol=1e-6)
    single, zero = predict_slabs(predict, slabs, passes=1)
    assert torch.allclose(single, up + ramp) and torch.count_nonzero(zero) == 0
    with pytest.raises(ValueError, match="1 to 4 passes"):
        predict_slabs(predict, slabs, passes=5)
