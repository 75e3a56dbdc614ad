"""The tests' DICOM series writer: a volume as a single-frame MR series written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
    from pydicom.uid import generate_uid

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
