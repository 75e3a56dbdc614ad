"""A run started before `residual_base` existed (its record says `residual_upsample`) resumes only with the
base it was trained with."""

from __future__ import annotations

import pytest
import torch
from test_checkpoints import RECORD, Run

from bundle.core.errors import CheckpointError
from bundle.training.checkpoints import upgrade_run_record


def test_residual_upsample_becomes_the_matching_residual_base():
    assert upgrade_run_record({"residual_upsample": True, "features": 8}) == {
        "residual_base": "trilinear",
        "features": 8,
    }
    assert upgrade_run_record({"residual_upsample": False}) == {"residual_base": "none"}
    assert upgrade_run_record({"residual_base": "bspline"}) == {"residual_base": "bspline"}


def old_run(folder) -> None:
    """A finished epoch whose checkpoint carries a run record of the old form."""
    run = Run()
    run.checkpointer(folder)
    run.run(1)
    path = folder / "checkpoint_epoch=1.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["run_record"] = {**checkpoint["run_record"], "residual_upsample": True}
    torch.save(checkpoint, path)


def test_an_old_trilinear_run_does_not_resume_with_the_bspline_base(tmp_path):
    old_run(tmp_path)
    with pytest.raises(CheckpointError, match="residual_base 'trilinear' -> 'bspline'"):
        Run(seed=1).resume(tmp_path, max_epochs=3, record={**RECORD, "residual_base": "bspline"})


def test_an_old_trilinear_run_resumes_with_the_trilinear_base(tmp_path):
    old_run(tmp_path)
    run = Run(seed=1)
    run.resume(tmp_path, max_epochs=3, record={**RECORD, "residual_base": "trilinear"})
    run.run(3)
    assert run.engine.state.epoch == 3
