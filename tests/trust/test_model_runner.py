"""The model runner every stage runs the generator through: weights, autocast, progress and test-time passes."""

import pytest
import torch
from conftest import tiny_generator

from bundle.core.errors import CheckpointError
from bundle.inference.generator import make_inferer
from bundle.trust.record import CalibrationRecord
from bundle.trust.runner import ModelRunner
from bundle.trust.tta import tta_predict


def runner(network, ckpt_path=None, uncertainty=0, amp=True):
    return ModelRunner(network, make_inferer(False, None), 4, uncertainty, "cpu", ckpt_path, amp, "bfloat16")


def test_load_puts_the_checkpoints_weights_in_the_network_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    trained, fresh = tiny_generator(), tiny_generator()
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    fresh.train()
    loaded = runner(fresh, tmp_path / "model.pt").load()
    assert loaded is fresh and not fresh.training
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(), strict=True)
    )
    kept = {k: v.clone() for k, v in trained.state_dict().items()}
    runner(trained).load()  # no checkpoint: the network's own weights
    assert all(torch.equal(kept[k], v) for k, v in trained.state_dict().items())


def test_attached_as_a_handler_it_loads_and_a_wrong_checkpoint_is_one_line(tmp_path):
    torch.save({"conv_first.weight": torch.zeros(3, 1, 3, 3, 3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: a generator with"):
        runner(tiny_generator(), tmp_path / "other.pt").attach(engine=None)


def test_one_pass_is_the_inferers_output_in_float32_and_amp_only_on_cuda():
    torch.manual_seed(1)
    network, lr = tiny_generator(), torch.rand(1, 1, 4, 4, 3)
    run = runner(network)
    assert run.amp is False and run.scale == (4, 4, 4)  # amp asked for, but the device is the CPU
    network.train()
    sr = run.predictor("testing")(lr)
    assert sr.dtype == torch.float32 and sr.shape == (1, 1, 16, 16, 12) and not sr.requires_grad
    assert not network.training  # run as inference runs it, whatever mode it was left in
    with torch.no_grad():
        assert torch.equal(sr, network(lr))


def test_tta_and_inferences_inferer_run_the_same_passes():
    torch.manual_seed(2)
    network, lr = tiny_generator(), torch.rand(1, 1, 4, 4, 3)
    run = runner(network, uncertainty=4)
    predict = run.predictor("testing")
    res = run.tta(lr, predict)
    expected = tta_predict(lr, predict, 4, 4)
    assert torch.equal(res.single, expected.single) and torch.equal(res.std, expected.std)
    with torch.no_grad():
        both = run.sr_inferer(None)(lr, network)  # [SR | std], the single pass without a calibration
        assert torch.equal(both[:, :1], res.single) and torch.allclose(both[:, 1:], res.std)
        base = dict(lam=2.0, coverage_target=0.9, coverage_reached=0.9, tta_passes=4, std_floor=0.01, num_voxels=1)
        mean = run.sr_inferer(CalibrationRecord(**base, num_volumes=1, sr_output="tta_mean"))(lr, network)
        assert torch.allclose(mean[:, :1], res.mean)
        plain = runner(network).sr_inferer(None)(lr, network)  # no passes: the SR alone
        assert plain.shape == (1, 1, 16, 16, 12) and torch.equal(plain, network(lr))
