"""Predictions over the whole thick scan: both slab orientations, and turns about the slice axis."""

import math

import pytest
import torch

from bundle.adaptation.geometry import ScanGeometry, from_slabs, to_slabs
from bundle.adaptation.predict import predict_volume, rotated_prediction, rotation_padding

GEOMETRY = ScanGeometry((1.0, 1.0, 4.0), 2, 4.0, 4, 4.0, "gaussian")


def along_slices(x):
    """A "network" that acts on each line along the slab's last (slice) axis alone, the same way everywhere: it
    commutes with any in-plane turn of the scan, so turned predictions must equal the unturned one."""
    return torch.nn.functional.interpolate(x[:, :, 0], scale_factor=(1, 4), mode="bilinear", align_corners=False)[
        :, :, None
    ]


def smooth_scan(shape=(40, 36, 6)):
    """Low-frequency in-plane pattern (far below the in-plane Nyquist, so bicubic turns are nearly exact)."""
    x, y, z = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    return 1 + torch.sin(2 * math.pi * x / 23) * torch.cos(2 * math.pi * y / 19) + 0.3 * torch.cos(z)


def test_rotation_padding_keeps_the_image_in_frame_at_any_angle():
    pad_a, pad_b = rotation_padding((40, 36))
    diagonal = math.hypot(40, 36)
    assert 40 + 2 * pad_a >= diagonal + 4 and 36 + 2 * pad_b >= diagonal + 4
    assert 40 + 2 * pad_a <= diagonal + 6  # not more than the diagonal and the kernel's margin


def test_without_rotations_the_sr_is_the_mean_of_both_slab_orientations():
    scan = torch.rand(10, 12, 5)

    def not_symmetric(x):  # differs between the two orientations: x4 nearest plus a ramp along Q
        return x.repeat_interleave(4, dim=-1) + torch.linspace(0, 1, x.shape[3])[:, None]

    prediction = predict_volume(not_symmetric, scan, GEOMETRY, passes=1, rotations=0)
    fields = [from_slabs(not_symmetric(to_slabs(scan, 2, across)), 2, across) for across in (0, 1)]
    assert torch.allclose(prediction.sr, (fields[0] + fields[1]) / 2, atol=1e-6)
    assert torch.count_nonzero(prediction.std) == 0  # one pass: no test-time spread
    # the members' spread about their mean: for two members, half their difference squared; through a linear map
    # (as the consistency step's projection is) the spread of the mapped members
    assert len(prediction.members) == 2 and prediction.turns == 0
    spread = prediction.spread()
    assert torch.allclose(spread, ((fields[0] - fields[1]) / 2).square(), atol=1e-6) and spread.max() > 0.01
    assert torch.allclose(prediction.spread(lambda x: 3 * x + 1), 9 * spread, atol=1e-5)
    # the written output given (as the workflow has it) instead of made again: the same spread
    given = prediction.spread(lambda x: 3 * x + 1, written=3 * prediction.sr + 1)
    assert torch.equal(given, prediction.spread(lambda x: 3 * x + 1))


@pytest.mark.parametrize("degrees", [45.0, 30.0])
def test_a_turned_prediction_is_the_unturned_one_for_a_network_that_commutes_with_turns(degrees):
    scan = smooth_scan()
    plain = predict_volume(along_slices, scan, GEOMETRY, passes=1).sr
    turned = rotated_prediction(along_slices, scan, GEOMETRY, degrees, passes=1)
    assert len(turned) == 2 and all(m.shape == plain.shape == (40, 36, 24) for m, _ in turned)
    for mean, variance in turned:  # equal up to two bicubic resamplings (about 1 % of the pattern's amplitude)
        assert (mean - plain).abs().mean() < 0.012 and (mean - plain).abs().max() < 0.05
        assert (variance >= 0).all()
    ensemble = predict_volume(along_slices, scan, GEOMETRY, passes=1, rotations=1)
    assert (ensemble.sr - plain).abs().max() < 0.03 and ensemble.turns == 1
    assert len(ensemble.members) == 4 and ensemble.spread().max() < 0.03**2  # members that agree: (almost) no spread


def test_turns_that_the_budget_cannot_hold_are_skipped_and_progress_counts_every_slab():
    scan = smooth_scan()
    counted: list[int] = []
    asked: list[bool] = []

    def no_time_left() -> bool:
        asked.append(True)
        return False

    skipped = predict_volume(
        along_slices, scan, GEOMETRY, passes=1, rotations=2, progress=counted.append, turn_fits=no_time_left
    )
    plain = predict_volume(along_slices, scan, GEOMETRY, passes=1).sr
    assert skipped.turns == 0 and len(asked) == 1 and torch.equal(skipped.sr, plain)
    assert sum(counted) == scan.shape[0] + scan.shape[1]  # one slab per index of each in-plane axis


def test_a_network_that_does_not_commute_with_turns_gives_another_turned_prediction():
    scan = smooth_scan()

    def shifts_along_q(x):  # reads the neighbour along the slab's in-plane axis: a turn changes what it reads
        return along_slices(torch.roll(x, 3, dims=3))

    plain = predict_volume(shifts_along_q, scan, GEOMETRY, passes=1).sr
    turned = rotated_prediction(shifts_along_q, scan, GEOMETRY, 45.0, passes=1)
    assert (turned[0][0] - plain).abs().mean() > 0.1


def test_turns_of_a_thin_scan_pad_by_edge_values_and_negative_counts_are_refused():
    scan = smooth_scan((6, 40, 3))  # 6 pixels cannot reflect a pad of 20
    turned = predict_volume(along_slices, scan, GEOMETRY, passes=2, rotations=1)
    assert turned.sr.shape == turned.std.shape == turned.spread().shape == (6, 40, 12)
    assert torch.isfinite(turned.sr).all() and (turned.spread() >= 0).all()
    with pytest.raises(ValueError, match="rotations must be >= 0"):
        predict_volume(along_slices, scan, GEOMETRY, rotations=-1)
