"""What a training leaves beside its outputs: TensorBoard's folder only once something is written in it (a refused
or early-failing run leaves none), and off a terminal no progress bar redrawn into the log (one line per epoch)."""

import io
import re

import torch
from conftest import TRAIN, ok, refused_while_locked, run_bundle
from ignite.engine import Engine, Events

from bundle.training.handlers import TensorBoardScalars, TerminalProgressBar

BAR = re.compile(r"\[\d+/\d+\]\s+\d+%\|")  # tqdm's "[1/2]  50%|" as ignite's ProgressBar draws it


def two_epochs(*handlers) -> Engine:
    engine = Engine(lambda e, batch: torch.tensor(float(batch)))
    for h in handlers:
        h.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(loss=0.5))
    return engine


def test_tensorboard_folder_is_made_at_the_first_write_not_before(tmp_path):
    log_dir = tmp_path / "out" / "tensorboard"
    handler = TensorBoardScalars(log_dir=str(log_dir), iteration_log=False)
    engine = two_epochs(handler)
    assert not log_dir.exists() and not (tmp_path / "out").exists()  # built and attached: nothing yet
    engine.run([1, 2], max_epochs=2)
    assert handler.made and list(log_dir.glob("events.out.tfevents.*"))
    handler.close()


def test_a_training_refused_at_start_leaves_no_tensorboard_folder(tiny_dataset, tmp_path):
    folder, out = tmp_path / "models", tmp_path / "out"
    args = ["run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset)]
    args += ["--ckpt_dir", str(folder), "--output_dir", str(out), "--max_epochs", "1"]
    refused_while_locked(folder, *args)  # another training holds the checkpoint folder
    assert not (out / "tensorboard").exists()
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_a_terminal_only():
    piped, terminal = io.StringIO(), Terminal()
    two_epochs(TerminalProgressBar(stream=piped, persist=True)).run([1, 2], max_epochs=2)
    assert piped.getvalue() == ""
    two_epochs(TerminalProgressBar(stream=terminal, persist=True)).run([1, 2], max_epochs=2)
    assert BAR.search(terminal.getvalue())


def test_a_training_off_a_terminal_logs_one_line_per_epoch_and_draws_no_bar(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    log = ok(run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset), "--max_epochs", "2",
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(out),
    ))  # fmt: skip  # stdout and stderr are a StringIO here, as a log file or a pipe: not a terminal
    assert not BAR.search(log) and "Epoch [1/2]" not in log, [line for line in log.splitlines() if BAR.search(line)]
    for epoch in (1, 2):
        assert len(re.findall(rf"SRGANTrainer - INFO - Epoch\[{epoch}\] Complete", log)) == 1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # written to: the folder is there


def test_no_config_draws_ignites_bar_off_a_terminal():
    """Training, validation and inference all take the terminal-only bar: a log file gets no redrawn copies."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    texts = {p.name: p.read_text() for p in configs.glob("*.json")}
    assert not [name for name, text in texts.items() if "ignite.handlers.ProgressBar" in text]
    assert "bundle.core.progress.TerminalProgressBar" in texts["inference.json"]
