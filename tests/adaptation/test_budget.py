"""The time budget of `run adapting`: the predictions' cost measured on the scan's own slabs, training gets the
rest, turns only when they fit, a budget too small refused in one line naming one that fits, progress with ETA."""

import logging

import pytest
import torch

from bundle.adaptation.budget import (
    MIN_TRAINING_FRACTION,
    SAFETY,
    PredictionCost,
    PredictionProgress,
    measure_prediction,
    training_seconds,
)
from bundle.adaptation.geometry import ScanGeometry
from bundle.core.errors import ConfigError

GEOMETRY = ScanGeometry((1.0, 1.0, 4.0), 2, 4.0, 4, 4.0, "gaussian")


def upsample(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, Q, S) -> (B, 1, 1, Q, 4S): a stand-in generator."""
    return torch.repeat_interleave(x, 4, dim=-1)


def cost(unturned: float = 20.0, per_turn: float = 40.0, held_out: float = 5.0, turns: int = 1) -> PredictionCost:
    return PredictionCost(1e-6, unturned, per_turn, held_out, turns)


def test_training_gets_the_budget_less_the_time_spent_and_every_prediction_when_it_fits():
    c = cost()
    assert c.essential == pytest.approx(SAFETY * 25 + 5) and c.total == pytest.approx(c.essential + SAFETY * 40)
    assert training_seconds(600.0, 30.0, c) == pytest.approx(600 - 30 - c.total)


def test_turns_that_would_halve_training_are_left_out_of_the_reserve_and_said(caplog):
    c = cost(per_turn=200.0)
    with caplog.at_level(logging.WARNING):
        seconds = training_seconds(300.0, 10.0, c)
    assert seconds == pytest.approx(300 - 10 - c.essential)
    assert "turned predictions" in caplog.text and "do not fit" in caplog.text


def test_a_budget_too_short_to_train_is_refused_in_one_line_with_the_smallest_that_fits():
    c = cost(unturned=150.0, turns=0)
    with pytest.raises(ConfigError) as err:
        training_seconds(180.0, 20.0, c, source="scan.nii.gz")
    message = str(err.value)
    assert "\n" not in message and message.startswith("scan.nii.gz: --max_minutes 3 is too short")
    suggested = float(message.split("use --max_minutes ")[1].split()[0])
    # the suggestion fits: it leaves at least the minimum share for training, and half a minute less would not
    assert training_seconds(suggested * 60, 20.0, c) >= MIN_TRAINING_FRACTION * suggested * 60
    with pytest.raises(ConfigError):
        training_seconds((suggested - 0.5) * 60, 20.0, c)


def test_a_turn_fits_only_in_the_time_it_was_measured_to_take():
    c = cost(per_turn=40.0)
    assert c.turn_fits(SAFETY * 40 + 5 + 0.1) and not c.turn_fits(SAFETY * 40)


def test_the_cost_is_measured_on_the_scans_slabs_and_a_turn_costs_its_padded_scan():
    volume = torch.rand(40, 36, 6)
    measured = measure_prediction(upsample, volume, GEOMETRY, passes=2, turns=1, held_out_pixels=1000)
    assert measured.per_pixel > 0 and measured.turns == 1
    assert measured.unturned == pytest.approx(measured.per_pixel * 2 * volume.numel())
    assert measured.held_out > measured.per_pixel * 1000  # the prediction, and its B-spline and scores
    assert measured.per_turn > measured.unturned  # the turned scan is padded to its diagonal
    assert measure_prediction(upsample, volume, GEOMETRY, 1, 0, 0).per_turn == 0.0


def test_progress_logs_slabs_elapsed_and_time_left(caplog):
    progress = PredictionProgress(10, "predicting", interval=0.0)
    with caplog.at_level(logging.INFO):
        progress(4)
        progress.add_total(10)
        progress(16)
    lines = [r.getMessage() for r in caplog.records]
    assert "slab 4/10" in lines[0] and "left" in lines[0]
    assert "slab 20/20" in lines[1] and lines[1].endswith("done")


def test_a_turn_is_rescaled_by_how_long_the_unturned_prediction_really_took():
    c = cost(unturned=100.0, per_turn=200.0)
    assert not c.turn_fits(60.0)  # SAFETY * 200 + 5 as measured at the start
    assert c.turn_fits(30.0, unturned_took=10.0)  # ten times faster than measured: 20 + 5, no safety on a real time
    assert not c.turn_fits(24.0, unturned_took=10.0)
