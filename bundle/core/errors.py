"""The bundle's one error family: every fault a user can cause or meet is one line, `error: <where>: <problem>`.

`BundleError` derives from SystemExit, not Exception, on purpose: MONAI's bundle runner wraps every Exception
raised while building or running a config in a generic "Failed to instantiate/evaluate" RuntimeError with a long
traceback. A SystemExit passes through, so the user sees one line and exit status 1. Library code catches a kind
(`DatasetError`, `CheckpointError`, ...) or the family (`BundleError`).

The message names the file or config id first and, where there is one, says what to do.
"""

from __future__ import annotations

import re

__all__ = [
    "BundleError",
    "DatasetError",
    "ConfigError",
    "CheckpointError",
    "NonFiniteWeightsError",
    "OutputError",
    "FolderLockError",
    "DiskFullError",
    "CalibrationError",
    "TrainingDiverged",
    "StudyError",
    "root_cause",
    "describe_load_error",
]


class BundleError(SystemExit):
    """Base of the family: one line `error: <message>`, exit status 1 (see the module docstring)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message


class DatasetError(BundleError):
    """A dataset, datalist or input volume that cannot be used; names the file and what is expected."""


class ConfigError(BundleError):
    """A configuration that cannot run as asked; names the config id (or file) and what to do."""


class CheckpointError(BundleError):
    """A checkpoint or generator weights file that cannot be read, resumed from or loaded into the network."""


class NonFiniteWeightsError(CheckpointError):
    """Training produced NaN or infinite weights; nothing was saved from that epoch."""


class OutputError(BundleError):
    """An output that cannot be written safely (a foreign file in the way, an unwritable folder, a failed write)."""


class FolderLockError(OutputError):
    """A checkpoint or output folder in use by another live run (its lock names the process)."""


class DiskFullError(OutputError):
    """No space left (or over quota) while writing a file; the file's old content, if any, is untouched and no
    temporary file is left."""


class CalibrationError(BundleError):
    """An uncertainty calibration record that cannot be used with this model or run."""


class TrainingDiverged(BundleError):
    """A non-finite loss or gradient: training stops naming epoch, iteration and term; the failing step's weights
    are never applied, so the last checkpoint and model.pt stay as they were."""


class StudyError(BundleError):
    """A reader-study input, study folder or reader export that cannot be used (foreign, tampered, incomplete)."""


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain: MONAI wraps a transform's error in "applying transform" RuntimeErrors."""
    while True:
        inner = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if inner is None:
            return err
        err = inner


_BLOCKED_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", re.IGNORECASE)


def describe_load_error(err: BaseException) -> str:
    """One line saying why torch.load(weights_only=True) refused a file, without torch's advice to re-run with
    `weights_only=False` (that would execute whatever code the file carries). Names the blocked global when
    torch does: a pickled Python object that is not plain weights."""
    text = str(err)
    blocked = _BLOCKED_GLOBAL.search(text)
    if blocked:
        return f"it holds a pickled Python object ({blocked.group(1)}), not plain weights; refused without running it"
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
        lines = [ln.strip() for ln in detail.splitlines() if ln.strip() and "weights_only" not in ln]
        lines = [ln for ln in lines if not ln.startswith("Check the documentation")]
        why = lines[0] if lines else "unsupported content"
        return f"not a weights-only torch file ({why}); refused without running it"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
