"""The inference datalist, listed, planned and checked when the workflow runs, not when the config is read.

Pipelines load a bundle to inspect or wire it before they have an input: `monai.bundle.create_workflow(...,
workflow_type="inference")` then `check_properties()` (MONAI Deploy, MONAI FL, scripts) reads the required
properties `dataset` and `evaluator`, and before this module that listed the input folder and stopped with
"input not found". `PlannedInputs` is a lazy sequence: building it touches nothing; `resolve()` (first in the
config's `inference` list, and again by `CheckInputsHandler` when the evaluator starts, for code that runs the
evaluator itself) does, in order:

1. prove the output folder writable (`bundle.inference.output_names.check_writable`),
2. lock it for this run (`bundle.core.locking.FolderLock`: a second inference into it stops in one line),
3. list the inputs (`bundle.data.datalist.inference_datalist`), plan the output names (`OutputPlan`),
4. load and check every input (`bundle.inference.generator.validated_datalist`) before anything is inferred, and
   warn about a thick-slice one (`bundle.inference.spacing`).

Until then `len()` raises TypeError, which MONAI's workflow reads as "length not known yet" (as for an iterable
dataset); the evaluator learns its epoch length when it starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ignite.engine import Engine, Events

from bundle.core.locking import FolderLock
from bundle.data.datalist import inference_datalist
from bundle.inference.generator import validated_datalist
from bundle.inference.output_names import OUTPUT_SUFFIXES, OutputPlan, check_writable

__all__ = ["PlannedInputs", "CheckInputsHandler"]


class PlannedInputs(Sequence):
    """Inference items (`OutputPlan` items, each with "image", "source", "output_name"), made on `resolve()`.

    Args:
        input_dir: an input file or folder (`@input_dir`).
        output_dir: the output folder (`@output_dir`).
        transform: the preprocessing, run on every input by the check (`@preprocessing`).
        output_format: "nifti" or "dicom".
        suffixes: the file endings written per input (`bundle.inference.writer.output_suffixes`), the SR volume's first.
        lock: lock the output folder for the run (off for code that only plans).
        scale: the SR scale (`@scale`), to warn about an input whose output would still be thick-slice.
        dicom_series: None (every DICOM series), or a SeriesNumber or SeriesInstanceUID: of the DICOM series
            under `input_dir` only the one it names in each folder runs (`@dicom_series`).
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        transform: Callable[[dict], Any],
        output_format: str = "nifti",
        suffixes: Sequence[str] = OUTPUT_SUFFIXES[:1],
        lock: bool = True,
        scale: int | Sequence[int] = 4,
        dicom_series: Any = None,
    ) -> None:
        self.input_dir, self.output_dir, self.transform = input_dir, output_dir, transform
        self.scale, self.dicom_series = scale, dicom_series
        self.output_format, self.suffixes, self.lock = output_format, tuple(suffixes), lock
        self.folder_lock: FolderLock | None = None
        self._items: list[dict] | None = None

    @property
    def resolved(self) -> bool:
        return self._items is not None

    def resolve(self) -> list[dict]:
        """List, plan and check the inputs (once); every failure is one line naming the file."""
        if self._items is None:
            folder = check_writable(self.output_dir)
            if self.lock and self.folder_lock is None:
                self.folder_lock = FolderLock(folder, "inference", "output_dir").acquire()
            try:
                items = inference_datalist(self.input_dir)
                if self.dicom_series is not None:
                    from bundle.data.dicom_series import choose_series_items  # pydicom only when asked for

                    items = choose_series_items(items, self.dicom_series, self.input_dir)
                plan = OutputPlan(items, folder, self.suffixes)
                self._items = validated_datalist(plan.items, self.transform, self.output_format, self.scale)
            except BaseException:
                self.release()  # and the output folder goes again if this run made it
                raise
        return self._items

    def release(self) -> None:
        """Unlock the output folder (also done when the process ends)."""
        if self.folder_lock is not None:
            self.folder_lock.release()
            self.folder_lock = None

    def __len__(self) -> int:
        if self._items is None:
            raise TypeError("the inputs are listed and checked when the workflow runs (PlannedInputs.resolve())")
        return len(self._items)

    def __getitem__(self, index):
        return self.resolve()[index]


class CheckInputsHandler:
    """When the evaluator starts: resolve the `PlannedInputs` (if nothing did yet) and give the engine its epoch
    length; when it completes, unlock the output folder."""

    def __init__(self, inputs: PlannedInputs) -> None:
        self.inputs = inputs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.inputs.release())

    def started(self, engine: Engine) -> None:
        engine.state.epoch_length = len(self.inputs.resolve())
