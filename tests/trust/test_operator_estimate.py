"""The operator estimator of `consistency_operator: auto` and the consistency step every stage shares."""

import dataclasses
import logging
import math

import pytest
import torch
from monai.data import MetaTensor

from bundle.core.choices import OPERATORS
from bundle.data.operators import consistency_map, degrade, forward_operator, project
from bundle.trust.consistency import (
    DETAIL_GAIN,
    FALLBACK_OPERATOR,
    KSPACE_SHARE,
    RIGHT_INVERSE,
    ConsistencyStep,
    auto_weights,
    check_operator_choice,
    consistent_output,
    kspace_share,
)
from bundle.trust.operator_estimate import (
    AREA_EXPLAINED,
    BLUR_LOG_RATIO_THRESHOLD,
    EXPLAINED_RESIDUAL,
    GAUSSIAN_EXPLAINED,
    MIN_PROBABILITY,
    OperatorEstimate,
    OperatorEstimator,
    blur_log_ratio,
    consistency_residuals,
    estimate_operator,
    load_operator_estimator,
    lr_detail,
    named_blur,
    with_blur_evidence,
    with_output_evidence,
)
from bundle.trust.transforms import DataConsistencyd, TrustSummaryd


def biased_estimator(probabilities: dict[str, float]) -> OperatorEstimator:
    """An estimator that ignores its input and returns `probabilities` (zero weights, log-probability biases)."""
    net = OperatorEstimator(features=4)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        net.classify.bias.copy_(torch.tensor([math.log(probabilities[op]) for op in OPERATORS]))
    return net


def save(net: OperatorEstimator, path) -> str:
    torch.save({"state_dict": net.state_dict(), "features": 4}, path)
    return str(path)


def test_estimator_reads_any_lr_size_and_gives_one_logit_per_operator():
    net = OperatorEstimator(features=4)
    assert net(torch.rand(2, 1, 9, 7, 5)).shape == (2, len(OPERATORS))
    est = estimate_operator(torch.rand(1, 2, 3, 1), net)  # thinner than the network's 4 voxels: padded
    assert set(est.probabilities) == set(OPERATORS)
    assert sum(est.probabilities.values()) == pytest.approx(1.0)
    assert est.operator == max(est.probabilities, key=est.probabilities.get)
    with pytest.raises(ValueError, match=r"expected an LR volume"):
        estimate_operator(torch.rand(4, 4, 4), net)


@pytest.mark.parametrize(
    "probabilities, operator, sure",
    [
        ({"kspace": 0.95, "area": 0.03, "gaussian": 0.02}, "kspace", True),
        ({"kspace": 0.05, "area": 0.15, "gaussian": 0.80}, "gaussian", False),  # below MIN_PROBABILITY
    ],
)
def test_estimate_is_sure_only_above_the_threshold(probabilities, operator, sure):
    est = estimate_operator(torch.rand(1, 6, 6, 6), biased_estimator(probabilities))
    assert est.operator == operator and est.sure is sure
    assert est.probability == pytest.approx(probabilities[operator], abs=1e-6)
    assert (est.probability >= MIN_PROBABILITY) is sure
    assert operator in est.describe() and ("unsure" in est.describe()) is not sure


def test_load_round_trip_and_one_line_errors(tmp_path):
    net = biased_estimator({"kspace": 0.1, "area": 0.7, "gaussian": 0.2})
    loaded = load_operator_estimator(save(net, tmp_path / "est.pt"))
    x = torch.rand(1, 1, 8, 8, 8)
    assert torch.allclose(loaded(x), net(x))
    with pytest.raises(FileNotFoundError, match=r"missing.pt: no operator estimator"):
        load_operator_estimator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk.pt: not a readable operator estimator"):
        load_operator_estimator(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: not an operator estimator"):
        load_operator_estimator(tmp_path / "other.pt")
    torch.save({"state_dict": {"classify.bias": torch.zeros(3)}, "features": 4}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial.pt: the weights do not fit"):
        load_operator_estimator(tmp_path / "partial.pt")


def test_operator_choice_is_checked():
    assert check_operator_choice("auto") == "auto" and check_operator_choice("kspace") == "kspace"
    with pytest.raises(ValueError, match="consistency_operator must be one of"):
        check_operator_choice("sinc")


def _pair(operator: str = "kspace", seed: int = 0):
    """(SR, LR): a noisy copy of a random HR, and the HR degraded by `operator`."""
    torch.manual_seed(seed)
    hr = torch.rand(1, 1, 16, 16, 12)
    return hr + 0.1 * torch.randn_like(hr), degrade(hr[0], 4, operator)[None]


@pytest.mark.parametrize("operator", ["area", "gaussian"])
def test_the_output_tells_which_blur_made_the_lr(operator):
    sr, lr = _pair(operator)
    ratio = blur_log_ratio(sr, lr, 4)
    assert (ratio > BLUR_LOG_RATIO_THRESHOLD) is (operator == "area")
    assert blur_log_ratio(sr[0], lr[0], 4) == pytest.approx(ratio)  # (C, X, Y, Z) as well as (B, C, X, Y, Z)
    # by hand: ln(RMS of D_gaussian(SR) - LR over RMS of D_area(SR) - LR)
    rms = [float((forward_operator(sr, 4, op) - lr).pow(2).mean().sqrt()) for op in ("gaussian", "area")]
    assert ratio == pytest.approx(math.log(rms[0] / rms[1]), rel=1e-5)
    with pytest.raises(ValueError, match="does not match SR shape"):
        blur_log_ratio(sr, lr[..., :-1], 4)


def test_blur_evidence_moves_the_blur_probability_to_the_blur_it_picks():
    assert named_blur(BLUR_LOG_RATIO_THRESHOLD) == "gaussian" and named_blur(BLUR_LOG_RATIO_THRESHOLD + 0.01) == "area"
    cnn = OperatorEstimate("area", 0.7, {"kspace": 0.2, "area": 0.7, "gaussian": 0.1})
    gaussian = with_blur_evidence(cnn, BLUR_LOG_RATIO_THRESHOLD - 0.1)
    assert gaussian.probabilities == pytest.approx({"kspace": 0.2, "area": 0.0, "gaussian": 0.8})
    assert gaussian.operator == "gaussian" and not gaussian.sure  # 0.8 < MIN_PROBABILITY
    assert gaussian.estimator_probabilities == cnn.probabilities and "gaussian, log ratio" in gaussian.describe()
    area = with_blur_evidence(
        OperatorEstimate("gaussian", 0.9, {"kspace": 0.05, "area": 0.05, "gaussian": 0.9}),
        BLUR_LOG_RATIO_THRESHOLD + 0.1,
    )
    assert area.operator == "area" and area.probability == pytest.approx(0.95) and area.sure
    kspace = with_blur_evidence(OperatorEstimate("kspace", 0.97, {"kspace": 0.97, "area": 0.02, "gaussian": 0.01}), 0.3)
    assert kspace.operator == "kspace" and kspace.sure and kspace.record()["blur_log_ratio"] == pytest.approx(0.3)


def test_fixed_operator_step_is_the_projection_and_its_map():
    sr, lr = _pair()
    step = ConsistencyStep("project", "kspace", 4)(sr, lr)
    assert step.projected and step.estimate is None and step.operator == "kspace"
    # the k-space projection keeps DETAIL_GAIN of the detail k-space truncation does not see, not all of it
    assert DETAIL_GAIN["kspace"] < 1
    assert torch.allclose(
        step.output,
        project(sr, lr, 4, "kspace", detail_gain=DETAIL_GAIN["kspace"], inverse=RIGHT_INVERSE["kspace"]),
        atol=1e-6,
    )
    assert not torch.allclose(step.output, project(sr, lr, 4, "kspace"), atol=1e-4)
    assert torch.allclose(step.residual, consistency_map(sr, lr, 4, "kspace"))
    mapped = ConsistencyStep("map", "kspace", 4)(sr, lr)
    assert mapped.output is sr and not mapped.projected
    off = ConsistencyStep("off", "kspace", 4)
    assert off(sr, lr).residual is None
    assert torch.allclose(off.output_and_residual(sr, lr)[1], consistency_map(sr, lr, 4, "kspace"))  # on request


def test_a_measured_slice_profile_s_width_reaches_the_projection_and_the_map_of_the_unprojected_output():
    """Per-scan adaptation's Gaussian profile is wider or narrower than one LR voxel (`fwhm_factor`)."""
    sr = torch.rand(1, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    lr = degrade(sr[None] * 0.9, (1, 1, 4), "gaussian", fwhm_factor=1.5)[0]
    step = ConsistencyStep("project", "gaussian", (1, 1, 4), fwhm_factor=1.5)(sr, lr)
    assert torch.allclose(forward_operator(step.output, (1, 1, 4), "gaussian", 1.5), lr, atol=1e-5)
    assert torch.allclose(step.residual, consistency_map(sr, lr, (1, 1, 4), "gaussian", 1.5))  # before projection
    assert float(step.residual.max()) > 1e-2


def test_auto_projects_a_sure_k_space_estimate_and_the_blur_the_output_names(tmp_path):
    sr, lr = _pair()
    sure = save(biased_estimator({"kspace": 0.97, "area": 0.02, "gaussian": 0.01}), tmp_path / "sure.pt")
    step = ConsistencyStep("project", "auto", 4, sure)(sr, lr)
    assert step.projected and step.operator == "kspace" and not step.mixed
    assert torch.allclose(forward_operator(step.output, 4, "kspace"), lr, atol=1e-5)
    assert step.record()["estimated"] and step.record()["probability"] == pytest.approx(0.97, abs=1e-6)
    # a sure blur estimate: the blur the output's consistency names (block average here, whatever the CNN's blur
    # says) is projected where it explains the output
    hr = torch.rand(1, 1, 16, 16, 12, generator=torch.Generator().manual_seed(3))
    sr = hr + 0.01 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(4))
    lr = degrade(hr[0], 4, "area")[None]
    blur = save(biased_estimator({"kspace": 0.02, "area": 0.03, "gaussian": 0.95}), tmp_path / "blur.pt")
    step = ConsistencyStep("project", "auto", 4, blur)(sr, lr)
    assert step.operator == "area" and step.estimate.sure and step.estimate.agrees
    assert step.estimate.relative_residuals["area"] <= AREA_EXPLAINED
    assert step.projected and not step.mixed
    assert torch.allclose(forward_operator(step.output, 4, "area"), lr, atol=1e-5)
    assert torch.allclose(step.residual, consistency_map(sr, lr, 4, "area"))  # the map is of the unprojected SR
    record = step.record()
    assert record["estimator_probabilities"]["gaussian"] == pytest.approx(0.95, abs=1e-6)
    assert record["blur_log_ratio"] > BLUR_LOG_RATIO_THRESHOLD
    mapped = ConsistencyStep("map", "auto", 4, blur)(sr, lr)
    assert torch.equal(mapped.output, sr) and not mapped.mixed  # "map" never changes the output


def test_auto_without_an_estimator_projects_nothing_and_says_so_once(tmp_path, caplog):
    sr, lr = _pair()
    step = ConsistencyStep("project", "auto", 4, tmp_path / "none.pt")
    with caplog.at_level(logging.WARNING, logger="bundle.trust.consistency"):
        first, second = step(sr, lr), step(sr, lr)
    assert not first.projected and not second.projected and first.operator == FALLBACK_OPERATOR
    assert caplog.text.count("no operator estimator at") == 1 and "none.pt" in caplog.text


def test_an_unsure_estimate_weights_the_k_space_projection_by_its_share(tmp_path):
    sr, lr = _pair("area")
    lr_k = degrade(sr[0], 4, "kspace")[None]  # the SR explains this LR under k-space truncation
    unsure = save(biased_estimator({"kspace": 0.5, "area": 0.1, "gaussian": 0.4}), tmp_path / "unsure.pt")
    step = ConsistencyStep("project", "auto", 4, unsure)(sr, lr_k)
    assert step.estimate.relative_residuals["kspace"] <= EXPLAINED_RESIDUAL and not step.estimate.sure
    weights = auto_weights(step.estimate)
    assert weights["kspace"] == pytest.approx(0.75, abs=1e-6)  # (0.5 - 0.2) / (0.6 - 0.2)
    expected = 0.75 * project(sr, lr_k, 4, "kspace", 1.0, DETAIL_GAIN["kspace"], RIGHT_INVERSE["kspace"])
    for op in ("area", "gaussian"):  # the blur's quarter, where its operator explains the output, else the SR's
        expected = expected + (weights[op] * consistent_output(sr, lr_k, 4, op) if weights[op] else 0.0)
    expected = expected + (1.0 - sum(weights.values())) * sr
    assert step.mixed and not step.projected and torch.allclose(step.output, expected, atol=1e-5)
    # where k-space truncation does not explain the output, its share goes to the SR
    sr_a, lr_a = _pair("area")
    far = ConsistencyStep("project", "auto", 4, unsure)(sr_a, lr_a)
    assert far.estimate.relative_residuals["kspace"] > EXPLAINED_RESIDUAL
    assert auto_weights(far.estimate)["kspace"] == 0.0


@pytest.mark.parametrize(
    "p_kspace, share",
    [(0.0, 0.0), (KSPACE_SHARE[0], 0.0), (0.3, 0.25), (0.4, 0.5), (0.5, 0.75), (KSPACE_SHARE[1], 1.0), (0.95, 1.0)],
)
def test_the_k_space_share_by_hand(p_kspace, share):
    assert KSPACE_SHARE == (0.2, 0.6)  # the window the hand values below are for
    assert kspace_share(p_kspace) == pytest.approx(share)


def test_auto_weights_by_hand():
    relative = {"kspace": 0.2, "area": 0.2, "gaussian": 0.2}
    table = {"kspace": 0.95, "area": 0.05, "gaussian": 0.0}
    sure_k = OperatorEstimate("kspace", 0.95, table, True, blur_log_ratio=0.9, relative_residuals=relative, agrees=True)
    assert auto_weights(sure_k) == {"kspace": 1.0, "area": 0.0, "gaussian": 0.0}
    contradicted = dataclasses.replace(sure_k, relative_residuals={**relative, "kspace": 0.7}, agrees=False)
    assert auto_weights(contradicted) == {"kspace": 0.0, "area": 0.0, "gaussian": 0.0}
    # a sure blur: the blur the output names (log ratio above the threshold: block average), where it fits
    area = OperatorEstimate("area", 0.95, {"kspace": 0.05, "area": 0.95, "gaussian": 0.0}, True, blur_log_ratio=0.9)
    fits_area = dataclasses.replace(area, relative_residuals=relative, agrees=True)
    assert auto_weights(fits_area) == {"kspace": 0.0, "area": 1.0, "gaussian": 0.0}
    hamming_like = {**relative, "area": AREA_EXPLAINED + 0.05}  # as a Hamming-filtered k-space LR's output
    assert auto_weights(dataclasses.replace(fits_area, relative_residuals=hamming_like))["area"] == 0.0
    named = BLUR_LOG_RATIO_THRESHOLD - 0.1
    gauss = OperatorEstimate(
        "gaussian", 0.95, {"kspace": 0.05, "area": 0.0, "gaussian": 0.95}, True, blur_log_ratio=named
    )
    fits = dataclasses.replace(gauss, relative_residuals=relative, agrees=True)
    assert auto_weights(fits) == {"kspace": 0.0, "area": 0.0, "gaussian": 1.0}
    loose = {**relative, "gaussian": GAUSSIAN_EXPLAINED + 0.05}  # as a Hamming-filtered k-space LR's output
    assert auto_weights(dataclasses.replace(fits, relative_residuals=loose))["gaussian"] == 0.0
    # unsure: k-space by its share of the probability, the named blur the rest, the SR what no operator explains
    unsure = OperatorEstimate(
        "gaussian", 0.7, {"kspace": 0.3, "area": 0.0, "gaussian": 0.7}, False, blur_log_ratio=named
    )
    weights = auto_weights(dataclasses.replace(unsure, relative_residuals=relative, agrees=True))
    assert weights == pytest.approx({"kspace": 0.25, "area": 0.0, "gaussian": 0.75})
    unsure_area = dataclasses.replace(unsure, operator="area", blur_log_ratio=0.9, relative_residuals=relative)
    assert auto_weights(unsure_area) == pytest.approx({"kspace": 0.25, "area": 0.75, "gaussian": 0.0})
    unexplained_blur = dataclasses.replace(unsure_area, relative_residuals={**relative, "area": 0.9})
    assert auto_weights(unexplained_blur) == pytest.approx({"kspace": 0.25, "area": 0.0, "gaussian": 0.0})
    no_evidence = dataclasses.replace(unsure, blur_log_ratio=None, relative_residuals=relative)
    assert auto_weights(no_evidence) == pytest.approx({"kspace": 0.25, "area": 0.0, "gaussian": 0.0})


def test_the_transforms_put_what_was_done_into_the_summary(tmp_path):
    sr, lr = _pair("gaussian")
    image = MetaTensor(lr[0], meta={"filename_or_obj": "/scans/case.nii.gz"})
    path = save(biased_estimator({"kspace": 0.02, "area": 0.93, "gaussian": 0.05}), tmp_path / "est.pt")
    d = DataConsistencyd(ConsistencyStep("project", "auto", 4, path))({"image": image, "pred": sr[0]})
    assert torch.equal(d["pred"], sr[0])  # the named blur does not explain this noisy SR: nothing is projected
    summary = TrustSummaryd()(d)["trust"]["consistency_step"]
    assert summary["operator"] == "gaussian" and not summary["projected"] and summary["estimated"]
    assert summary["relative_residuals"]["gaussian"] > GAUSSIAN_EXPLAINED
    path = save(biased_estimator({"kspace": 0.93, "area": 0.05, "gaussian": 0.02}), tmp_path / "k.pt")
    sr, lr = _pair("kspace")
    image = MetaTensor(lr[0], meta={"filename_or_obj": "/scans/case.nii.gz"})
    d = DataConsistencyd(ConsistencyStep("project", "auto", 4, path))({"image": image, "pred": sr[0]})
    assert torch.allclose(forward_operator(d["pred"], 4, "kspace"), lr[0], atol=1e-5)
    summary = TrustSummaryd()(d)["trust"]["consistency_step"]
    assert summary["operator"] == "kspace" and summary["projected"]


def test_output_evidence_says_whether_the_estimated_operator_explains_the_output():
    """An operator explains the output when RMS(D(SR) - LR) is at most EXPLAINED_RESIDUAL of the LR's detail; a
    sure estimate of an operator that did not make the LR does not."""
    sr, lr = _pair("kspace")
    residuals = consistency_residuals(sr, lr, 4)
    by_hand = float((forward_operator(sr, 4, "area") - lr).pow(2).mean().sqrt())
    assert residuals["area"] == pytest.approx(by_hand, rel=1e-5)
    local = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(lr, (1,) * 6, mode="replicate"), 3, stride=1)
    detail = lr_detail(lr)
    assert detail == pytest.approx(float((lr - local).pow(2).mean().sqrt()), rel=1e-5)
    sure = {"kspace": 0.95, "area": 0.03, "gaussian": 0.02}
    right = with_output_evidence(OperatorEstimate("kspace", 0.95, sure), residuals, detail)
    assert right.agrees and right.relative_residuals["kspace"] == pytest.approx(residuals["kspace"] / detail)
    assert right.relative_residuals["kspace"] < EXPLAINED_RESIDUAL and "nothing is projected" not in right.describe()
    assert right.record()["agrees"] is True and set(right.record()["relative_residuals"]) == set(OPERATORS)
    # the same estimate against an LR that k-space truncation cannot have made (another scan's): not explained
    _, other = _pair("kspace", seed=9)
    wrong = with_output_evidence(OperatorEstimate("kspace", 0.95, sure), consistency_residuals(sr, other, 4), detail)
    assert wrong.agrees is False and wrong.sure and "does not explain the output" in wrong.describe()


def test_a_sure_wrong_estimate_projects_nothing_and_warns(tmp_path, caplog):
    """A sure estimate of an operator that does not explain the output (as a Hamming-filtered k-space LR taken for
    a Gaussian profile): the step keeps the network's SR, and the log and the record say why."""
    sr, lr = _pair("kspace")
    lr = lr + 0.3 * torch.randn_like(lr)  # an LR that no operator of the SR's explains
    path = save(biased_estimator({"kspace": 0.03, "area": 0.95, "gaussian": 0.02}), tmp_path / "wrong.pt")
    step = ConsistencyStep("project", "auto", 4, path)(sr, lr)
    assert not step.projected and not step.mixed and torch.equal(step.output, sr)
    assert step.record()["agrees"] is False and step.record()["relative_residuals"]["area"] > EXPLAINED_RESIDUAL
    image = MetaTensor(lr[0], meta={"filename_or_obj": "/scans/t1.nii.gz"})
    with caplog.at_level(logging.INFO, logger="bundle.trust.transforms"):
        d = DataConsistencyd(ConsistencyStep("project", "auto", 4, path))({"image": image, "pred": sr[0]})
    assert torch.equal(d["pred"], sr[0])
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "t1.nii.gz" in r.getMessage()]
    assert len(warned) == 1 and "nothing is projected" in warned[0].getMessage()


def test_an_unsure_estimate_none_of_whose_operators_explains_says_so():
    sr, lr = _pair("kspace")
    lr = lr + 0.3 * torch.randn_like(lr)  # explained by no operator
    unsure = OperatorEstimate("area", 0.6, {"kspace": 0.4, "area": 0.6, "gaussian": 0.0})
    judged = with_output_evidence(unsure, consistency_residuals(sr, lr, 4), lr_detail(lr))
    assert judged.agrees is False and not judged.sure
    text = judged.describe()
    assert "none of them explains the output" in text and "kspace" in text and "area" in text


def test_the_blur_the_output_names_and_fits_is_projected(tmp_path):
    torch.manual_seed(1)
    hr = torch.rand(1, 1, 16, 16, 12)
    sr = hr + 0.01 * torch.randn_like(hr)  # an output that explains its LR closely
    blur = save(biased_estimator({"kspace": 0.02, "area": 0.95, "gaussian": 0.03}), tmp_path / "blur.pt")
    lr = degrade(hr[0], 4, "gaussian")[None]
    step = ConsistencyStep("project", "auto", 4, blur)(sr, lr)
    assert step.estimate.operator == "gaussian" and step.estimate.blur_log_ratio <= BLUR_LOG_RATIO_THRESHOLD
    assert step.estimate.relative_residuals["gaussian"] <= GAUSSIAN_EXPLAINED
    assert step.projected and step.operator == "gaussian"
    assert torch.allclose(forward_operator(step.output, 4, "gaussian"), lr, atol=1e-5)
    lr = degrade(hr[0], 4, "area")[None]
    step = ConsistencyStep("project", "auto", 4, blur)(sr, lr)
    assert step.estimate.operator == "area" and step.estimate.sure
    assert step.projected and step.operator == "area"
    assert torch.allclose(forward_operator(step.output, 4, "area"), lr, atol=1e-5)
