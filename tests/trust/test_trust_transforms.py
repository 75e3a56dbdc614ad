"""Inference post-processing of the trust layer, transform by transform, on hand-made tensors."""

import logging

import pytest
import torch
from monai.data import MetaTensor

from bundle.core.digest import file_sha256
from bundle.core.errors import OutputError
from bundle.data.operators import forward_operator
from bundle.trust.consistency import ConsistencyStep
from bundle.trust.record import NO_ESTIMATOR, CalibrationRecord
from bundle.trust.transforms import (
    CalibrateUncertaintyd,
    CheckFiniteOutputd,
    DataConsistencyd,
    SplitUncertaintyd,
    TrustSummaryd,
)


def lr_image(c=1):
    return MetaTensor(torch.rand(c, 3, 4, 2), meta={"filename_or_obj": "/scans/case.nii.gz"})


def record(**kw):
    base = dict(lam=2.0, coverage_target=0.9, coverage_reached=0.9, tta_passes=4, std_floor=0.01, num_voxels=10)
    return CalibrationRecord(**{**base, "num_volumes": 1, **kw})


def consistency(mode="project", operator="area", estimator=None):
    """The configs' `consistency_step`, which inference's transforms are given."""
    return ConsistencyStep(mode, operator, 4, None if estimator is None else str(estimator))


def test_non_finite_output_is_one_line_naming_the_input():
    pred = torch.zeros(1, 12, 16, 8)
    pred[0, 1, 2, 3] = float("nan")
    with pytest.raises(OutputError) as err:
        CheckFiniteOutputd()({"image": lr_image(), "pred": pred})
    assert str(err.value).startswith("/scans/case.nii.gz: the super-resolved volume has 1 non-finite voxel")
    CheckFiniteOutputd()({"image": lr_image(), "pred": torch.zeros(1, 12, 16, 8)})  # finite: passes


def test_sr_and_std_channels_are_split_only_when_both_are_there():
    out = SplitUncertaintyd()({"image": lr_image(2), "pred": torch.arange(4.0).view(4, 1, 1, 1)})
    assert out["pred"].flatten().tolist() == [0, 1] and out["uncertainty"].flatten().tolist() == [2, 3]
    same = SplitUncertaintyd()({"image": lr_image(2), "pred": torch.zeros(2, 1, 1, 1)})
    assert "uncertainty" not in same


@pytest.mark.parametrize("operator", ["area", "kspace"])
def test_consistency_map_and_projection(operator):
    lr, sr = lr_image(), torch.rand(1, 12, 16, 8)
    mapped = DataConsistencyd(ConsistencyStep("map", operator, 4))({"image": lr, "pred": sr})
    expected = (forward_operator(sr, 4, operator) - lr.as_tensor()).abs()
    assert torch.allclose(mapped["consistency"][:, ::4, ::4, ::4], expected, atol=1e-6)
    assert torch.equal(mapped["pred"], sr)  # "map" leaves the output alone
    assert mapped["consistency_step"] == {"operator": operator, "projected": False, "mixed": False}
    projected = DataConsistencyd(ConsistencyStep("project", operator, [4, 4, 4]))({"image": lr, "pred": sr})
    assert torch.allclose(forward_operator(projected["pred"], 4, operator), lr.as_tensor(), atol=1e-5)
    assert torch.equal(projected["consistency"], mapped["consistency"])  # the map of the network's own output
    assert projected["consistency_step"]["projected"] is True
    assert "consistency" not in DataConsistencyd(ConsistencyStep("off", operator, 4))({"image": lr, "pred": sr})
    with pytest.raises(ValueError, match="consistency must be one of"):
        ConsistencyStep("always", operator, 4)


def test_a_calibration_of_another_consistency_mode_is_said(caplog):
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(calibration=record(consistency_mode="project"), passes=4, step=consistency("project"))
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(calibration=record(consistency_mode="project"), passes=4, step=consistency("map"))
    assert "made for consistency project, this run uses map" in caplog.text
    assert CalibrationRecord.from_dict(record(consistency_mode="map").to_dict()).consistency_mode == "map"


def test_a_calibration_made_with_another_operator_estimator_is_said(tmp_path, caplog):
    estimator = tmp_path / "operator_estimator.pt"
    estimator.write_bytes(b"estimator one")
    calibrated = record(consistency_operator="auto", operator_estimator_sha256=file_sha256(estimator))
    assert CalibrationRecord.from_dict(calibrated.to_dict()) == calibrated
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(calibration=calibrated, passes=4, step=consistency(operator="auto", estimator=estimator))
    assert caplog.text == ""
    estimator.write_bytes(b"estimator two")  # retrained, the calibration not made again
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(calibration=calibrated, passes=4, step=consistency(operator="auto", estimator=estimator))
    assert f"chosen by operator estimator {calibrated.operator_estimator_sha256[:12]}, this run's by" in caplog.text
    assert file_sha256(estimator)[:12] in caplog.text
    caplog.clear()
    estimator.unlink()  # the estimator gone: "auto" projects nothing now
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(calibration=calibrated, passes=4, step=consistency(operator="auto", estimator=estimator))
    assert "this run's by none" in caplog.text
    caplog.clear()
    without = record(consistency_operator="auto", operator_estimator_sha256=NO_ESTIMATOR)  # calibrated without one
    estimator.write_bytes(b"estimator three")
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(calibration=without, passes=4, step=consistency(operator="auto", estimator=estimator))
    assert "chosen by operator estimator none, this run's by" in caplog.text


def test_calibrated_bound_and_mismatch_warnings(caplog):
    std = torch.tensor([0.0, 0.005, 0.5]).view(1, 3, 1, 1)
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        out = CalibrateUncertaintyd(calibration=record(consistency_operator="area"), passes=4, step=consistency())(
            {"uncertainty": std}
        )
    assert out["uncertainty"].flatten().tolist() == pytest.approx([0.02, 0.02, 1.0])  # lambda * max(std, floor)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        CalibrateUncertaintyd(
            calibration=record(consistency_operator="area"), passes=8, step=consistency(operator="kspace")
        )
    assert "calibration was made with 4 passes, this run uses 8" in caplog.text
    assert "measured with the area operator, this run uses kspace" in caplog.text
    assert torch.equal(CalibrateUncertaintyd(calibration=None)({"uncertainty": std})["uncertainty"], std)


def test_trust_summary_names_the_input_and_warns_when_residuals_are_unlike_validation(caplog):
    sr = torch.full((1, 4, 4, 4), 0.5)
    data = {"image": lr_image(), "pred": sr, "uncertainty": torch.full_like(sr, 0.1)}
    calm = TrustSummaryd(calibration=record(consistency_residual_max=0.1))({**data, "consistency": sr * 0.1})
    assert calm["trust"]["input"] == "/scans/case.nii.gz" and calm["trust"]["warning"] is None
    assert calm["trust"]["calibrated_uncertainty_mean"] == pytest.approx(0.2)
    with caplog.at_level(logging.WARNING, logger="bundle.trust.transforms"):
        odd = TrustSummaryd(calibration=record(consistency_residual_max=0.1))({**data, "consistency": sr})
    assert "unlike the training data" in odd["trust"]["warning"] and "/scans/case.nii.gz" in caplog.text
