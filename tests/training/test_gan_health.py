"""An exploding GAN (finite but enormous losses) stops like a NaN does: one line, no update, nothing saved."""

import pytest
import torch
from conftest import changed, make_trainer, snapshot

from bundle.core.errors import TrainingDiverged
from bundle.training.trainer import MAX_LOSS


def _make_explode(net: torch.nn.Module, scale: float) -> None:
    """Scale the last layer's weights so the network's output (and so its loss) is finite but ~`scale`."""
    last = [p for p in net.parameters() if p.dim() > 1][-1]
    with torch.no_grad():
        last.mul_(scale)


def test_exploding_discriminator_stops_with_one_line_and_no_update():
    trainer, g, d = make_trainer()
    _make_explode(d, 1e12)  # logits ~1e11: BCE is finite and ~1e11
    g0, d0 = snapshot(g), snapshot(d)
    with pytest.raises(TrainingDiverged) as err:
        trainer.run()
    text = str(err.value)
    assert "loss is" in text and "beyond the bound" in text and "exploding" in text, text
    assert "\n" not in text
    assert "epoch 1, iteration 1" in text
    assert not changed(g0, g) and not changed(d0, d)  # the step that saw the huge loss applied nothing


def test_a_large_but_healthy_loss_is_not_stopped():
    trainer, g, d = make_trainer(max_loss=MAX_LOSS)
    _make_explode(d, 30.0)  # larger logits, loss well below the bound
    trainer.run()
    assert abs(trainer.state.metrics["train_discriminator"]) < MAX_LOSS


def test_bound_is_configurable_and_checked():
    trainer, g, d = make_trainer(max_loss=1e-6)  # every real loss exceeds this
    with pytest.raises(TrainingDiverged, match="beyond the bound 1e-06"):
        trainer.run()
    with pytest.raises(ValueError, match="max_loss"):
        make_trainer(max_loss=0)


@pytest.mark.slow
def test_exploding_discriminator_through_the_bundle_runner(tiny_dataset, tmp_path):
    """The reported run: --d_learning_rate 1e6 gave losses ~1e19 every epoch and exit 0."""
    from conftest import TRAIN, run_bundle

    from bundle.training.checkpoints import is_finite_state, list_checkpoints

    models = tmp_path / "models"
    args = ["run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset), "--max_epochs", "3"]
    proc = run_bundle(
        *args, "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "out"), "--d_learning_rate", "1e6"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "exploding" in errors[0], lines[-5:]
    assert lines[-1] == errors[0]  # no progress bar redrawn after the error line
    for _, path in list_checkpoints(models):
        state = torch.load(path, weights_only=True)
        assert is_finite_state(state["discriminator"])[0]
