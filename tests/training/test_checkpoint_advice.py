"""A checkpoint torch refuses to load weights-only gets one line that never advises `weights_only=False`."""

import os

import pytest
import torch
from conftest import tiny_generator

from bundle.core.errors import CheckpointError
from bundle.inference.generator import load_generator
from bundle.training.checkpoints import ResumeFromCheckpoint


class Payload:
    """Pickles as a call of os.system: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.fixture
def bad_files(tmp_path):
    rand = tmp_path / "random.pt"
    rand.write_bytes(os.urandom(4000))
    evil = tmp_path / "evil.pt"
    torch.save({"network": Payload()}, evil)
    return rand, evil


def _check(text: str, path) -> None:
    assert "\n" not in text and str(path) in text
    assert "weights_only" not in text and "Re-running" not in text and "will likely succeed" not in text, text


def test_generator_loading_never_advises_unsafe_loading(bad_files):
    rand, evil = bad_files
    for path in (rand, evil):
        with pytest.raises(CheckpointError) as err:
            load_generator(tiny_generator(), path)
        _check(str(err.value), path)
    with pytest.raises(CheckpointError, match=r"pickled Python object \((posix|os|nt)\.system\)"):
        load_generator(tiny_generator(), evil)


def test_resume_never_advises_unsafe_loading(bad_files, tmp_path, caplog):
    rand, evil = bad_files
    folder = tmp_path / "models"
    folder.mkdir()
    rand.rename(folder / "checkpoint_epoch=1.pt")
    evil.rename(folder / "checkpoint_epoch=2.pt")
    net = tiny_generator()
    resume = ResumeFromCheckpoint(folder, {"network": net})
    with pytest.raises(SystemExit) as err:
        resume.attach(None)
    _check(str(err.value), folder)
    assert "system" in str(err.value)  # the blocked global is named
    assert "weights_only" not in caplog.text
