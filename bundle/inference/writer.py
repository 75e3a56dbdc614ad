"""Write everything inference makes for one volume, under the names planned before any volume was inferred.

Per input, in the output folder (`<name>` is the planned output name, see `bundle.inference.output_names`):
    <name>_sr.nii.gz            the super-resolved volume (or `<name>_sr/`, a derived DICOM series)
    <name>_consistency.nii.gz   |D(SR) - LR| on the HR grid, where the output disagrees with what was measured
    <name>_uncertainty.nii.gz   calibrated TTA uncertainty (lambda * std), or the raw std when uncalibrated
    <name>_sr.json              the trust summary (`bundle.trust.summary.trust_summary`), the input's spacing and a
                                thick-slice warning (`bundle.inference.spacing`), and where each file went
Every file is written to a temporary name in the same folder and renamed into place, so a crash never leaves a
half-written output; the manifest of `bundle.inference.output_names` records each input's outputs around the writes.
When a write fails (a full disk) after some of an input's files were written, all of that input's files are
removed, so no SR is left without its maps and summary and a rerun of the same command writes the whole set.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import SaveImaged

from bundle.core.atomic import remove_partial_outputs, replace_atomically, write_text_atomic
from bundle.core.choices import OUTPUT_FORMATS
from bundle.core.errors import OutputError
from bundle.core.progress import close_progress_bars
from bundle.data.robust_intensity import input_outliers_summary
from bundle.inference.output_names import read_manifest, record_outputs
from bundle.inference.preview import PREVIEW_SUFFIX
from bundle.inference.spacing import spacing_summary

__all__ = ["SaveSROutputsd", "write_nifti_atomic", "output_suffixes"]

logger = logging.getLogger(__name__)
MAPS = {"consistency": "_consistency.nii.gz", "uncertainty": "_uncertainty.nii.gz"}
SUMMARY_SUFFIX = "_sr.json"
DICOM_MAPS = {"uncertainty": "_uncertainty", "consistency": "_consistency"}  # series folders, output_format dicom


def output_suffixes(output_format: str) -> tuple[str, ...]:
    """The file endings inference writes per input; the first is the SR volume's (a folder for DICOM)."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if output_format == "dicom":
        return ("_sr", *MAPS.values(), SUMMARY_SUFFIX, PREVIEW_SUFFIX, *DICOM_MAPS.values())
    return ("_sr.nii.gz", *MAPS.values(), SUMMARY_SUFFIX, PREVIEW_SUFFIX)


def write_nifti_atomic(volume: torch.Tensor, affine: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write a channel-first volume (C, X, Y, Z) as NIfTI float32: (X, Y, Z) for one channel, else (X, Y, Z, C)."""
    arr = torch.as_tensor(volume).detach().float().cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    image = nib.Nifti1Image(np.ascontiguousarray(arr), np.asarray(affine, dtype=np.float64))
    path = Path(path)
    replace_atomically(path, lambda tmp: nib.save(image, tmp), keep_suffix=True)
    return path


class SaveSROutputsd(SaveImaged):
    """Write the SR volume, its consistency and uncertainty maps and the trust summary of one item.

    A SaveImaged subclass on purpose: MONAI Label drops every SaveImaged instance from a bundle's
    postprocessing (it returns the prediction itself), so this writer never runs inside a MONAI Label server.

    Args:
        output_dir: the output folder (`@output_dir`); the names come from each item's planned "output_name"
            and "source" (`bundle.inference.output_names.OutputPlan` items), so nothing here depends on the run's inputs
            when the writer is built (MONAI Label builds the postprocessing without them).
        output_format: "nifti", or "dicom" (a derived series per input that came from a DICOM series).
        keys: the SR key; the maps come from `map_keys`, the summary from `summary_key`; the input's clipped
            outliers (`bundle.data.robust_intensity`) from `ref_key`'s meta data, as "input_outliers" in the summary.
        model_name / model_version: recorded in the summary and in a derived DICOM series.
        scale: the SR scale (for DICOM's derivation description).
    """

    def __init__(
        self,
        output_dir: str,
        output_format: str = "nifti",
        keys: str = "pred",
        map_keys: tuple[str, ...] = tuple(MAPS),
        summary_key: str = "trust",
        ref_key: str = "image",
        model_name: str = "",
        model_version: str = "",
        scale: int | tuple[int, int, int] = 4,
    ) -> None:
        super().__init__(keys=keys, output_dir=str(output_dir), print_log=False)
        self.suffixes = output_suffixes(output_format)
        self.folder, self.output_format = Path(output_dir), output_format
        self.map_keys, self.summary_key, self.ref_key = tuple(map_keys), summary_key, ref_key
        self.model_name, self.model_version, self.scale = model_name, model_version, scale

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name, folder, source = d["output_name"], self.folder, d["source"]
        # only the files this item will write: a map that is off (e.g. --uncertainty 0) is never claimed
        planned = [name + self.suffixes[0]]
        planned += [name + suffix for key, suffix in MAPS.items() if key in self.map_keys and key in d]
        planned.append(name + SUMMARY_SUFFIX)
        # pending first: a crash mid-write leaves files that a rerun for this input may replace
        record_outputs(folder, planned, source, complete=False)
        written: dict[str, str] = {}
        try:
            sr = d[self.keys[0]]
            written["sr"] = str(self._write_sr(sr, folder, name))
            for key in self.map_keys:
                if key in d:
                    written[key] = str(write_nifti_atomic(d[key], d[key].affine, folder / f"{name}{MAPS[key]}"))
                    if self.output_format == "dicom":  # the map also as a DICOM series referencing the SR series
                        written[key + "_dicom"] = str(self._write_dicom_map(d[key], key, folder, name, written["sr"]))
            if isinstance(d.get("image"), torch.Tensor):  # the loaded input (not only its path): a tri-planar preview
                written["preview"] = str(self._write_preview(d, folder / f"{name}{PREVIEW_SUFFIX}", name))
            summary = {**d.get(self.summary_key, {}), "model": self.model_name, "model_version": self.model_version}
            summary.update(input_outliers_summary(d.get(self.ref_key)))
            summary.update(spacing_summary(d))
            summary["outputs"] = written
            write_text_atomic(folder / f"{name}{SUMMARY_SUFFIX}", json.dumps(summary, indent=4))
        except BaseException:
            if written:  # a partial set: none of this input's files stay (the first write replaced the earlier SR)
                self._remove_outputs(folder, name, source, written.values())
            self._forget_unwritten(folder, name, source)
            close_progress_bars()
            raise
        done = [name + s for s in self.suffixes if (folder / (name + s)).exists()]
        stale = [name + s for s in self.suffixes if name + s not in done]
        record_outputs(folder, done, source, complete=True, forget=stale)
        logger.info("%s -> %s", d.get("source_label") or source, written["sr"])
        return d

    def _remove_outputs(self, folder: Path, name: str, source: str, written: Any) -> None:
        """Remove what this call wrote and the files the manifest records as this input's earlier outputs."""
        recorded = read_manifest(folder)
        ours = {Path(p).name for p in written}
        names = [name + s for s in self.suffixes]
        remove_partial_outputs(
            folder / n
            for n in names
            if n in ours or (recorded.get(n) is not None and recorded[n]["input"] == str(source))
        )

    def _forget_unwritten(self, folder: Path, name: str, source: str) -> None:
        """After a failed write (a full disk): the manifest keeps, as incomplete, only files that exist."""
        names = [name + s for s in self.suffixes]
        present = [n for n in names if (folder / n).exists()]
        try:
            record_outputs(folder, present, source, complete=False, forget=[n for n in names if n not in present])
        except (OSError, SystemExit) as err:  # still no room for the manifest: its next rewrite drops the gone files
            logger.debug("%s: could not update the record of outputs (%s)", folder, err)

    def _write_preview(self, d: dict, path: Path, name: str) -> Path:
        """input | SR | uncertainty (else consistency) tri-planar PNG, `bundle.inference.preview`."""
        from bundle.inference.preview import write_preview

        key = next((k for k in ("uncertainty", "consistency") if k in d), None)
        return write_preview(
            path, d["image"], d[self.keys[0]], d.get(key), key or "", f"{name}: input, x{self.scale} SR"
        )

    def _write_dicom_map(self, volume: Any, key: str, folder: Path, name: str, sr_series: str) -> Path:
        from bundle.inference.dicom_out import write_trust_map_series

        target = folder / f"{name}{DICOM_MAPS[key]}"
        try:
            args = (self.model_name, self.model_version, self.scale)
            return write_trust_map_series(volume, sr_series, target, key.upper(), *args)
        except ValueError as err:
            raise OutputError(f"{target}: cannot write a DICOM series ({' '.join(str(err).split())})") from None

    def _write_sr(self, sr: Any, folder: Path, name: str) -> Path:
        if self.output_format == "nifti":
            return write_nifti_atomic(sr, sr.affine, folder / f"{name}{self.suffixes[0]}")
        from bundle.inference.dicom_out import source_series_files, write_derived_series  # pydicom only when asked for

        target = folder / f"{name}{self.suffixes[0]}"
        try:
            sources = source_series_files(dict(sr.meta))
            write_derived_series(sr, sr.affine, sources, target, self.model_name, self.model_version, self.scale)
        except ValueError as err:  # not a series, or a geometry DICOM cannot hold: one line, nothing half-written
            raise OutputError(f"{target}: cannot write a DICOM series ({' '.join(str(err).split())})") from None
        return target
