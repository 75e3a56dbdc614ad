"""Trust summary in input units; non-negative SR for non-negative inputs; progress with an ETA inside a volume."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from bundle.core.progress import ProgressInferer, format_seconds, windows_per_pass
from bundle.data.transforms import INTENSITY_RANGE_KEY
from bundle.trust.units import NonNegatived, RecordInputMind, SummaryInInputUnitsd, nonnegative_applies


def image(ranges, minimum=None) -> MetaTensor:
    img = MetaTensor(torch.zeros(1, 2, 2, 2))
    img.meta[INTENSITY_RANGE_KEY] = ranges
    if minimum is not None:
        img.meta["sr_input_min"] = minimum
    return img


def test_summary_fields_scale_to_input_units_and_say_so():
    summary = {"consistency_residual_mean": 0.01, "tta_std_mean": 0.02, "calibrated_uncertainty_mean": 0.2}
    summary.update(fraction_above_bound=0.05, **{"lambda": 3.0})
    out = SummaryInInputUnitsd()({"trust": summary, "image": image([(100.0, 12100.0)])})["trust"]
    assert out["calibrated_uncertainty_mean"] == pytest.approx(2400.0)  # 0.2 of a 12000-wide range
    assert out["consistency_residual_mean"] == pytest.approx(120.0) and out["tta_std_mean"] == pytest.approx(240.0)
    assert out["fraction_above_bound"] == 0.05 and out["lambda"] == 3.0  # fractions and factors keep their value
    assert out["normalised"]["calibrated_uncertainty_mean"] == 0.2 and out["intensity_range"] == [[100.0, 12100.0]]
    assert out["units"].startswith("input intensity units")
    bare = SummaryInInputUnitsd()({"trust": dict(summary), "image": MetaTensor(torch.zeros(1, 2, 2, 2))})["trust"]
    assert bare["calibrated_uncertainty_mean"] == 0.2 and bare["units"].startswith("normalised")


@pytest.mark.parametrize(
    "mode, minimum, consistency, clamped",
    [
        ("auto", 0.0, "map", True),
        ("auto", -5.0, "map", False),
        ("never", 0.0, "map", False),
        ("auto", 0.0, "project", False),  # a clamp would undo the projection
        ("always", -5.0, "project", True),
    ],
)
def test_nonnegative_clamps_only_where_the_input_had_no_negative_value(mode, minimum, consistency, clamped):
    pred = torch.tensor([[-51.6, -3.2, 0.0, 7.0]])
    step = NonNegatived("pred", mode=mode, consistency=consistency)
    out = step({"pred": pred, "image": image([(0.0, 1.0)], minimum)})["pred"]
    assert torch.equal(out, pred.clamp_min(0) if clamped else pred)
    assert nonnegative_applies(mode, minimum, consistency=consistency) == clamped  # the rule adapting calls


def test_input_minimum_is_recorded_before_normalisation():
    img = MetaTensor(torch.tensor([[[[3.0, 9.0]]]]))
    assert RecordInputMind("image")({"image": img})["image"].meta["sr_input_min"] == 3.0
    with pytest.raises(ValueError, match="nonnegative must be one of"):
        NonNegatived("pred", mode="sometimes")


@pytest.mark.parametrize("shape, roi, overlap", [((20, 17, 9), (8, 8, 6), 0.25), ((8, 8, 6), (8, 8, 6), 0.5)])
def test_window_count_matches_what_monai_runs(shape, roi, overlap):
    calls = []
    net = lambda x: calls.append(1) or x  # noqa: E731
    SlidingWindowInferer(roi_size=roi, overlap=overlap, sw_batch_size=1)(torch.zeros(1, 1, *shape), net)
    assert windows_per_pass(shape, roi, overlap) == len(calls)


def test_progress_logs_windows_passes_and_an_eta(caplog):
    inferer = ProgressInferer(SlidingWindowInferer(roi_size=(8, 8, 6), overlap=0.25), passes=2, interval=0)
    x = torch.zeros(1, 1, 20, 17, 9)
    with caplog.at_level(logging.INFO, logger="bundle.core.progress"):
        for _ in range(2):  # two TTA passes of one volume
            inferer(x, lambda t: t)
    lines = [r.getMessage() for r in caplog.records]
    total = 2 * windows_per_pass((20, 17, 9), (8, 8, 6), 0.25)
    assert lines[0].startswith(f"super-resolving: window 1/{total} (pass 1/2)") and "left" in lines[0]
    assert lines[-1].startswith(f"super-resolving: window {total}/{total} (pass 2/2)") and lines[-1].endswith("done")
    assert format_seconds(65) == "1:05" and format_seconds(3723) == "1:02:03"
