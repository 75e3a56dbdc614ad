"""LPIPS offline: where its backbone comes from, and the 2.5-D volume LPIPS against the `lpips` package on 2-D slices."""

from __future__ import annotations

import lpips
import pytest
import torch
import torchvision

from bundle.core.pretrained import converted_path
from bundle.evaluation.lpips_metric import VolumeLPIPS, load_lpips


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    """An empty weights cache and an empty torch hub cache."""
    monkeypatch.setenv("MRI_SR_WEIGHTS_DIR", str(tmp_path / "cache"))
    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path
    torch.hub.set_dir(hub)


def _random_alexnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.alexnet(weights=None).state_dict()


def test_missing_backbone_is_reported_not_replaced_by_random_weights(no_weights):
    model, reason = load_lpips("auto")
    assert model is None and "run `make weights`" in reason
    model, reason = load_lpips("vgg")
    assert model is None and "vgg16" in reason
    model, reason = load_lpips(str(no_weights / "nowhere.pth"))
    assert model is None and "nowhere.pth" in reason


def test_backbone_from_the_cache_or_from_a_torchvision_file(no_weights):
    state = _random_alexnet_state(1)
    converted_path("alexnet").parent.mkdir(parents=True)
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, converted_path("alexnet"))
    model, reason = load_lpips("auto")
    assert reason is None
    assert torch.equal(
        getattr(model.net.slice2, "3").weight, state["features.3.weight"]
    )  # AlexNet conv 2 sits in slice 2
    assert torch.equal(getattr(model.net.slice5, "10").bias, state["features.10.bias"])

    other = _random_alexnet_state(2)  # a whole torchvision AlexNet file: its classifier keys are ignored
    torch.save(other, no_weights / "alexnet.pth")
    model, _ = load_lpips(str(no_weights / "alexnet.pth"))
    assert torch.equal(getattr(model.net.slice1, "0").weight, other["features.0.weight"])


def _slice_lpips_reference(model: lpips.LPIPS, pred: torch.Tensor, ref: torch.Tensor) -> float:
    """The `lpips` package's own forward on every 2-D slice of the three planes, [0, 1] input (normalize=True)."""
    values = []
    for axis in (2, 3, 4):
        for i in range(pred.shape[axis]):
            a = pred.select(axis, i).expand(-1, 3, -1, -1)  # (1, 3, H, W)
            b = ref.select(axis, i).expand(-1, 3, -1, -1)
            values.append(float(model(a, b, normalize=True).detach()))
    return sum(values) / len(values)


def _volumes() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 1, 32, 34, 31, generator=gen)  # AlexNet takes 31 px and more
    pred = (ref + 0.1 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    return pred, ref


def test_volume_lpips_is_the_mean_of_the_packages_2d_lpips_over_three_planes(no_weights):
    torch.save(_random_alexnet_state(3), no_weights / "alexnet.pth")
    model, _ = load_lpips(str(no_weights / "alexnet.pth"))
    pred, ref = _volumes()
    value = VolumeLPIPS(model)(pred, ref)
    assert value == pytest.approx(_slice_lpips_reference(model, pred, ref), abs=1e-5)
    assert VolumeLPIPS(model)(ref, ref) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="expected two"):
        VolumeLPIPS(model)(pred[0], ref[0])


def test_real_lpips_matches_the_package_and_orders_distortions(real_weights):
    model, reason = load_lpips("auto")
    assert reason is None
    pred, ref = _volumes()
    assert VolumeLPIPS(model)(pred, ref) == pytest.approx(_slice_lpips_reference(model, pred, ref), abs=1e-5)
    blurred = torch.nn.functional.avg_pool3d(ref, 3, stride=1, padding=1, count_include_pad=False)
    slight = 0.9 * ref + 0.1 * blurred
    lp = VolumeLPIPS(model)
    assert 0 < lp(slight, ref) < lp(blurred, ref)  # more blur, larger distance


def test_slices_too_small_for_the_backbone_have_no_lpips(no_weights):
    torch.save(_random_alexnet_state(4), no_weights / "alexnet.pth")
    model, _ = load_lpips(str(no_weights / "alexnet.pth"))
    small = torch.rand(1, 1, 40, 30, 40)
    assert "below LPIPS' 31-pixel input" in VolumeLPIPS(model).too_small(small)
    assert VolumeLPIPS(model).too_small(torch.rand(1, 1, 31, 31, 31)) is None
