import pytest
import torch
from conftest import changed, make_trainer, snapshot
from ignite.engine import Events

from bundle.core.errors import TrainingDiverged
from bundle.training.handlers import SliceScheduleHandler


def test_one_iteration_updates_both_networks_and_discriminator_sees_hr_reals():
    trainer, g, d = make_trainer()
    shapes = []
    d.register_forward_hook(lambda m, inputs, out: shapes.append(tuple(inputs[0].shape)))
    g0, d0 = snapshot(g), snapshot(d)
    trainer.run()
    assert changed(g0, g) and changed(d0, d)
    assert shapes and all(s[1:] == (1, 16, 16, 12) for s in shapes)  # HR-sized reals and fakes, never LR
    assert (4, 1, 16, 16, 12) in shapes  # the discriminator step: 2 reals + 2 fakes in one forward
    log = trainer.state.output["log"]
    assert set(log) >= {"mse", "ssim", "perceptual", "adversarial", "discriminator", "total", "perceptual_seconds"}
    assert log["perceptual"] > 0 and log["perceptual_seconds"] > 0
    assert trainer.state.metrics["train_total"] > 0


def test_discriminator_step_learns_reals_from_the_batchs_fakes():
    """One iteration's discriminator step lowers the discriminator's own loss on the batch it saw (reals HR, fakes
    G(lr)), and the loss it reports is the criterion of exactly those logits: what it learns, not merely that
    weights moved. The generator is frozen (learning rate 0), so the fakes are the same before and after."""
    from bundle.training.losses import AdversarialCriterion

    trainer, g, d = make_trainer(batch_size=2)
    batch = next(iter(trainer.data_loader))
    lr, hr = batch["lr"], batch["image"]
    criterion = AdversarialCriterion("bce")

    def d_loss() -> float:
        with torch.no_grad():
            logits = d(torch.cat([hr, g(lr)]))
            return float(criterion.discriminator_loss(*logits.split(hr.shape[0])))

    before = d_loss()
    trainer.state.g_optimizer = torch.optim.SGD(g.parameters(), lr=0.0)
    trainer.state.d_optimizer = torch.optim.SGD(d.parameters(), lr=1e-2)  # one plain gradient step
    g0 = snapshot(g)
    trainer.run()  # one epoch of one batch
    assert not changed(g0, g)
    reported = trainer.state.output["log"]["discriminator"]
    assert reported == pytest.approx(before, rel=1e-4)  # computed on these reals and fakes, before the update
    assert d_loss() < before  # one step makes the discriminator better at telling them apart


def test_discriminator_gets_no_gradient_from_generator_step():
    trainer, g, d = make_trainer()
    grads = []
    d.features[0].weight.register_hook(lambda grad: grads.append(grad))
    trainer.run()
    assert len(grads) == 1  # only the discriminator's own step


def test_relativistic_and_lsgan_criteria_train():
    for kind in ("ragan", "lsgan"):
        trainer, g, d = make_trainer(kind)
        d0 = snapshot(d)
        trainer.run()
        assert changed(d0, d)


def test_adversarial_start_iteration_delays_discriminator():
    trainer, g, d = make_trainer(adversarial_start_iteration=10)
    d0 = snapshot(d)
    trainer.run()
    assert not changed(d0, d)
    assert trainer.state.output["log"]["adversarial"] == 0


def test_trainer_state_dict_loads_weights_only(tmp_path):
    trainer, _, _ = make_trainer()
    trainer.run()
    path = tmp_path / "t.pt"
    torch.save(trainer.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state == {"epoch_length": 1, "iteration": 1, "max_epochs": 1}  # counters only, no objects


def test_slice_schedule_changes_slices_per_plane():
    trainer, _, _ = make_trainer()
    perceptual = trainer.state.recon_loss_function.perceptual
    trainer.state.max_epochs = 3
    SliceScheduleHandler(perceptual, schedule={1: 1, 2: 3, 3: "all"}).attach(trainer)
    seen = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(perceptual.slices_per_plane))
    trainer.run()
    assert seen == [1, 3, "all"]
    with pytest.raises(ValueError, match="on or off"):
        perceptual.set_slices_per_plane(0)


@pytest.mark.parametrize("where", ["data", "learning_rate"])
def test_non_finite_loss_stops_training_with_one_line_and_no_update(where):
    trainer, g, d = make_trainer(batch_size=1)
    if where == "data":
        trainer.data_loader.dataset[1]["image"][0, 3, 3, 3] = float("nan")  # second iteration's target
    else:
        for group in trainer.state.g_optimizer.param_groups:
            group["lr"] = 1e30  # the first step explodes the weights; the second step's loss is not finite
    before = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: before.append(snapshot(g)))
    with pytest.raises(TrainingDiverged) as info:
        trainer.run()
    message = str(info.value)
    assert "\n" not in message and "epoch 1, iteration 2" in message
    assert ("mse loss is nan" in message) if where == "data" else ("loss is" in message or "gradient" in message)
    # the failing step applied nothing: the generator is as it was when iteration 2 started
    assert not changed(before[-1], g)


def test_loss_logger_and_slice_schedule_attach_together():
    from bundle.training.handlers import LossTermLogger, SliceScheduleHandler

    trainer, _, _ = make_trainer()
    content = trainer.state.recon_loss_function
    LossTermLogger(content.perceptual_timer, log_interval=0).attach(trainer)
    SliceScheduleHandler(content.perceptual, {1: 1}).attach(trainer)
    trainer.run()
    assert content.perceptual.slices_per_plane == 1 and trainer.state.output["log"]["perceptual"] > 0


def test_the_objective_and_precision_carry_the_loss_and_the_arithmetic():
    """L = content + w * adversarial from the iteration after adversarial_start_iteration (w 0: never); the
    precision refuses an unknown autocast type and autocasts on CUDA only."""
    from bundle.training.losses import AdversarialCriterion, ContentLoss, GANObjective
    from bundle.training.trainer import Precision

    objective = GANObjective(ContentLoss(), "lsgan", adversarial_weight=0.5, adversarial_start_iteration=2)
    assert isinstance(objective.criterion, AdversarialCriterion) and objective.criterion.kind == "lsgan"
    assert [objective.adversarial_active(i) for i in (1, 2, 3)] == [False, False, True]
    assert float(objective.generator_loss(torch.tensor(1.0), torch.tensor(4.0))) == 3.0
    assert not GANObjective(ContentLoss(), adversarial_weight=0).adversarial_active(100)
    with pytest.raises(ValueError, match="adversarial criterion must be one of"):
        GANObjective(ContentLoss(), "wgan")
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        Precision(amp_dtype="float8")
    assert not Precision().autocast_on(torch.device("cpu")) and Precision().autocast_on(torch.device("cuda"))


def test_learning_rate_decay_follows_the_cosine_from_the_epoch_alone_and_resumes_on_it():
    """Epochs up to start_epoch keep the base rate; then cosine to final_fraction * base at end_epoch, worked out by
    hand: start 2, end 6, final 0.1: t = 1/4, 2/4, 3/4, 1 -> 0.1 + 0.9 (1 + cos(pi t)) / 2."""
    import math

    from bundle.training.handlers import LearningRateDecay

    trainer, _, _ = make_trainer()
    g_opt, d_opt = trainer.state.g_optimizer, trainer.state.d_optimizer
    trainer.state.max_epochs = 6
    decay = LearningRateDecay({"g": g_opt, "d": d_opt}, {"g": 1e-3, "d": 2e-3}, 2, 6, 0.1)
    decay.attach(trainer)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_STARTED,
        lambda e: seen.append((e.state.epoch, g_opt.param_groups[0]["lr"], d_opt.param_groups[0]["lr"])),
    )
    trainer.run()
    by_hand = {e: 0.1 + 0.9 * (1 + math.cos(math.pi * (e - 2) / 4)) / 2 if e > 2 else 1.0 for e in range(1, 7)}
    assert by_hand[6] == pytest.approx(0.1) and by_hand[4] == pytest.approx(0.55)
    for epoch, g_lr, d_lr in seen:
        assert g_lr == pytest.approx(1e-3 * by_hand[epoch]) and d_lr == pytest.approx(2e-3 * by_hand[epoch])
    assert {e for e, _, _ in seen} == set(range(1, 7))
    # a resumed run (a new handler, optimisers reset to their base rate as ResumeFromCheckpoint leaves them) is back
    # on the same schedule at its first epoch
    for group in g_opt.param_groups:
        group["lr"] = 1e-3
    trainer.state.epoch = 4
    LearningRateDecay({"g": g_opt}, {"g": 1e-3}, 2, 6, 0.1)(trainer)
    assert g_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * by_hand[4])


def test_learning_rate_decay_off_and_bad_settings():
    from bundle.training.handlers import LearningRateDecay

    trainer, _, _ = make_trainer()
    g_opt = trainer.state.g_optimizer
    before = g_opt.param_groups[0]["lr"]
    LearningRateDecay({"g": g_opt}, {"g": 1.0}, None, 5).attach(trainer)  # off: nothing attached, nothing changed
    trainer.run()
    assert g_opt.param_groups[0]["lr"] == before
    with pytest.raises(ValueError, match="no base rate"):
        LearningRateDecay({"g": g_opt}, {}, 1, 5)
    with pytest.raises(ValueError, match="final_fraction"):
        LearningRateDecay({"g": g_opt}, {"g": 1.0}, 1, 5, 0.0)
    with pytest.raises(ValueError, match="lr_decay_start_epoch"):
        LearningRateDecay({"g": g_opt}, {"g": 1.0}, 5, 5)
