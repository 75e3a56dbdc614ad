"""Smaller faults: an epoch row repeated after a kill, a validation split naming neither id nor dataset."""

import csv
from types import SimpleNamespace

import pytest
import torch

from bundle.core.errors import DatasetError
from bundle.data.datalist import split_datalist
from bundle.training.handlers import EpochTimingHandler


def fake_engine(epoch: int) -> SimpleNamespace:
    state = SimpleNamespace(epoch=epoch, metrics={"train_total": 0.5 / epoch}, output={"label": torch.zeros(2, 1)})
    return SimpleNamespace(state=state)


def epochs(path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_epoch_log_keeps_one_row_per_epoch_after_a_killed_run(tmp_path):
    path = tmp_path / "out" / "train_log.csv"
    first = EpochTimingHandler(path)
    for epoch in (1, 2, 3):  # the first run wrote epoch 3's row, then was killed before its checkpoint
        first.epoch_started(fake_engine(epoch))
        first.iteration_completed(fake_engine(epoch))
        first.epoch_completed(fake_engine(epoch))
    assert epochs(path) == [1, 2, 3]
    resumed = EpochTimingHandler(path)  # resumes from the epoch-2 checkpoint and repeats epoch 3
    for epoch in (3, 4):
        resumed.epoch_started(fake_engine(epoch))
        resumed.iteration_completed(fake_engine(epoch))
        resumed.epoch_completed(fake_engine(epoch))
    assert epochs(path) == [1, 2, 3, 4]
    rows = list(csv.DictReader(open(path, newline="")))
    assert float(rows[2]["train_total"]) == pytest.approx(0.5 / 3) and rows[3]["patches"] == "2"
    assert [p.name for p in path.parent.iterdir()] == ["train_log.csv"]  # no temporary left


def test_too_many_validation_cases_names_the_id_and_the_dataset(tmp_path):
    items = [{"image": str(tmp_path / "ds" / "imagesTr" / f"case{i}.nii.gz")} for i in range(3)]
    with pytest.raises(DatasetError) as err:
        split_datalist(items, num_val=10, part="train")
    text = str(err.value)
    assert text.startswith("num_val: ") and str(tmp_path / "ds" / "imagesTr") in text
    assert "between 1 and 2" in text and "\n" not in text
