"""The train-step benchmark's slice-count variants: any count, 'all', and 0 always there to compare with."""

import pytest

from bundle.evaluation.benchmark import slice_variants


def test_any_slice_count_and_all_in_the_order_given():
    assert slice_variants(112, "0,1,5,10,20,all") == {
        "0 (off)": 0, "1 / plane": 1, "5 / plane": 5, "10 / plane": 10, "20 / plane": 20, "all (112)": "all"
    }  # fmt: skip
    assert slice_variants(112, (0, 10, "all")) == {"0 (off)": 0, "10 / plane": 10, "all (112)": "all"}


@pytest.mark.parametrize("bad", ["10,all", "0,x", "0,-1", ""])
def test_without_zero_or_with_a_non_count_is_refused(bad):
    with pytest.raises(ValueError, match="slice counts or 'all' and include 0"):
        slice_variants(112, bad)
