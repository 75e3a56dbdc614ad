"""A full disk is one line naming the file being written; nothing half-written; the manifest claims no unwritten file."""

import errno
import json

import nibabel as nib
import pytest
import torch
from monai.data import MetaTensor

import bundle.inference.writer as writer
import bundle.training.checkpoints as checkpoints
from bundle.core.errors import DiskFullError
from bundle.inference.output_names import MANIFEST_NAME, read_manifest
from bundle.inference.writer import SaveSROutputsd


class FullDiskFile:
    """A binary file on a disk with `room` bytes free: a write beyond that raises ENOSPC, as the kernel does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def item(tmp_path, with_uncertainty: bool) -> dict:
    affine = torch.diag(torch.tensor([0.5, 0.5, 0.5, 1.0]))
    vol = lambda: MetaTensor(torch.rand(1, 8, 8, 8), affine=affine)  # noqa: E731
    d = {"pred": vol(), "consistency": vol(), "image": MetaTensor(torch.rand(1, 2, 2, 2))}
    if with_uncertainty:
        d["uncertainty"] = vol()
    d.update(output_name="case", source=str(tmp_path / "case.nii.gz"), trust={"note": "x"})
    return d


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_manifest_lists_only_written_files_without_uncertainty(tmp_path):
    out = tmp_path / "sr"
    SaveSROutputsd(str(out))(item(tmp_path, with_uncertainty=False))
    manifest = read_manifest(out)
    assert set(manifest) == {"case_sr.nii.gz", "case_consistency.nii.gz", "case_preview.png", "case_sr.json"}
    assert all(entry["complete"] for entry in manifest.values())
    assert all((out / name).is_file() for name in manifest)


def test_disk_full_while_writing_outputs_is_one_line_and_the_manifest_claims_nothing_unwritten(tmp_path, monkeypatch):
    out = tmp_path / "sr"
    real_save = nib.save

    def save(image, path):
        if "consistency" in str(path):
            with open(path, "wb") as f:
                f.write(b"partial")  # what a full disk leaves: a truncated temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, path)

    monkeypatch.setattr(writer.nib, "save", save)
    with pytest.raises(DiskFullError) as err:
        SaveSROutputsd(str(out))(item(tmp_path, with_uncertainty=True))
    text = str(err.value)
    assert text.startswith(f"{out / 'case_consistency.nii.gz'}: No space left on device") and "\n" not in text
    assert err.value.code == f"error: {text}"
    assert files(out) == [MANIFEST_NAME]  # no temporary, no partial file, no SR without its maps
    assert read_manifest(out) == {}


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    net = torch.nn.Linear(64, 64)
    saver = checkpoints.TrainingCheckpointer(folder, {"network": net})

    class Engine:
        state = type("State", (), {"epoch": 1})

        @staticmethod
        def state_dict():
            return {"epoch_length": 1, "iteration": 1}

    saver(Engine)
    first = (folder / "checkpoint_epoch=1.pt").read_bytes()
    recorder_init = checkpoints._WriteErrorRecorder.__init__

    def full(self, f):  # the disk fills 1 kB into the next checkpoint
        recorder_init(self, FullDiskFile(f, room=1024))

    monkeypatch.setattr(checkpoints._WriteErrorRecorder, "__init__", full)
    Engine.state.epoch = 2
    with pytest.raises(DiskFullError) as err:
        saver(Engine)
    assert str(err.value).startswith(f"{folder / 'checkpoint_epoch=2.pt'}: No space left on device")
    assert files(folder) == ["checkpoint_epoch=1.pt"] and (folder / "checkpoint_epoch=1.pt").read_bytes() == first
    assert json.dumps(torch.load(folder / "checkpoint_epoch=1.pt", weights_only=True)["epoch"]) == "1"


def test_disk_full_during_validation_is_not_logged_with_a_traceback(caplog):
    """model.pt is written by the evaluator, whose StatsHandler logs any exception with its traceback."""
    from ignite.engine import Engine
    from monai.handlers import StatsHandler

    from bundle.training.handlers import OneLineErrors

    def step(engine, batch):
        raise DiskFullError("models/model.pt: No space left on device while writing it")

    engine = Engine(step)
    OneLineErrors().attach(engine)
    StatsHandler(iteration_log=False).attach(engine)
    with pytest.raises(DiskFullError):
        engine.run([0])
    assert "Traceback" not in caplog.text and "Exception:" not in caplog.text

    def other(engine, batch):
        raise ValueError("a bug")

    engine = Engine(other)
    OneLineErrors().attach(engine)
    with pytest.raises(ValueError), caplog.at_level("ERROR"):
        engine.run([0])
    assert "Exception: a bug" in caplog.text  # everything else keeps its traceback in the log


def full_disk_on_consistency(real_save):
    """nib.save that fails with ENOSPC on the consistency map, after the files written before it."""

    def save(image, path):
        if "consistency" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, path)

    return save


def test_disk_full_on_a_map_removes_the_volumes_outputs_and_a_rerun_writes_them(tmp_path, monkeypatch):
    """A full disk after the SR was written: none of the volume's files stay, the manifest lists only files that
    exist, and the same call again (space freed) is not refused and writes the whole set."""
    out = tmp_path / "sr"
    real_save = nib.save
    monkeypatch.setattr(writer.nib, "save", full_disk_on_consistency(real_save))
    with pytest.raises(DiskFullError) as err:
        SaveSROutputsd(str(out))(item(tmp_path, with_uncertainty=True))
    assert str(err.value).startswith(f"{out / 'case_consistency.nii.gz'}: No space left on device")
    assert files(out) == [MANIFEST_NAME]  # the SR written before the failure is gone too
    assert all((out / name).exists() for name in read_manifest(out))
    monkeypatch.setattr(writer.nib, "save", real_save)
    from bundle.inference.output_names import plan_outputs

    suffixes = writer.output_suffixes("nifti")
    assert plan_outputs([{"image": str(tmp_path / "case.nii.gz")}], out, suffixes)  # not refused
    SaveSROutputsd(str(out))(item(tmp_path, with_uncertainty=True))
    assert {"case_sr.nii.gz", "case_consistency.nii.gz", "case_uncertainty.nii.gz", "case_sr.json"} <= set(files(out))
    assert all(entry["complete"] for entry in read_manifest(out).values())


def test_a_manifest_rewrite_drops_entries_whose_files_are_gone(tmp_path):
    """A manifest left stale (the disk was still full when it was to be updated) lists only existing files at
    its next rewrite."""
    from bundle.inference.output_names import record_outputs

    out = tmp_path / "sr"
    out.mkdir()
    (out / "a_sr.nii.gz").write_bytes(b"x")
    record_outputs(out, ["a_sr.nii.gz", "a_sr.json"], "a.nii.gz", complete=False)
    record_outputs(out, ["b_sr.nii.gz"], "b.nii.gz", complete=False)
    assert set(read_manifest(out)) == {"a_sr.nii.gz", "b_sr.nii.gz"}


def test_disk_full_while_adapting_removes_the_scans_outputs_and_a_rerun_is_not_refused(tmp_path, monkeypatch):
    import numpy as np

    import bundle.inference.writer as inference_writer
    from bundle.adaptation.settings import GeneratorSettings, OutputSettings, TrustSettings
    from bundle.adaptation.workflow import PerScanAdaptation

    scan, out = tmp_path / "t.nii.gz", tmp_path / "out"
    gen = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image((100 + 900 * gen.random((32, 32, 8))).astype(np.float32), affine), scan)
    kwargs = dict(
        generator=GeneratorSettings(
            network_kwargs={"features": 8, "growth": 4, "num_blocks": 1},
            fit_settings={"max_iterations": 1, "batch_size": 4, "patch_size": 16},
        ),
        trust=TrustSettings(uncertainty=1),
        max_minutes=1.0,
    )
    real_save = nib.save
    monkeypatch.setattr(inference_writer.nib, "save", full_disk_on_consistency(real_save))
    with pytest.raises(DiskFullError) as err:
        PerScanAdaptation(str(scan), OutputSettings(str(out)), **kwargs).run()
    text = str(err.value)
    assert text.startswith(f"{out / 't_consistency.nii.gz'}: No space left on device") and "\n" not in text
    assert not out.exists() or [p.name for p in out.iterdir()] == []  # the SR written first is gone too
    monkeypatch.setattr(inference_writer.nib, "save", real_save)
    PerScanAdaptation(str(scan), OutputSettings(str(out)), **kwargs).run()  # the same command again: not refused
    assert (out / "t_sr.nii.gz").is_file() and (out / "t_consistency.nii.gz").is_file()
