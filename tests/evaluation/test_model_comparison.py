"""The fidelity and perceptual models side by side: rows, the verdict, and refusing evaluations of other scans."""

import pytest

from bundle.evaluation.model_comparison import compare_models, comparison_lines


def summary(**methods: tuple[float, float, float]) -> dict:
    """A summary.json's pooled `methods` from (LPIPS, PSNR, SSIM) per method."""
    return {
        "methods": {
            m: {"lpips": {"mean": lp}, "psnr": {"mean": ps}, "ssim": {"mean": ss}}
            for m, (lp, ps, ss) in methods.items()
        }
    }


BASE = {"bspline": (0.20, 25.0, 0.70), "trilinear": (0.22, 24.5, 0.68)}


def test_goal_met_when_lpips_falls_below_both_and_psnr_stays_within_a_db():
    fidelity = summary(**BASE, sr=(0.15, 27.0, 0.78), sr_project=(0.14, 27.5, 0.80))
    perceptual = summary(**BASE, sr=(0.10, 26.3, 0.76))
    result = compare_models(fidelity, perceptual)
    assert result["verdict"]["goal_met"] and result["verdict"]["psnr_drop_db"] == pytest.approx(0.7)
    assert result["rows"]["perceptual model (as written)"]["lpips"] == 0.10
    lines = comparison_lines(fidelity, perceptual, "held-out")
    assert lines[4].startswith("| cubic B-spline | 0.2000 | 25.00 | 0.7000 |")  # the baseline first
    assert not any("perceptual model, true-operator projection" in line for line in lines)  # no such row: left out
    assert lines[-1].endswith("goal met")


@pytest.mark.parametrize(
    "perceptual_sr, failed", [((0.16, 26.9, 0.77), "lpips_below_fidelity"), ((0.12, 25.8, 0.75), "psnr_within_margin")]
)
def test_goal_not_met_names_what_failed(perceptual_sr, failed):
    fidelity = summary(**BASE, sr=(0.15, 27.0, 0.78))
    result = compare_models(fidelity, summary(**BASE, sr=perceptual_sr))
    assert not result["verdict"]["goal_met"] and not result["verdict"][failed]
    assert comparison_lines(fidelity, summary(**BASE, sr=perceptual_sr), "x")[-1].endswith("goal NOT met")


def test_lpips_above_bspline_fails_even_below_the_fidelity_model():
    fidelity = summary(**BASE, sr=(0.25, 27.0, 0.78))
    verdict = compare_models(fidelity, summary(**BASE, sr=(0.22, 26.8, 0.77)))["verdict"]
    assert verdict["lpips_below_fidelity"] and not verdict["lpips_below_bspline"] and not verdict["goal_met"]


def test_evaluations_of_different_scans_are_refused():
    other = dict(BASE, bspline=(0.20, 24.0, 0.70))
    with pytest.raises(ValueError, match="bspline PSNR differs .* not the same scans"):
        compare_models(summary(**BASE, sr=(0.1, 27, 0.8)), summary(**other, sr=(0.1, 27, 0.8)))
