"""The tests' DICOM series writers (a given volume, or random values on an oblique grid) and geometry helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from bundle.inference.dicom_out import write_dataset


def mr_image_dataset():
    """An empty MR image dataset with a new SOP instance UID and its file meta (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    pixel_spacing=(1.0, 1.0),
    slice_spacing: float = 4.0,
    description="T2 AX",
    number=3,
) -> list[Path]:
    """An axial MR series of `volume` (X, Y, Z; X along the rows' direction), slices `slice_spacing` mm apart, signed
    16-bit, one file per slice in slice order; returns the files."""
    folder.mkdir()
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(volume.shape[2]):
        ds = mr_image_dataset()
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = "Test^Patient", "P1", study, frame
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription, ds.Modality = uid, number, description, "MR"
        ds.InstanceNumber, ds.ImageType = k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, float(slice_spacing) * k]
        ds.ImageOrientationPatient = [1.0, 0, 0, 0, 1.0, 0]
        ds.PixelSpacing, ds.SliceThickness = [float(s) for s in pixel_spacing], float(slice_spacing)
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = *volume.shape[1::-1], 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).astype("<i2").tobytes()
        ds.save_as(folder / f"IM{k:03d}.dcm", enforce_file_format=True)
        files.append(folder / f"IM{k:03d}.dcm")
    return files


ROW_SPACING, COL_SPACING, SLICE_SPACING = 1.2, 1.0, 2.5  # PixelSpacing = (between rows, between columns)
ROWS, COLS = 10, 12
A, B = np.deg2rad(20.0), 0.3
ROW_DIR = np.array([np.cos(A), np.sin(A), 0.0])  # oblique: rotated about z, then tilted
COL_DIR = np.array([-np.sin(A) * np.cos(B), np.cos(A) * np.cos(B), -np.sin(B)])
NORMAL = np.cross(ROW_DIR, COL_DIR)
ORIGIN = np.array([-10.0, 20.0, 5.0])  # LPS mm, first slice
STUDY_UID = generate_uid()
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_series(folder, n=16, number=3, description="T1 AX", prefix="IM", seed=0, signed=True, rescale=None):
    """A single-frame MR series written with pydicom; file names shuffled so listing must sort by position.
    rescale: (RescaleSlope, RescaleIntercept) written to every slice (none when None).

    Returns the voxel values (n, ROWS, COLS), the files in slice order and the series UID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    values = rng.integers(0 if not signed else -100, 1000, size=(n, ROWS, COLS))
    values = values.astype(np.int16 if signed else np.uint16)
    uid, frame_uid = generate_uid(), generate_uid()
    order = rng.permutation(n)
    paths = []
    for k in range(n):
        ds = mr_image_dataset()
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "Test^Patient", "P001", STUDY_UID
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, number, description
        ds.Modality, ds.FrameOfReferenceUID, ds.InstanceNumber = "MR", frame_uid, k + 1
        ds.ScanningSequence, ds.SequenceVariant, ds.EchoTime = "SE", "NONE", 12.0
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + k * SLICE_SPACING * NORMAL]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([ROW_DIR, COL_DIR])]
        ds.PixelSpacing, ds.SliceThickness = [ROW_SPACING, COL_SPACING], SLICE_SPACING
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.add_new(0x7FE00010, "OW", values[k].astype("<i2" if signed else "<u2").tobytes())
        path = folder / f"{prefix}{order[k]:03d}.dcm"
        write_dataset(ds, path)
        paths.append(path)
    return values, paths, uid


def corner_box(affine, shape) -> np.ndarray:
    """(2, 3) min/max world coordinates of the outer voxel corners."""
    grid = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape], indexing="ij")).reshape(3, -1)
    world = (np.asarray(affine)[:3, :3] @ grid).T + np.asarray(affine)[:3, 3]
    return np.stack([world.min(0), world.max(0)])
