"""The epoch CSV carries the validation evaluator's key metric on the epochs it validated, and agrees with the best
model the checkpoint records."""

from __future__ import annotations

import csv
import math
import re
from types import SimpleNamespace

import pytest
import torch

from bundle.evaluation.figures import best_validation
from bundle.training.handlers import EpochTimingHandler


def engine(epoch: int) -> SimpleNamespace:
    state = SimpleNamespace(epoch=epoch, metrics={"train_total": 1.0}, output={"label": torch.zeros(2, 1)})
    return SimpleNamespace(state=state)


def test_validation_column_is_filled_only_on_validated_epochs(tmp_path):
    validator = SimpleNamespace(state=SimpleNamespace(key_metric_name="val_psnr", epoch=0, metrics={}))
    path = tmp_path / "train_log.csv"
    handler = EpochTimingHandler(path, validator=validator)
    for epoch in (1, 2, 3, 4):
        if epoch % 2 == 0:  # val_interval 2: the evaluator runs on even epochs and then holds that epoch
            validator.state.epoch, validator.state.metrics = epoch, {"val_psnr": 20.0 + epoch}
        handler.epoch_started(engine(epoch))
        handler.iteration_completed(engine(epoch))
        handler.epoch_completed(engine(epoch))
    rows = list(csv.DictReader(open(path, newline="")))
    assert [r["val_psnr"] for r in rows] == ["", "22.0", "", "24.0"]  # epoch 3 does not repeat epoch 2's value


def test_without_a_validator_the_csv_has_no_validation_column(tmp_path):
    path = tmp_path / "train_log.csv"
    handler = EpochTimingHandler(path)
    handler.epoch_started(engine(1))
    handler.iteration_completed(engine(1))
    handler.epoch_completed(engine(1))
    assert not [k for k in next(csv.DictReader(open(path, newline=""))) if k.startswith("val_")]


def test_tiny_training_writes_validation_psnr_that_matches_the_saved_best(trained):
    work = trained[0]
    rows = list(csv.DictReader(open(work / "outputs" / "train_log.csv", newline="")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    values = [float(r["val_psnr"]) for r in rows]  # tiny.json validates every epoch
    assert all(math.isfinite(v) and v > 0 for v in values)
    key, _, _, best = best_validation(rows)
    latest = max((work / "models").glob("checkpoint*.pt"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    saved = torch.load(latest, weights_only=True)["best_metric"]
    assert key == "val_psnr" and saved["epoch"] == best
    assert saved["value"] == pytest.approx(values[best - 1], abs=1e-5)
