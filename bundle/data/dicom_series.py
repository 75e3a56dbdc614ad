"""DICOM input: list the series in a folder, check each is a complete evenly spaced stack, load exactly one.

ITK reads only the first series of a folder and stacks whatever slices it finds: a second series is silently
dropped, and one missing slice stretches the volume (16 slices at 2.5 mm with one lost read as 15 at 2.68 mm).
This module reads headers only (pydicom, `stop_before_pixels=True`), groups files by SeriesInstanceUID, sorts
each series along its slice normal and refuses gaps, uneven spacing, mixed orientations and unreadable files
with one line naming the series, before any inference starts. `LoadImageOrSeriesd` then loads exactly the
listed files of one series with ITK.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import ITKReader, MetaTensor
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple

from bundle.core.errors import ConfigError, DatasetError

__all__ = [
    "DicomSeries",
    "DicomSeriesReader",
    "LoadImageOrSeriesd",
    "check_series",
    "choose_series_items",
    "dicom_series_items",
    "select_series",
    "series_choice_needed",
    "series_matches",
    "list_dicom_series",
    "read_header",
]

logger = logging.getLogger(__name__)

SPACING_TOLERANCE = 0.01  # relative to the median slice spacing
ORIENTATION_TOLERANCE = 1e-4  # direction cosines
SERIES_NAME_KEY = "series_name"  # meta keys written by LoadImageOrSeriesd
SERIES_UID_KEY = "series_uid"
SERIES_LABEL_KEY = "series_label"  # datalist keys: `series 3 'T1 AX' (uid ...)` for messages, and the number
SERIES_NUMBER_KEY = "series_number"
SERIES_CHOICE_ID = "dicom_series"  # the config id that picks one series of a folder (inference and adapting)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR


@dataclass(frozen=True)
class SliceHeader:
    """What the checks need from one file: where its slice lies and what shape it has."""

    path: Path
    position: np.ndarray | None  # ImagePositionPatient (3,), LPS mm; None when the file has no plane geometry
    orientation: np.ndarray | None  # ImageOrientationPatient (6,): row then column direction cosines
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    frames: int
    instance_number: int | None


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder, its files sorted along the slice normal (lowest position first).

    `name` is safe as a file name: the folder name when the folder holds one series, otherwise
    `<folder>_<SeriesNumber>` (or `<folder>_<last 8 UID digits>` when numbers are missing or repeated).
    `problems` holds what listing already found wrong (unreadable files in the folder, missing geometry);
    `check_series` reports them.
    """

    folder: Path
    series_uid: str
    description: str
    series_number: int | None
    files: tuple[Path, ...]
    name: str
    slices: tuple[SliceHeader, ...] = field(repr=False, default=())
    problems: tuple[str, ...] = field(repr=False, default=())

    @property
    def label(self) -> str:
        """`series 3 "T1 AX" (uid 1.2.3...)` for messages."""
        number = f"series {self.series_number}" if self.series_number is not None else "series"
        description = f" {self.description!r}" if self.description else ""
        return f"{number}{description} (uid {self.series_uid})"


def read_header(path: str | os.PathLike) -> pydicom.Dataset:
    """The header of one DICOM file without its pixel data; raises ValueError naming the problem.

    Also checks that the pixel data is complete for uncompressed transfer syntaxes, so a truncated file is
    refused here rather than read as garbage later.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            pixel_offset = f.tell()  # pydicom stops just before the Pixel Data element
    except Exception as err:  # pydicom raises many types on damaged files
        raise ValueError(f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    if "SOPInstanceUID" not in ds and "SeriesInstanceUID" not in ds:
        raise ValueError("not a DICOM file (no SOP Instance UID or Series Instance UID)")
    if "Rows" in ds and "Columns" in ds:
        _check_pixel_data_size(path, ds, pixel_offset)
    return ds


def _check_pixel_data_size(path: Path, ds: pydicom.Dataset, pixel_offset: int) -> None:
    meta = getattr(ds, "file_meta", None)
    syntax = pydicom.uid.UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else None
    if syntax and (syntax.is_compressed or syntax.is_deflated):
        return  # encapsulated or deflated: the size cannot be predicted from the header
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    expected = (int(ds.Rows) * int(ds.Columns) * samples * frames * bits + 7) // 8
    available = path.stat().st_size - pixel_offset - 8  # 8 bytes: the shortest element header
    if available < expected:
        raise ValueError(f"truncated: pixel data needs {expected} bytes, the file has {max(available, 0)}")


def _slice_header(path: Path, ds: pydicom.Dataset) -> SliceHeader:
    plane = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    missing = [k for k in plane if not ds.get(k)]
    number = ds.get("InstanceNumber")
    position = orientation = spacing = None
    if len(missing) < len(plane):  # some plane geometry: all of it is needed
        if missing:
            raise ValueError(f"has no {', '.join(missing)}: not a slice of a 3D volume")
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        if position.shape != (3,) or orientation.shape != (6,):
            raise ValueError("ImagePositionPatient or ImageOrientationPatient has the wrong number of values")
        values = [float(v) for v in ds.PixelSpacing]
        spacing = (values[0], values[-1])
    return SliceHeader(
        path=path,
        position=position,
        orientation=orientation,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing=spacing,
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        instance_number=int(number) if number not in (None, "") else None,
    )


def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / max(np.linalg.norm(n), 1e-12)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "series"


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The image series of a folder (not recursive), ordered by SeriesNumber then UID; headers only.

    Files are grouped by SeriesInstanceUID and sorted by position along the slice normal
    (cross product of the row and column directions of ImageOrientationPatient). Hidden files and DICOMDIR
    are skipped; instances without Rows/Columns (reports, presentation states) are not image series. A file
    that cannot be read is recorded as a problem of every series of the folder: it could be a lost slice of
    any of them. Raises DatasetError when the folder holds no DICOM image at all.
    """
    root = Path(folder)
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    unreadable: list[str] = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = read_header(path)
        except ValueError as err:
            unreadable.append(f"{path.name}: {err}")
            continue
        if str(ds.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY or "Rows" not in ds:
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if not groups:
        detail = f" ({unreadable[0]})" if unreadable else ""
        raise DatasetError(f"{root}: no readable DICOM image found{detail}")

    series = [_make_series(root, uid, members, unreadable) for uid, members in groups.items()]
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    return _with_names(root, series)


def _make_series(root: Path, uid: str, members: list[tuple[Path, pydicom.Dataset]], unreadable: list[str]):
    first = members[0][1]
    problems = [f"unreadable file {text}" for text in unreadable]
    slices = []
    for path, ds in members:
        try:
            slices.append(_slice_header(path, ds))
        except ValueError as err:
            problems.append(f"{path.name}: {err}")
    with_plane = [s for s in slices if s.position is not None]
    if with_plane and len(with_plane) < len(slices):
        bare = next(s for s in slices if s.position is None)
        problems.append(f"{bare.path.name} has no ImagePositionPatient while other slices have one")
    elif with_plane:
        assert slices[0].orientation is not None  # a position comes with an orientation (_slice_header)
        normal = _normal(slices[0].orientation)
        slices.sort(key=lambda s: (float(s.position @ normal), s.path.name))
    else:  # no plane geometry at all (e.g. secondary capture): InstanceNumber, then file name
        slices.sort(key=lambda s: (s.instance_number is None, s.instance_number or 0, s.path.name))
    number = first.get("SeriesNumber")
    return DicomSeries(
        folder=root,
        series_uid=uid or "<no uid>",
        description=str(first.get("SeriesDescription", "") or "").strip(),
        series_number=int(number) if number not in (None, "") else None,
        files=tuple(s.path for s in slices) if not problems else tuple(p for p, _ in members),
        name="",
        slices=tuple(slices),
        problems=tuple(problems),
    )


def _with_names(root: Path, series: list[DicomSeries]) -> list[DicomSeries]:
    if len(series) == 1:
        return [replace(series[0], name=_safe(root.name))]
    numbers = [s.series_number for s in series]
    unique = None not in numbers and len(set(numbers)) == len(numbers)
    named = []
    for s in series:
        tag = str(s.series_number) if unique else re.sub(r"\D", "", s.series_uid)[-8:]
        named.append(replace(s, name=_safe(f"{root.name}_{tag}")))
    return named


def check_series(series: DicomSeries) -> None:
    """Raise DatasetError (one line naming the folder and series) unless the series is one complete 3D stack.

    Refused: unreadable or truncated files in the folder, slices without geometry, multi-frame files, fewer
    than 2 slices, different orientations, sizes or pixel spacings, several slices at one position, slices
    not stacked along the normal, and gaps or uneven spacing beyond 1% of the median spacing.
    """

    def fail(problem: str) -> None:
        raise DatasetError(f"{series.folder}: {series.label}: {problem}")

    if series.problems:
        fail(series.problems[0])
    slices = series.slices
    if any(s.frames > 1 for s in slices):
        fail("multi-frame DICOM files are not supported; export the series as single-frame slices")
    if len(slices) < 2:
        fail(f"has {len(slices)} slice(s); a 3D volume needs at least 2")
    first = slices[0]
    if first.position is None:
        for s in slices[1:]:
            if (s.rows, s.columns) != (first.rows, first.columns):
                fail(f"slice sizes differ ({first.path.name}, {s.path.name})")
        logger.warning(
            "%s: %s: no ImagePositionPatient; slices ordered by InstanceNumber, gaps cannot be detected",
            series.folder,
            series.label,
        )
        return
    assert first.orientation is not None and first.pixel_spacing is not None  # plane geometry (checked above)
    for s in slices[1:]:
        assert s.orientation is not None and s.pixel_spacing is not None and s.position is not None
        if np.abs(s.orientation - first.orientation).max() > ORIENTATION_TOLERANCE:
            fail(f"orientations differ ({first.path.name} and {s.path.name}): not one 3D stack (localizer?)")
        if (s.rows, s.columns) != (first.rows, first.columns):
            sizes = f"{first.rows}x{first.columns} and {s.rows}x{s.columns}"
            fail(f"slice sizes differ ({first.path.name}, {s.path.name}: {sizes} pixels)")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=SPACING_TOLERANCE):
            fail(f"pixel spacings differ ({first.path.name} {first.pixel_spacing}, {s.path.name} {s.pixel_spacing})")

    normal = _normal(first.orientation)
    positions = np.stack([s.position for s in slices if s.position is not None])
    depth = positions @ normal
    gaps = np.diff(depth)
    spacing = float(np.median(gaps))
    if spacing <= 1e-6:
        fail(f"{int(np.sum(gaps <= 1e-6)) + 1} slices share positions: several volumes (echoes, times) in one series")
    for k, gap in enumerate(gaps):
        if abs(gap - spacing) > SPACING_TOLERANCE * spacing:
            where = f"between slices {k + 1} and {k + 2} ({slices[k].path.name}, {slices[k + 1].path.name})"
            if gap <= 1e-6:
                reason = "two slices at one position"
            elif gap > spacing and abs(gap / spacing - round(gap / spacing)) <= SPACING_TOLERANCE * gap / spacing:
                missing = round(gap / spacing) - 1
                reason = "a slice is missing" if missing == 1 else f"{missing} slices are missing"
            else:
                reason = "slices are unevenly spaced"
            fail(f"slice gap of {gap:.4g} mm {where}, expected {spacing:.4g} mm: {reason}")
    lateral = positions - positions[:1] - np.outer(depth - depth[0], normal)
    shift = np.linalg.norm(lateral, axis=1)
    if shift.max() > SPACING_TOLERANCE * spacing:
        k = int(shift.argmax())
        fail(f"slice {k + 1} ({slices[k].path.name}) is shifted {shift[k]:.3g} mm off the slice normal (tilted stack)")


def dicom_series_items(folder: str | os.PathLike, choice: Any = None) -> list[dict]:
    """Datalist items, one per checked series: {"image": [sorted files], "name", "series_uid", "series_number"
    (when the series has one), "series_label" (number, description and UID, for messages)}.

    choice: None for every series, else a SeriesNumber or SeriesInstanceUID (config id `dicom_series`): only the
    matching series is listed and checked (`select_series`). Load the items with `LoadImageOrSeriesd`; every
    listed series is checked here, so a bad one stops the run before any output is written.
    """
    every = list_dicom_series(folder)
    chosen = every if choice is None else select_series(every, choice, folder)
    items = []
    for series in chosen:
        check_series(series)
        item: dict[str, Any] = {"image": [str(p) for p in series.files], "name": series.name}
        item[SERIES_UID_KEY] = series.series_uid
        if series.series_number is not None:  # no None in an item: the data loader cannot collate it
            item[SERIES_NUMBER_KEY] = series.series_number
        items.append({**item, SERIES_LABEL_KEY: series.label})
    return items


def series_matches(choice: Any, uid: Any, number: Any) -> bool:
    """True if `choice` (a SeriesNumber or a SeriesInstanceUID, as a number or text) names this series."""
    text = str(choice).strip()
    return text == str(uid) or (number is not None and text.isdigit() and int(text) == int(number))


def select_series(series: Sequence[DicomSeries], choice: Any, where: str | os.PathLike) -> list[DicomSeries]:
    """The one series of `series` (those of folder `where`) that `choice` names; one ConfigError line listing
    the folder's series otherwise (none matches, or a repeated SeriesNumber matches several)."""
    found = [s for s in series if series_matches(choice, s.series_uid, s.series_number)]
    listed = "; ".join(s.label for s in series) or "none"
    if not found:
        raise ConfigError(
            f"config id {SERIES_CHOICE_ID}: {choice!r} names no DICOM series of {where} (it holds: {listed}); "
            "use a SeriesNumber or SeriesInstanceUID listed"
        )
    if len(found) > 1:
        raise ConfigError(
            f"config id {SERIES_CHOICE_ID}: {choice!r} names {len(found)} DICOM series of {where} "
            f"({'; '.join(s.label for s in found)}); use the SeriesInstanceUID"
        )
    return found


def choose_series_items(items: Sequence[dict], choice: Any, where: str | os.PathLike) -> list[dict]:
    """Datalist items (`bundle.data.datalist.inference_datalist`) with, of the DICOM series, only those that
    `choice` (config id `dicom_series`: a SeriesNumber or SeriesInstanceUID; None keeps all) names, one per
    folder; other inputs stay. One ConfigError line listing the series when none matches, or several of a folder."""
    if choice is None:
        return list(items)
    series = [item for item in items if item.get(SERIES_UID_KEY)]
    kept: list[dict] = []
    folders: dict[Path, list[dict]] = {}
    for item in items:
        if not item.get(SERIES_UID_KEY):
            kept.append(item)
        elif series_matches(choice, item[SERIES_UID_KEY], item.get(SERIES_NUMBER_KEY)):
            kept.append(item)
            folders.setdefault(Path(item["image"][0]).parent, []).append(item)
    listed = "; ".join(f"{Path(i['image'][0]).parent}: {i.get(SERIES_LABEL_KEY, i['name'])}" for i in series)
    if not any(folders.values()):
        raise ConfigError(
            f"config id {SERIES_CHOICE_ID}: {choice!r} names no DICOM series under {where} "
            f"(series: {listed or 'none'}); use a SeriesNumber or SeriesInstanceUID listed"
        )
    for folder, found in folders.items():
        if len(found) > 1:
            raise ConfigError(
                f"config id {SERIES_CHOICE_ID}: {choice!r} names {len(found)} DICOM series of {folder} "
                f"({'; '.join(str(i.get(SERIES_LABEL_KEY)) for i in found)}); use the SeriesInstanceUID"
            )
    logger.info(
        "%s %s: %d of %d DICOM series kept", SERIES_CHOICE_ID, choice, sum(map(len, folders.values())), len(series)
    )
    return kept


def series_choice_needed(where: str | os.PathLike, labels: Sequence[str], what: str) -> ConfigError:
    """One line for a folder of several series where one is needed: the series and the id to set."""
    return ConfigError(
        f"{where}: holds {len(labels)} DICOM series ({'; '.join(labels)}); {what} takes one: set config id "
        f"{SERIES_CHOICE_ID} (--{SERIES_CHOICE_ID}) to its SeriesNumber or SeriesInstanceUID"
    )


class DicomSeriesReader(ITKReader):
    """ITKReader that reads a list of DICOM files as the slices of one volume, in the order given.

    MONAI's ITKReader reads a list as separate images stacked as channels (which fails for slices at
    different positions) and a folder as its first series only. Here the list goes to ITK's series reader as a
    whole, so exactly the checked files of one series make the volume; spacing and direction come from
    ImagePositionPatient/ImageOrientationPatient as for a folder. Output (X, Y, Z) like ITKReader.
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs):
        import itk

        names = [str(f) for f in ensure_tuple(data)]
        kwargs_ = {**self.kwargs, **kwargs}
        return itk.imread(names if len(names) > 1 else names[0], **kwargs_)


class LoadImageOrSeriesd(LoadImaged):
    """LoadImaged that reads items carrying `series_key` as one DICOM series (their `keys` hold the file list).

    Other items load exactly as with LoadImaged (reader chosen by suffix); all LoadImaged options apply. Being
    a LoadImaged keeps tools that look for one (MONAI Label sets `image_only` and wraps it) working. A loaded
    series gets `series_name` (from `name_key`) and `series_uid` in its meta data, from which the writer finds
    the source series again (`bundle.inference.dicom_out.source_series_files`). Output: MetaTensor (X, Y, Z), RAS affine.
    """

    def __init__(
        self, keys: KeysCollection, series_key: str = SERIES_UID_KEY, name_key: str = "name", **kwargs: Any
    ) -> None:
        super().__init__(keys, **kwargs)
        self.series_key, self.name_key = series_key, name_key
        self.series_reader = DicomSeriesReader()

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        uid = data.get(self.series_key)
        if not uid or reader is not None:
            return super().__call__(data, reader)
        first = {key: Path(str(ensure_tuple(data[key])[0])) for key in self.key_iterator(dict(data))}
        d = super().__call__(data, self.series_reader)
        for key, path in first.items():
            if isinstance(d[key], MetaTensor):
                d[key].meta[SERIES_UID_KEY] = str(uid)
                d[key].meta[SERIES_NAME_KEY] = str(d.get(self.name_key) or path.parent.name)
        return d
