"""The training-curves figure draws the validation metric on its own axis and marks the best epoch."""

from __future__ import annotations

import csv

import pytest

from bundle.evaluation import figures as report

FIELDS = ["epoch", "seconds", "iterations", "patches", "patches_per_second", "train_total", "train_mse", "val_psnr"]


def write_csv(path, val: dict[int, float]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for epoch in range(1, 7):
            writer.writerow({"epoch": epoch, "seconds": 1.0, "iterations": 2, "patches": 4, "patches_per_second": 4.0,
                             "train_total": 1.0 / epoch, "train_mse": 0.1 / epoch, "val_psnr": val.get(epoch, "")})  # fmt: skip


def draw(monkeypatch, tmp_path, val, **kwargs):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    write_csv(tmp_path / "train_log.csv", val)
    report.training_curves(tmp_path / "train_log.csv", tmp_path / "curves.png", **kwargs)
    return figures[0]


def test_validation_psnr_is_drawn_and_the_best_epoch_marked(monkeypatch, tmp_path):
    val = {2: 21.0, 4: 23.5, 6: 22.0}  # validated every second epoch; the best is epoch 4, not the last
    fig = draw(monkeypatch, tmp_path, val)
    ax = next(a for a in fig.axes if a.get_ylabel() == "val_psnr (dB)")
    curve, star = ax.lines[0], ax.lines[1]
    assert list(curve.get_xdata()) == [2, 4, 6] and list(curve.get_ydata()) == [21.0, 23.5, 22.0]
    assert list(star.get_xdata()) == [4] and list(star.get_ydata()) == [23.5]
    assert "best: epoch 4" in star.get_label()
    loss_ax = next(a for a in fig.axes if a.get_title().startswith("training loss"))
    assert any(list(line.get_xdata()) == [4, 4] for line in loss_ax.lines)  # the best epoch on the loss plot too


@pytest.mark.parametrize("higher, best", [(True, 4), (False, 2)])
def test_best_epoch_follows_the_ranking(tmp_path, higher, best):
    write_csv(tmp_path / "log.csv", {2: 21.0, 4: 23.5, 6: 23.5})
    rows = list(csv.DictReader(open(tmp_path / "log.csv", newline="")))
    assert report.best_validation(rows, higher_is_better=higher)[3] == best  # ties: the first, as model.pt keeps


def test_a_csv_without_validation_still_draws(monkeypatch, tmp_path):
    fig = draw(monkeypatch, tmp_path, {})
    assert any("no validation column" in t.get_text() for a in fig.axes for t in a.texts)
