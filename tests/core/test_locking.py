"""One run per folder: a second live run stops with one line naming the holder; a killed run's lock is taken over."""

import json
import logging
import os
import signal
import time

import pytest
from conftest import TRAIN, hold_lock, refused_while_locked

from bundle.core.errors import FolderLockError
from bundle.core.locking import LOCK_NAME, FolderLock


def test_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "models"
    holder = hold_lock(folder)
    try:
        with pytest.raises(FolderLockError) as err:
            FolderLock(folder, "training", "ckpt_dir").acquire()
        text = str(err.value)
        assert text.startswith(f"{folder}: in use by process {holder.pid}") and "--ckpt_dir" in text, text
        assert "\n" not in text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # the killed run left its lock
    with caplog.at_level(logging.WARNING, logger="bundle.core.locking"):
        lock = FolderLock(folder, "training").acquire()
    assert f"taking over the lock of process {holder.pid}" in caplog.text
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_release_removes_a_folder_it_made_and_left_empty(tmp_path):
    made = tmp_path / "new" / "models"
    with FolderLock(made):
        assert made.is_dir()
    assert not made.exists()
    kept = tmp_path / "kept"
    with FolderLock(kept):
        (kept / "checkpoint_epoch=1.pt").write_bytes(b"x")
    assert (kept / "checkpoint_epoch=1.pt").exists() and not (kept / LOCK_NAME).exists()


def test_second_training_on_one_ckpt_dir_stops_in_one_line(tiny_dataset, tmp_path):
    folder = tmp_path / "models"
    args = ["run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset)]
    args += ["--ckpt_dir", str(folder), "--output_dir", str(tmp_path / "out"), "--max_epochs", "1"]
    start = time.time()
    refused_while_locked(folder, *args)  # a first training holds the folder, as far as it can tell
    assert not list(folder.glob("checkpoint*.pt")) and not (tmp_path / "out" / "train_log.csv").exists()
    assert time.time() - start < 300


def test_a_lock_left_by_an_earlier_run_of_this_process_is_taken_over(tmp_path, caplog):
    """A run that raised (in a server or notebook) keeps its lock until the process ends; the next run takes it."""
    folder = tmp_path / "models"
    earlier = FolderLock(folder).acquire()
    with caplog.at_level(logging.WARNING, logger="bundle.core.locking"):
        later = FolderLock(folder).acquire()
    assert "an earlier run of this process" in caplog.text and not earlier.held and later.held
    later.release()
