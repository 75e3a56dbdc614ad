"""DICOM output: write a super-resolved volume as a new derived series of the study it came from.

The derived series keeps the patient, study and frame of reference of its source series, so a PACS files it
next to the original; it gets new Series/SOP Instance UIDs, DERIVED\\SECONDARY image type, a description that
says it is super-resolved and not for diagnostic use, and a geometry (size, spacing, slice positions)
recomputed from the SR affine. The SOP class of the source is kept (MR Image Storage for MR): that IOD allows
DERIVED images and keeps the MR acquisition attributes viewers show, where Secondary Capture would drop the
patient geometry. The series is written into a hidden temporary folder and renamed into place, so a failure
never leaves a half-written series.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.utils import ImageMetaKey
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from bundle.core.atomic import replace_dir_atomically
from bundle.core.choices import OUTPUT_FORMATS
from bundle.core.errors import ConfigError, DatasetError
from bundle.data.dicom_series import SERIES_UID_KEY, list_dicom_series, read_header

__all__ = [
    "SERIES_KINDS",
    "choose_rescale",
    "window_of",
    "source_series_files",
    "check_output_format",
    "sr_series_description",
    "write_dataset",
    "write_derived_series",
    "write_trust_map_series",
]

logger = logging.getLogger(__name__)

DISCLAIMER = "NOT FOR DIAGNOSTIC USE"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SERIES_NUMBER_OFFSET = 1000
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
# kind -> (series number offset from the SR series, ImageType value 3, derivation prefix). Value 3 of an MR image
# is required (Type 1 in the MR Image Module): the SR is an "OTHER" image, the maps are named after what they hold.
SERIES_KINDS = {
    "SR": (0, "OTHER", ""),
    "UNCERTAINTY": (1, "UNCERTAINTY", "Calibrated uncertainty (error bound, input units) of the "),
    "CONSISTENCY": (2, "CONSISTENCY", "Data-consistency residual |D(SR) - LR| (input units) of the "),
}

# Copied from the source when present: patient, study, frame of reference, series context, MR acquisition.
COPIED = (
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "OtherPatientIDsSequence", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "Modality", "BodyPartExamined", "PatientPosition", "Laterality", "ProtocolName",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName", "RepetitionTime",
    "EchoTime", "InversionTime", "EchoTrainLength", "EchoNumbers", "NumberOfAverages", "ImagingFrequency",
    "ImagedNucleus", "MagneticFieldStrength", "FlipAngle", "ContrastBolusAgent",
)  # fmt: skip
# Type 2 attributes of the modules written: present, empty when the source lacks them.
TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "PositionReferenceIndicator", "Manufacturer", "InstanceNumber",
    "SliceThickness", "PatientPosition", "Laterality",
)  # fmt: skip
# Type 2 (and 2C that apply to every non-echo-planar MR image): dciodvfy reports them missing otherwise
MR_TYPE2 = ("ScanOptions", "MRAcquisitionType", "EchoTime", "EchoTrainLength", "RepetitionTime")


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit), as pydicom 2.4 and 3.x both write it."""
    return format_number_as_ds(float(value))


def _scale_text(scale: int | Sequence[int]) -> str:
    values = [int(s) for s in (scale if isinstance(scale, Sequence) else (scale,) * 3)]
    return f"x{values[0]}" if len(set(values)) == 1 else "x" + "x".join(str(s) for s in values)


def sr_series_description(source_description: str, scale: int | Sequence[int], map_name: str = "") -> str:
    """`<source> SR x4 - NOT FOR DIAGNOSTIC USE` (`... SR x4 uncertainty - ...` for a map), the source part
    shortened so it fits LO (64 characters)."""
    suffix = f" SR {_scale_text(scale)}{' ' + map_name if map_name else ''} - {DISCLAIMER}"
    return (source_description.strip()[: 64 - len(suffix)].rstrip() + suffix).strip()


def choose_rescale(
    vmin: float,
    vmax: float,
    signed: bool,
    source_slope: float = 1.0,
    source_intercept: float = 0.0,
    prefer_identity: bool = True,
) -> tuple[float, float, bool]:
    """(RescaleSlope, RescaleIntercept, signed) so that [vmin, vmax] fits the 16-bit stored range with a step no
    coarser than the source's where 16 bits allow.

    In this order, the first that holds the range: the source's own rescale and pixel representation (stored values
    are then on the source's own grid, e.g. slope 0.1 keeps tenths); the source's rescale with the other
    representation (signed for an SR that dips below the source's intercept); when the source's step is 1 or
    coarser, the identity (1, 0) unsigned, then signed (viewers that ignore rescale on MR, which the MR IOD does not
    require, show them right); otherwise the range spread over the whole 16-bit range of the source's
    representation (a step finer than the source's whenever its rescale could hold the range at all).
    `prefer_identity=False` (maps with fractional values, where integer steps would lose most of the information)
    goes straight to the spread. Slope and intercept are returned as the decimal strings written to the file parse
    back, so quantisation uses exactly what readers will apply.
    """

    def fits(slope: float, intercept: float, sign: bool) -> bool:
        lo, hi = (-32768, 32767) if sign else (0, 65535)
        return slope > 0 and (vmin - intercept) / slope >= lo - 0.5 and (vmax - intercept) / slope <= hi + 0.5

    if prefer_identity:
        slope, intercept = float(_ds(source_slope)), float(_ds(source_intercept))
        for sign in (signed, not signed):
            if fits(slope, intercept, sign):
                return slope, intercept, sign
        for sign in (False, True):
            if slope >= 1 and fits(1.0, 0.0, sign):
                return 1.0, 0.0, sign
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    slope = float(_ds((vmax - vmin) / (hi - lo) * (1 + 1e-9))) if vmax > vmin else 1.0
    intercept = float(_ds(vmin - lo * slope))
    return slope, intercept, signed


def window_of(volume: torch.Tensor, ref: Dataset | None = None) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) in real-world units: the source's first window when it has one (the SR is in
    the source's units, so its window applies unchanged), else the 1st-99th percentile span of `volume`."""
    if ref is not None and "WindowCenter" in ref and "WindowWidth" in ref:
        first = lambda v: float(v[0]) if isinstance(v, Sequence) and not isinstance(v, str) else float(v)  # noqa
        try:
            return first(ref.WindowCenter), max(first(ref.WindowWidth), 1.0)
        except (TypeError, ValueError):
            pass
    flat = volume.flatten().float()
    if flat.numel() > 2_000_000:
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    low, high = (float(v) for v in torch.quantile(flat, torch.tensor([0.01, 0.99])))
    high = max(high, low + 1e-3)
    return (low + high) / 2, high - low


def _geometry(affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spacing (3,) and the row, column and slice direction cosines (3,) of an LPS voxel-to-world affine."""
    axes = affine_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length axis: spacing {spacing.tolist()}")
    row, col, slc = (axes[:, i] / spacing[i] for i in range(3))
    if abs(row @ col) > 1e-4 or abs(abs(np.cross(row, col) @ slc) - 1) > 1e-4:
        raise ValueError("affine is not orthogonal: a sheared volume cannot be stored as a DICOM slice stack")
    return spacing, row, col, slc


def _quantise(
    volume: np.ndarray, signed: bool, slope: float, intercept: float, nonnegative: bool = False
) -> np.ndarray:
    """Stored values of `volume` under (slope, intercept); `nonnegative`: none whose real value is below 0 (a
    rounded intercept or step must not turn a clamped SR's zeros into small negatives)."""
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    if nonnegative:
        lo = max(lo, int(np.ceil(-intercept / slope - 1e-9)))
        while intercept + slope * lo < 0:  # the decimal rounding of slope and intercept, exactly as readers apply it
            lo += 1
    stored = np.clip(np.rint((volume - intercept) / slope), lo, hi)
    return stored.astype("<i2" if signed else "<u2")


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write a Part 10 file (preamble, file meta, explicit VR little endian) and fsync it."""
    with open(path, "wb") as f:
        if PYDICOM_MAJOR >= 3:
            pydicom.dcmwrite(f, ds, enforce_file_format=True)
        else:  # pydicom 2.4: the encoding is set on the dataset
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(f, ds, write_like_original=False)
        f.flush()
        os.fsync(f.fileno())


def _base_dataset(ref: Dataset) -> Dataset:
    ds = Dataset()
    for keyword in COPIED:
        if keyword in ref:
            ds[keyword] = ref[keyword]
    sop_class = str(ref.get("SOPClassUID", MR_IMAGE_STORAGE))
    for keyword in TYPE2 + (MR_TYPE2 if sop_class == MR_IMAGE_STORAGE else ()):
        if keyword not in ds:
            setattr(ds, keyword, None)
    ds.SOPClassUID = sop_class
    ds.Modality = ref.get("Modality", "MR")
    return ds


def write_derived_series(
    sr_volume: np.ndarray | torch.Tensor,
    sr_affine: np.ndarray | torch.Tensor,
    source_files: Sequence[str | os.PathLike],
    output_folder: str | os.PathLike,
    model_name: str,
    model_version: str,
    scale: int | Sequence[int] = 4,
    space: str = "RAS",
    series_number: int | None = None,
    kind: str = "SR",
    related_series: Sequence[Path] | None = None,
) -> list[Path]:
    """Write `sr_volume` as a derived series of `source_files` into `output_folder`; returns the files.

    sr_volume: (X, Y, Z) or (1, X, Y, Z) real-valued intensities, X along DICOM columns (row direction), Y
    along rows, Z across slices (MONAI/ITK order). sr_affine: (4, 4) voxel-to-world, in RAS (MONAI's default,
    ITKReader `affine_lps_to_ras=True`) or LPS (`space="LPS"`). Writes one file per slice k (`IM00001.dcm` ...),
    InstanceNumber k + 1, ImagePositionPatient = affine @ (0, 0, k) in LPS. The folder is replaced as a whole.
    series_number: defaults to the source's SeriesNumber + 1000.
    kind: "SR" for the super-resolved series; "UNCERTAINTY" or "CONSISTENCY" for a trust map on the SR grid, which
    then gets its own series (number + 1 / + 2), ImageType value 3 naming the map, a full-range rescale (the maps
    hold fractions of the input's units) and, with `related_series` (the SR series' files, one per slice), a
    Related Series Sequence to the SR series and per slice a Source Image Sequence item to the SR slice it maps.
    """
    volume, vmin, vmax = _checked_volume(sr_volume)
    affine = np.asarray(torch.as_tensor(sr_affine).detach().cpu().numpy(), dtype=np.float64)
    if space.upper() not in ("RAS", "LPS"):
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    lps = LPS_FROM_RAS @ affine if space.upper() == "RAS" else affine
    if not source_files:
        raise ValueError("no source files: a derived series needs the series it was made from")
    if kind not in SERIES_KINDS:
        raise ValueError(f"kind must be one of {tuple(SERIES_KINDS)}, got {kind!r}")
    sources = [read_header(f) for f in source_files]
    ref = sources[0]
    is_map = kind != "SR"
    slope, intercept, signed = choose_rescale(
        vmin,
        vmax,
        int(ref.get("PixelRepresentation", 0)) == 1,
        float(ref.get("RescaleSlope", 1.0)),
        float(ref.get("RescaleIntercept", 0.0)),
        prefer_identity=not is_map,
    )
    sr_refs = [read_header(f) for f in related_series] if related_series else []
    ds0 = _series_header(ref, volume, lps, model_name, model_version, scale, series_number, kind, sr_refs)
    ds0.PixelRepresentation = 1 if signed else 0
    ds0.RescaleSlope, ds0.RescaleIntercept = _ds(slope), _ds(intercept)
    center, width = window_of(volume, None if is_map else ref)
    ds0.WindowCenter, ds0.WindowWidth = _ds(center), _ds(width)
    _, row, col, _ = _geometry(lps)
    normal = np.cross(row, col)
    source_depth = _slice_depths(sources, lps, normal, volume.shape[2])
    digits = max(5, len(str(volume.shape[2])))

    def write_slices(folder: Path) -> list[str]:
        names = []
        for k in range(volume.shape[2]):
            position = (lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
            # the source of slice k: the SR slice at the same position for a map, else the nearest source slice
            source = (
                sr_refs[min(k, len(sr_refs) - 1)] if sr_refs else sources[_nearest(source_depth, position @ normal)]
            )
            stored = _quantise(volume[:, :, k].double().numpy(), signed, slope, intercept, vmin >= 0)  # per slice
            names.append(f"IM{k + 1:0{digits}d}.dcm")
            write_dataset(_slice_dataset(ds0, k, position, normal, source, stored), folder / names[-1])
        return names

    out = Path(output_folder)
    names = replace_dir_atomically(out, write_slices)
    logger.info("%s: %d slices, %s", out, len(names), ds0.SeriesDescription)
    return [out / n for n in names]


def _checked_volume(sr_volume: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(X, Y, Z) CPU tensor of `sr_volume` ((X, Y, Z) or (1, X, Y, Z)) and its finite min and max."""
    volume = sr_volume.as_tensor() if isinstance(sr_volume, MetaTensor) else torch.as_tensor(sr_volume)
    volume = volume.detach().cpu()  # no copy when already on the CPU: an SR volume can be gigabytes
    if volume.ndim == 4 and volume.shape[0] == 1:
        volume = volume[0]
    if volume.ndim != 3:
        raise ValueError(f"expected a (X, Y, Z) or (1, X, Y, Z) volume, got shape {list(volume.shape)}")
    vmin, vmax = (float(v) for v in torch.aminmax(volume.float()))  # NaN and inf show in the extremes
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError("volume contains NaN or infinite values")
    return volume, vmin, vmax


def _series_header(
    ref: Dataset,
    volume: torch.Tensor,
    lps: np.ndarray,
    model_name: str,
    model_version: str,
    scale: int | Sequence[int],
    series_number: int | None,
    kind: str,
    sr_refs: Sequence[Dataset],
) -> Dataset:
    """The attributes every slice of the derived series shares: identity copied from `ref`, new series, derivation,
    geometry (from the LPS affine `lps`) and pixel format; rescale and window are set by the caller."""
    is_map = kind != "SR"
    spacing, row, col, _ = _geometry(lps)
    ds0 = _base_dataset(ref)
    now = datetime.datetime.now()
    date, clock = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds0.SeriesInstanceUID = generate_uid()
    number = ref.get("SeriesNumber")
    ds0.SeriesNumber = series_number if series_number is not None else int(number or 0) + SERIES_NUMBER_OFFSET
    ds0.SeriesNumber = int(ds0.SeriesNumber) + SERIES_KINDS[kind][0]
    description = str(ref.get("SeriesDescription", "") or "")
    ds0.SeriesDescription = sr_series_description(description, scale, "" if not is_map else kind.lower())
    ds0.SeriesDate, ds0.SeriesTime = date, clock
    ds0.ContentDate, ds0.ContentTime = date, clock
    ds0.InstanceCreationDate, ds0.InstanceCreationTime = date, clock
    ds0.ImageType = ["DERIVED", "SECONDARY", SERIES_KINDS[kind][1]]
    ds0.DerivationDescription = (
        f"{SERIES_KINDS[kind][2]}Super-resolution {_scale_text(scale)} per axis of series "
        f"{ref.get('SeriesInstanceUID', '')} by {model_name} version {model_version}. {DISCLAIMER}."
    )[:1024]
    if sr_refs:
        related = Dataset()
        related.StudyInstanceUID = sr_refs[0].StudyInstanceUID
        related.SeriesInstanceUID = sr_refs[0].SeriesInstanceUID
        related.PurposeOfReferenceCodeSequence = []
        ds0.RelatedSeriesSequence = [related]
    ds0.ImageComments = f"{DISCLAIMER}: super-resolved {_scale_text(scale)} by {model_name} {model_version}"[:10240]
    ds0.SoftwareVersions = str(model_version).replace("\\", "/")[:64]  # LO; a backslash would split the value
    ds0.BurnedInAnnotation = "NO"
    source_iop = np.array([float(v) for v in ref.get("ImageOrientationPatient", [0] * 6)])
    valid_ds = all(len(str(v)) <= 16 for v in ref.get("ImageOrientationPatient", []))
    if np.abs(source_iop - np.concatenate([row, col])).max() <= 1e-4 and valid_ds:
        ds0.ImageOrientationPatient = ref.ImageOrientationPatient  # kept exactly as the source wrote it
    else:
        ds0.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row, col])]
    ds0.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
    ds0.SliceThickness = _ds(spacing[2])
    ds0.SpacingBetweenSlices = _ds(spacing[2])
    ds0.Rows, ds0.Columns = int(volume.shape[1]), int(volume.shape[0])
    ds0.SamplesPerPixel = 1
    ds0.PhotometricInterpretation = "MONOCHROME2"
    ds0.BitsAllocated, ds0.BitsStored, ds0.HighBit = 16, 16, 15
    if "RescaleType" in ref:
        ds0.RescaleType = ref.RescaleType
    return ds0


def _slice_depths(sources: Sequence[Dataset], lps: np.ndarray, normal: np.ndarray, n_out: int) -> np.ndarray:
    """Depth along `normal` of each source slice, to find the nearest one of each output slice; without plane
    geometry in the source its slices are spread evenly over the output's depth."""
    if all(s.get("ImagePositionPatient") for s in sources):
        return np.array([np.array([float(v) for v in s.ImagePositionPatient]) @ normal for s in sources])
    first, last = (float((lps @ np.array([0.0, 0.0, z, 1.0]))[:3] @ normal) for z in (0, n_out - 1))
    return np.linspace(first, last, len(sources))


def _nearest(depths: np.ndarray, depth: float) -> int:
    return int(np.abs(depths - depth).argmin())


def _slice_dataset(
    ds0: Dataset, k: int, position: np.ndarray, normal: np.ndarray, source: Dataset, stored: np.ndarray
) -> Dataset:
    """Slice k of the series: the shared header, its own UID, position and pixels (`stored`, (X, Y) 16-bit), and
    a Source Image Sequence item pointing at `source`."""
    ds = Dataset()
    ds.update(ds0)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(position @ normal)
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = [item]
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored.T).tobytes())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def check_output_format(items: Sequence[Mapping[str, Any]], output_format: str) -> None:
    """Refuse, before any inference, an output format the inputs cannot have (one ConfigError line).

    "nifti" suits every input; "dicom" needs every item to be a DICOM series (`series_uid` set by
    `dicom_series_items`), since a derived series copies its patient, study and geometry from the source.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"config id output_format: must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if output_format != "dicom":
        return
    for item in items:
        if not item.get(SERIES_UID_KEY):
            source = item.get("image")
            source = source[0] if isinstance(source, (list, tuple)) else source
            raise ConfigError(
                f"{source}: output_format 'dicom' needs DICOM series inputs and this input is not one; "
                "use output_format 'nifti'"
            )


def source_series_files(meta: Mapping[str, Any]) -> list[Path]:
    """The sorted files of the series a volume was loaded from, found again from its meta data.

    Uses `filename_or_obj` (the first file, or the folder) and `series_uid` (set by `LoadImageOrSeriesd`);
    without a UID the series must be the only one of its folder. Raises ValueError when none matches.
    """
    source = Path(str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, "")))
    folder = source if source.is_dir() else source.parent
    try:
        if not str(source) or not folder.is_dir():
            raise ValueError("not found")
        if source.is_file():
            read_header(source)
        series = list_dicom_series(folder)
    except (ValueError, DatasetError) as err:
        raise ValueError(f"{source}: not a DICOM series input ({err}), so there is no series to derive from") from None
    uid = meta.get(SERIES_UID_KEY)
    if uid:
        series = [s for s in series if s.series_uid == str(uid)]
    elif source.is_file():
        series = [s for s in series if source in s.files]
    if len(series) != 1:
        raise ValueError(f"{folder}: cannot tell which DICOM series {source.name} came from ({len(series)} match)")
    return list(series[0].files)


def write_trust_map_series(
    volume: MetaTensor,
    sr_series: str | os.PathLike,
    target: str | os.PathLike,
    kind: str,
    model_name: str,
    model_version: str,
    scale: int | Sequence[int] = 4,
) -> Path:
    """Write a trust map (C=1, sX, sY, sZ on the SR grid, input units) as a derived series beside the SR series.

    `sr_series`: the SR series folder just written; the map series references it (Related Series Sequence, and
    per slice the SR slice it maps), so a PACS shows the map next to the image it qualifies. Returns `target`.
    """
    sources = source_series_files(dict(volume.meta))
    related = sorted(Path(sr_series).glob("*.dcm"))
    write_derived_series(
        volume, volume.affine, sources, target, model_name, model_version, scale, kind=kind, related_series=related
    )
    return Path(target)
