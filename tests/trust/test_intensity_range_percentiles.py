"""The trust summary's `intensity_range` is the input's robust percentile range, and the summary says which
percentiles (`intensity_range_percentiles`), so nobody reads it as the input's minimum and maximum."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from bundle.data.transforms import INTENSITY_RANGE_KEY
from bundle.trust.units import SummaryInInputUnitsd


def _summary(**kwargs) -> dict:
    img = MetaTensor(torch.zeros(1, 2, 2, 2))
    img.meta[INTENSITY_RANGE_KEY] = [(100.0, 12100.0)]
    return SummaryInInputUnitsd(**kwargs)({"trust": {"tta_std_mean": 0.02}, "image": img})["trust"]


def test_intensity_range_names_its_percentiles():
    out = _summary()
    assert out["intensity_range"] == [[100.0, 12100.0]]  # unchanged for existing readers
    assert out["intensity_range_percentiles"] == [0.5, 99.5]  # the normaliser's defaults
    assert _summary(percentiles=[1, 99])["intensity_range_percentiles"] == [1.0, 99.0]
    with pytest.raises(ValueError, match="percentiles"):
        SummaryInInputUnitsd(percentiles=(99.5, 0.5))


def test_no_recorded_range_claims_no_percentiles():
    bare = SummaryInInputUnitsd()({"trust": {"tta_std_mean": 0.02}, "image": MetaTensor(torch.zeros(1, 2, 2, 2))})
    assert "intensity_range" not in bare["trust"] and "intensity_range_percentiles" not in bare["trust"]
