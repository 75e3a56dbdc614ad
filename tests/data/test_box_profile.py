"""A box slice profile narrower than its spacing (a gap between slices): "area" with fwhm_factor != 1."""

import pytest
import torch

from bundle.data.operators import axis_matrix, box_kernel, degrade, forward_operator, lr_centre, project


def test_a_box_of_the_full_spacing_is_the_block_mean():
    x = torch.rand(1, 4, 6, 40, dtype=torch.float64)
    assert torch.allclose(degrade(x, (1, 1, 5), "area", fwhm_factor=1.0 + 1e-12), degrade(x, (1, 1, 5), "area"))


@pytest.mark.parametrize(
    "s, factor, t0, weights",
    [(5, 0.6, 1, [1 / 3, 1 / 3, 1 / 3]), (4, 0.5, 1, [0.5, 0.5]), (4, 0.625, 0, [0.1, 0.4, 0.4, 0.1])],
)
def test_a_narrower_box_weights_the_part_of_each_thin_voxel_inside_it(s, factor, t0, weights):
    start, w = box_kernel(s, factor)
    assert start == t0 and torch.allclose(w, torch.tensor(weights, dtype=torch.float64))
    centre = start + float((w * torch.arange(len(w), dtype=torch.float64)).sum())
    assert centre == pytest.approx(lr_centre(0, s))  # centred where every operator centres LR voxel 0


def test_a_gap_keeps_geometry_symmetry_and_projection():
    x = torch.rand(1, 5, 4, 40, dtype=torch.float64)
    lr = degrade(x, (1, 1, 5), "area", fwhm_factor=0.6)
    assert lr.shape == (1, 5, 4, 8)
    assert torch.allclose(lr[..., 2], x[..., 11:14].mean(-1))  # slice 2 of a 3 mm slice every 5 mm: voxels 11-13
    flipped = degrade(torch.flip(x, [-1]), (1, 1, 5), "area", fwhm_factor=0.6)
    assert torch.allclose(torch.flip(flipped, [-1]), lr)  # storage orientation cannot move the result
    guess = torch.rand_like(x)
    assert torch.allclose(forward_operator(project(guess, lr, (1, 1, 5), "area", 0.6), (1, 1, 5), "area", 0.6), lr)
    assert torch.allclose(axis_matrix(40, 5, "area", 0.6).sum(1), torch.ones(8, dtype=torch.float64))
