"""Training on in-plane pairs: budget in time or iterations, weight averaging, one line on divergence."""

import time

import pytest
import torch

from bundle.adaptation.fit import FitSettings, fit
from bundle.adaptation.geometry import find_geometry
from bundle.adaptation.pairs import InPlanePairs
from bundle.adaptation.slab import as_slab_network
from bundle.core.errors import TrainingDiverged
from bundle.core.networks import RRDBNet3D


def setup():
    torch.manual_seed(0)
    pairs = InPlanePairs(torch.rand(6, 16, 16), find_geometry((1, 1, 4)))
    net = as_slab_network(RRDBNet3D(features=4, growth=2, num_blocks=1, scale=(1, 1, 4), residual_base="bspline"))
    return pairs, net


def test_iterations_or_seconds_end_training_and_the_loss_falls():
    pairs, net = setup()
    settings = FitSettings(batch_size=4, patch_size=8, ssim_window=3, max_iterations=60, learning_rate=1e-2)
    result = fit(net, pairs, (0, 1, 2, 3), settings, seconds=600)
    assert result.iterations == 60 and result.patches == 240 and len(result.losses) == 6
    assert result.losses[-1] < result.losses[0]
    assert not net.training
    started = time.monotonic()
    timed = fit(net, pairs, (0, 1), FitSettings(batch_size=2, patch_size=8, ssim_window=3), seconds=1.0)
    assert timed.iterations >= 1 and time.monotonic() - started < 10


def test_weight_averaging_replaces_the_last_weights_and_keeps_them():
    pairs, net = setup()
    settings = FitSettings(batch_size=2, patch_size=8, ssim_window=3, max_iterations=5, ema_decay=0.5)
    result = fit(net, pairs, (0, 1), settings, seconds=600)
    assert result.last_weights is not None
    assert not torch.equal(result.last_weights["conv_first.weight"], net.state_dict()["conv_first.weight"])


def test_a_non_finite_loss_stops_with_one_line():
    pairs, net = setup()
    with torch.no_grad():
        net.conv_first.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="adaptation diverged at iteration 0"):
        fit(net, pairs, (0,), FitSettings(batch_size=2, patch_size=8, ssim_window=3, max_iterations=3), seconds=60)


def test_l1_pixel_loss_trains_and_bad_settings_are_named():
    pairs, net = setup()
    settings = FitSettings(
        batch_size=4, patch_size=8, ssim_window=3, ssim_weight=0.0, max_iterations=40, learning_rate=1e-2, seed=3
    )
    mse = fit(net, pairs, (0, 1, 2, 3), settings, seconds=600)
    _, net_l1 = setup()
    l1 = fit(net_l1, pairs, (0, 1, 2, 3), FitSettings(**{**settings.__dict__, "pixel_loss": "l1"}), seconds=600)
    # same batches, same start: the first logged losses are the batches' mean squared and mean absolute errors
    assert l1.losses[0] > mse.losses[0]  # |e| > e^2 for errors below 1
    assert l1.losses[-1] < l1.losses[0]
    with pytest.raises(ValueError, match="pixel_loss"):
        FitSettings(pixel_loss="huber")
    with pytest.raises(ValueError, match="rotations"):
        FitSettings(rotations=-2)


def test_fewer_iterations_than_a_loss_window_still_give_a_final_loss():
    pairs, net = setup()
    result = fit(net, pairs, (0, 1), FitSettings(batch_size=2, patch_size=8, ssim_window=3, max_iterations=1), 600)
    assert result.iterations == 1 and len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[-1]))
