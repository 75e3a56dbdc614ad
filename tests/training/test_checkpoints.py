"""Crash-safe checkpoints, the best model across resumes, and checked resumption, on tiny modules and bare engines."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine, Events

import bundle.training.checkpoints as ck
from bundle.core.errors import CheckpointError, NonFiniteWeightsError
from bundle.training.checkpoints import (
    BestMetric,
    BestModelSaver,
    ResumeFromCheckpoint,
    TrainingCheckpointer,
    atomic_save,
    is_finite_state,
    list_checkpoints,
)

RECORD = {"num_blocks": 2, "features": 8, "scale": 4, "lr_patch_size": (4, 4, 4), "dataset_dir": "/data/a"}


class Run:
    """A tiny generator/discriminator pair with Adam optimisers and a bare ignite trainer over 2 batches."""

    def __init__(self, seed: int = 0, lr: float = 1e-3) -> None:
        torch.manual_seed(seed)
        self.net, self.disc = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
        self.g_opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=lr)
        self.best = BestMetric("val_psnr", mode="max")
        self.engine = Engine(self.step)

    def step(self, engine: Engine, batch: torch.Tensor) -> None:
        for opt, loss in ((self.g_opt, self.net(batch).square().mean()), (self.d_opt, self.disc(batch[:, :2]).mean())):
            opt.zero_grad()
            loss.backward()
            opt.step()

    def objects(self) -> dict:
        return {
            "network": self.net,
            "discriminator": self.disc,
            "g_optimizer": self.g_opt,
            "d_optimizer": self.d_opt,
            "best_metric": self.best,
        }

    def checkpointer(self, folder, **kw) -> TrainingCheckpointer:
        saver = TrainingCheckpointer(folder, self.objects(), run_record=RECORD, **kw)
        saver.attach(self.engine)
        return saver

    def resume(self, folder, max_epochs: int, record=RECORD, **kw) -> ResumeFromCheckpoint:
        handler = ResumeFromCheckpoint(folder, self.objects(), max_epochs=max_epochs, run_record=record, **kw)
        handler.attach(self.engine)
        return handler

    def run(self, max_epochs: int) -> None:
        data = [torch.full((4, 3), float(i + 1)) for i in range(2)]
        self.engine.run(data, max_epochs=max_epochs)


def scripted_metric(engine: Engine, values: dict[int, float], saver: BestModelSaver) -> None:
    """At each epoch end put values[epoch] into metrics as val_psnr, then run `saver` (like a validation)."""

    @engine.on(Events.EPOCH_COMPLETED)
    def _(e: Engine) -> None:
        e.state.metrics["val_psnr"] = values[e.state.epoch]
        saver(e)


def weights(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_atomic_save_interrupted_midway_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_save({"v": torch.ones(3)}, path)

    def broken_save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"v": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temporary file left behind


def test_interrupted_checkpoint_write_leaves_previous_and_resume_works(tmp_path, monkeypatch):
    first = Run()
    first.checkpointer(tmp_path / "models")
    first.run(2)
    saved = weights(first.net)
    real_save = torch.save

    def dies_at_epoch_3(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("epoch") == 3:
            f.write(b"PK\x03\x04")
            raise KeyboardInterrupt  # a kill arriving mid-write
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", dies_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        first.run(3)
    monkeypatch.undo()
    assert [e for e, _ in list_checkpoints(tmp_path / "models")] == [1, 2]
    assert not list((tmp_path / "models").glob(".*.tmp"))

    second = Run(seed=1)
    handler = second.resume(tmp_path / "models", max_epochs=4)
    assert handler.path.name == "checkpoint_epoch=2.pt"
    assert same(weights(second.net), saved)
    assert (second.engine.state.epoch, second.engine.state.iteration, second.engine.state.max_epochs) == (2, 4, 4)
    epochs = []
    second.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
    second.run(4)
    assert epochs == [3, 4]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_unreadable_newest_checkpoint_is_skipped_with_one_line(tmp_path, caplog, damage):
    run = Run()
    run.checkpointer(tmp_path, n_saved=3)
    run.run(2)
    at_2 = weights(run.net)
    good = (tmp_path / "checkpoint_epoch=2.pt").read_bytes()
    bad = {"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"not a checkpoint at all"}[damage]
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(bad)

    other = Run(seed=5)
    with caplog.at_level(logging.INFO, logger="bundle.training.checkpoints"):
        handler = other.resume(tmp_path, max_epochs=5)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "checkpoint_epoch=3.pt: unreadable" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert handler.path.name == "checkpoint_epoch=2.pt" and other.engine.state.epoch == 2
    assert same(weights(other.net), at_2)
    # the next save of epoch 3 replaces the damaged file
    other.checkpointer(tmp_path, n_saved=3)
    other.run(3)
    assert torch.load(tmp_path / "checkpoint_epoch=3.pt", weights_only=True)["epoch"] == 3


def test_all_checkpoints_unreadable_stops_with_one_line(tmp_path):
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        Run().resume(tmp_path, max_epochs=3)
    assert "no readable checkpoint" in str(err.value) and "--resume False" in str(err.value)
    assert "\n" not in str(err.value) and err.value.code.startswith("error: ")


def test_best_metric_survives_resume_and_a_worse_epoch_keeps_model_pt(tmp_path, caplog):
    model_pt = tmp_path / "model.pt"
    first = Run()
    scripted_metric(first.engine, {1: 10.0, 2: 12.0, 3: 11.0}, BestModelSaver(first.net, first.best, model_pt))
    first.checkpointer(tmp_path)  # after the "validation", as in train.json
    first.run(3)
    assert (first.best.value, first.best.epoch) == (12.0, 2)
    saved = torch.load(tmp_path / "checkpoint_epoch=3.pt", weights_only=True)
    assert saved["best_metric"]["value"] == 12.0 and saved["best_metric"]["epoch"] == 2
    best_bytes = model_pt.read_bytes()
    assert not same(torch.load(model_pt, weights_only=True), weights(first.net))  # epoch 3 was worse

    second = Run(seed=3)
    second.resume(tmp_path, max_epochs=5)
    assert (second.best.value, second.best.epoch) == (12.0, 2)
    scripted_metric(second.engine, {4: 11.5, 5: 13.0}, BestModelSaver(second.net, second.best, model_pt))
    snapshots = []
    second.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append(model_pt.read_bytes()))
    with caplog.at_level(logging.INFO, logger="bundle.training.checkpoints"):
        caplog.clear()  # only what the resumed run logs (an earlier test may have left the root logger at INFO)
        second.run(5)
    assert snapshots[0] == best_bytes  # 11.5 after the resume is not a "new best"
    news = [r.getMessage() for r in caplog.records if "new best" in r.getMessage()]
    assert len(news) == 1 and "new best val_psnr 13 at epoch 5 (previous 12 at epoch 2)" in news[0]
    assert same(torch.load(model_pt, weights_only=True), weights(second.net))


def test_model_pt_is_unwrapped_from_data_parallel(tmp_path):
    net = torch.nn.Linear(3, 2)
    best = BestMetric("val_psnr")
    engine = Engine(lambda e, b: None)
    scripted_metric(engine, {1: 5.0}, BestModelSaver(torch.nn.DataParallel(net), best, tmp_path / "m" / "model.pt"))
    engine.run([0], max_epochs=1)
    assert set(torch.load(tmp_path / "m" / "model.pt", weights_only=True)) == {"weight", "bias"}


def test_is_finite_state_names_the_first_bad_tensor():
    state = {"a": torch.ones(2), "b": {"c": torch.tensor([1.0, float("inf")])}, "n": torch.tensor([3]), "s": 2}
    assert is_finite_state(state) == (False, "b.c")
    assert is_finite_state({"a": torch.ones(2), "n": torch.arange(3)}) == (True, None)
    assert is_finite_state({"w": torch.tensor([float("nan")])}, prefix="network.") == (False, "network.w")


def test_non_finite_weights_are_never_saved(tmp_path, caplog):
    run = Run()
    model_pt = tmp_path / "models" / "model.pt"
    saver = BestModelSaver(run.net, run.best, model_pt)

    @run.engine.on(Events.EPOCH_COMPLETED)
    def poison(e: Engine) -> None:
        if e.state.epoch == 2:
            with torch.no_grad():
                run.net.bias[1] = float("nan")

    scripted_metric(run.engine, {1: 10.0, 2: 20.0}, saver)
    run.checkpointer(tmp_path / "models")
    with (
        caplog.at_level(logging.INFO, logger="bundle.training.checkpoints"),
        pytest.raises(NonFiniteWeightsError) as err,
    ):
        run.run(3)
    assert "epoch 2: network.bias holds NaN" in str(err.value)
    assert [e for e, _ in list_checkpoints(tmp_path / "models")] == [1]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("epoch 2: bias holds NaN" in m and "model.pt not updated" in m for m in errors)
    assert any("epoch 2: network.bias holds NaN" in m for m in errors)
    assert torch.isfinite(torch.load(model_pt, weights_only=True)["bias"]).all()
    assert (run.best.value, run.best.epoch) == (10.0, 1)


def test_non_finite_metric_does_not_write_model_pt(tmp_path):
    run = Run()
    scripted_metric(run.engine, {1: float("nan")}, BestModelSaver(run.net, run.best, tmp_path / "model.pt"))
    run.run(1)
    assert not (tmp_path / "model.pt").exists() and run.best.value is None


def test_run_record_mismatch_stops_before_training(tmp_path):
    first = Run()
    first.checkpointer(tmp_path)
    first.run(1)
    second = Run(seed=1)
    before = weights(second.net)
    changed = {**RECORD, "num_blocks": 3, "lr_patch_size": [6, 6, 6]}
    with pytest.raises(CheckpointError) as err:
        second.resume(tmp_path, max_epochs=5, record=changed)
    text = str(err.value)
    assert "checkpoint_epoch=1.pt: written by a different configuration" in text
    assert "num_blocks 2 -> 3" in text and "lr_patch_size [4, 4, 4] -> [6, 6, 6]" in text
    assert "--resume False" in text and "--ckpt_dir" in text and "\n" not in text
    assert isinstance(err.value, SystemExit) and err.value.code == f"error: {text}"
    assert same(weights(second.net), before) and second.engine.state.epoch == 0  # nothing restored


def test_also_accept_lets_a_stage_continue_on_other_data(tmp_path, caplog):
    first = Run()
    first.checkpointer(tmp_path)
    first.run(1)
    second = Run(seed=1)
    moved = {**RECORD, "dataset_dir": "/data/b"}
    with caplog.at_level(logging.INFO):
        second.resume(tmp_path, max_epochs=5, record=moved, also_accept={"dataset_dir": "/data/a"})
    assert same(weights(second.net), weights(first.net)) and second.engine.state.epoch == 1
    assert any("continues a run with dataset_dir '/data/a' (now '/data/b')" in r.getMessage() for r in caplog.records)
    # another earlier dataset, or another changed key, is still refused
    with pytest.raises(CheckpointError, match="dataset_dir '/data/a' -> '/data/b'"):
        Run().resume(tmp_path, max_epochs=5, record=moved, also_accept={"dataset_dir": "/data/c"})
    with pytest.raises(CheckpointError, match=r"num_blocks 2 -> 3") as err:
        Run().resume(tmp_path, max_epochs=5, record={**moved, "num_blocks": 3}, also_accept={"dataset_dir": "/data/a"})
    assert "dataset_dir" not in str(err.value)


def test_also_accept_must_name_a_recorded_key(tmp_path):
    with pytest.raises(ValueError, match=r"also_accept names \['seed'\]"):
        ResumeFromCheckpoint(tmp_path, Run().objects(), run_record=RECORD, also_accept={"seed": 1})


def test_shape_mismatch_without_record_is_one_line(tmp_path):
    first = Run()
    TrainingCheckpointer(tmp_path, {"network": first.net}).attach(first.engine)
    first.run(1)
    other = ResumeFromCheckpoint(tmp_path, {"network": torch.nn.Linear(3, 5)}, max_epochs=3)
    with pytest.raises(CheckpointError, match=r"its network does not fit this configuration .*--resume False"):
        other.attach(Engine(lambda e, b: None))


def test_finished_run_says_so(tmp_path):
    first = Run()
    first.checkpointer(tmp_path)
    first.run(3)
    with pytest.raises(CheckpointError) as err:
        Run().resume(tmp_path, max_epochs=3)
    assert "training already finished (epoch 3 of --max_epochs 3)" in str(err.value)
    assert "raise --max_epochs" in str(err.value) and "--resume False" in str(err.value)


def test_learning_rate_from_config_is_reapplied(tmp_path, caplog):
    first = Run(lr=1e-4)
    first.checkpointer(tmp_path)
    first.run(1)
    exp_avg = first.g_opt.state_dict()["state"][0]["exp_avg"].clone()
    second = Run(seed=2, lr=5e-4)
    with caplog.at_level(logging.INFO, logger="bundle.training.checkpoints"):
        second.resume(tmp_path, max_epochs=3, learning_rates={"g_optimizer": 5e-4, "d_optimizer": 1e-4})
    assert second.g_opt.param_groups[0]["lr"] == 5e-4 and second.d_opt.param_groups[0]["lr"] == 1e-4
    assert torch.equal(second.g_opt.state_dict()["state"][0]["exp_avg"], exp_avg)  # moments restored
    lines = [r.getMessage() for r in caplog.records if "learning rate" in r.getMessage()]
    assert lines == ["g_optimizer: learning rate 0.0001 -> 0.0005 (from the config)"]


def test_n_saved_counts_files_of_earlier_runs(tmp_path):
    first = Run()
    first.checkpointer(tmp_path, n_saved=10)
    first.run(3)
    # an earlier version's name for epoch 1 and an unrelated file stay in the count / untouched
    (tmp_path / "checkpoint_epoch=1.pt").rename(tmp_path / "checkpoint_checkpoint_epoch=1.pt")
    (tmp_path / "model.pt").write_bytes(b"keep")
    second = Run()
    second.resume(tmp_path, max_epochs=5)
    second.checkpointer(tmp_path, n_saved=2)
    second.run(5)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt", "model.pt"]


def test_fresh_run_replaces_an_abandoned_runs_checkpoints(tmp_path, caplog):
    old = Run()
    old.checkpointer(tmp_path, n_saved=3)
    old.run(6)
    fresh = Run(seed=4)
    with caplog.at_level(logging.INFO, logger="bundle.training.checkpoints"):
        fresh.resume(tmp_path, max_epochs=2, enabled=False)
    assert "resume is off: the 3 checkpoint(s)" in caplog.text and fresh.engine.state.epoch == 0
    fresh.checkpointer(tmp_path, n_saved=3)
    fresh.run(2)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 2]
    assert Run().resume(tmp_path, max_epochs=3).path.name == "checkpoint_epoch=2.pt"


def test_failed_start_leaves_no_checkpoint_folder(tmp_path):
    folder = tmp_path / "models"
    run = Run()
    run.resume(folder, max_epochs=2)
    run.checkpointer(folder)
    BestModelSaver(run.net, run.best, folder / "model.pt").attach(run.engine)

    @run.engine.on(Events.ITERATION_STARTED)
    def fail(_):
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        run.run(2)
    assert not folder.exists()


def test_best_model_saver_on_a_monai_evaluator_uses_the_trainer_epoch(tmp_path):
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MeanSquaredError

    net = torch.nn.Conv3d(1, 1, 1)
    data = [{"image": torch.ones(1, 1, 2, 2, 2), "label": torch.ones(1, 1, 2, 2, 2)}]
    best = BestMetric("val_mse", mode="min")
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=data,
        network=net,
        key_val_metric={"val_mse": MeanSquaredError(output_transform=lambda o: (o[0]["pred"], o[0]["label"]))},
        val_handlers=[BestModelSaver(net, best, tmp_path / "model.pt")],
        metric_cmp_fn=lambda current, previous: current < previous,
    )
    evaluator.run(global_epoch=7)
    assert best.epoch == 7 and best.value == pytest.approx(evaluator.state.metrics["val_mse"])
    assert (tmp_path / "model.pt").is_file()
    # a restored best (here: a lower MSE from epoch 3) also becomes the evaluator's own record
    best.update(best.value / 2, 3)
    evaluator.run(global_epoch=8)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (best.value, 3) and best.epoch == 3


def test_best_metric_rejects_another_metric():
    best = BestMetric("val_psnr")
    with pytest.raises(ValueError, match="val_ssim"):
        best.load_state_dict({"name": "val_ssim", "mode": "max", "value": 0.5, "epoch": 1})
    assert not best.is_better(float("inf")) and best.is_better(-5.0)
