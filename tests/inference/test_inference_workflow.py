"""Inference through the bundle runner (in-process): geometry, formats, bad inputs, channels, DICOM out and output
names."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import infer, lr_volume, ok


def test_inference_shape_affine_and_sliding_window_agreement(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    affine = lr_volume(inp / "scan.nii.gz", shape=(18, 20, 9))
    ok(infer(trained, inp, tmp_path / "whole", "--sliding_window", "False"))
    ok(infer(trained, inp, tmp_path / "sw", "--sliding_window", "True", "--roi_size", "[12,12,8]"))
    whole = nib.load(tmp_path / "whole" / "scan_sr.nii.gz")
    sw = nib.load(tmp_path / "sw" / "scan_sr.nii.gz")
    assert whole.shape == (72, 80, 36)
    assert np.allclose(whole.header.get_zooms(), (0.5, 0.75, 1.0))
    expected_origin = affine[:3, 3] + np.array([2.0, 3.0, 4.0]) * (1 / 4 - 1) / 2
    assert np.allclose(whole.affine[:3, 3], expected_origin)
    a, b = whole.get_fdata(), sw.get_fdata()
    # windows see less context at their borders; blended, the volumes agree closely on average
    assert np.abs(a - b).mean() < 0.02 * (a.max() - a.min())
    assert 0 <= a.min() and a.max() < 150  # intensities back in the input's range


def test_inference_reads_nrrd_and_dicom_series(trained, tmp_path):
    import itk

    inp = tmp_path / "in"
    inp.mkdir()
    arr = (np.random.default_rng(0).random((6, 8, 8)) * 1000).astype(np.int16)  # itk order: z, y, x
    img = itk.image_from_array(arr)
    img.SetSpacing([2.0, 2.0, 3.0])
    itk.imwrite(img, str(inp / "vol.nrrd"))
    series = inp / "series"
    series.mkdir()
    names = itk.NumericSeriesFileNames.New()
    names.SetSeriesFormat(str(series / "IM%03d.dcm"))
    names.SetStartIndex(1)
    names.SetEndIndex(arr.shape[0])
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New()
    writer.SetInput(img)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.SetFileNames(names.GetFileNames())
    writer.Update()
    ok(infer(trained, inp, tmp_path / "out", "--sliding_window", "False"))
    assert nib.load(tmp_path / "out" / "vol_sr.nii.gz").shape == (32, 32, 24)
    assert nib.load(tmp_path / "out" / "series_sr.nii.gz").shape == (32, 32, 24)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("2d", "expected a 3D volume|smaller than required"),
        ("nan", "NaN"),
        ("empty", "cannot be read as an image"),
        ("text", "cannot be read as an image"),
        ("small", "smaller than required"),
    ],
)
def test_bad_input_one_clear_error_and_no_output(trained, tmp_path, kind, message):
    inp = tmp_path / "in"
    inp.mkdir()
    lr_volume(inp / "good.nii.gz")
    bad = inp / "bad.nii.gz"
    if kind == "2d":
        nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), bad)
    elif kind == "nan":
        arr = np.random.rand(8, 8, 8).astype(np.float32)
        arr[2, 2, 2] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), bad)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("this is not an image")
    else:
        nib.save(nib.Nifti1Image(np.random.rand(3, 3, 3).astype(np.float32), np.eye(4)), bad)
    proc = infer(trained, inp, tmp_path / "out")
    assert proc.returncode != 0
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "bad.nii.gz" in last, last
    import re

    assert re.search(message, last), last
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_inference_every_channel_of_a_multichannel_scan(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    arr = np.random.default_rng(0).random((10, 10, 6, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), inp / "multi.nii.gz")
    ok(infer(trained, inp, tmp_path / "all", "--modality_channel", "all", "--sliding_window", "False"))
    ok(infer(trained, inp, tmp_path / "one", "--modality_channel", "2", "--sliding_window", "False"))
    every = nib.load(tmp_path / "all" / "multi_sr.nii.gz").get_fdata()
    one = nib.load(tmp_path / "one" / "multi_sr.nii.gz").get_fdata()
    assert every.shape == (40, 40, 24, 3) and one.shape == (40, 40, 24)
    assert np.allclose(every[..., 2], one, atol=1e-4)  # channel-wise: channel 2 alone gives the same result


def test_dicom_series_in_derived_dicom_series_out(trained, tmp_path):
    """A series written with pydicom -> inference with output_format dicom -> read back with ITK and pydicom."""
    import pydicom
    from dicom_helpers import corner_box, write_series

    from bundle.data.dicom_series import LoadImageOrSeriesd

    inp = tmp_path / "in"
    _, source_files, source_uid = write_series(inp / "study", n=8)
    ok(infer(trained, inp, tmp_path / "out", "--output_format", "dicom", "--sliding_window", "False"))
    out = tmp_path / "out" / "study_sr"
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 8 * 4  # one file per output slice
    lr = LoadImageOrSeriesd("image")({"image": [str(p) for p in source_files], "series_uid": source_uid})["image"]
    sr = LoadImageOrSeriesd("image")({"image": str(out)})["image"]
    assert tuple(sr.shape[-3:]) == tuple(4 * n for n in lr.shape[-3:])
    assert np.allclose(np.linalg.norm(sr.affine[:3, :3], axis=0), np.linalg.norm(lr.affine[:3, :3], axis=0) / 4)
    directions = lambda a: np.asarray(a)[:3, :3] / np.linalg.norm(np.asarray(a)[:3, :3], axis=0)  # noqa: E731
    assert np.allclose(directions(sr.affine), directions(lr.affine), atol=1e-5)  # same orientation
    assert np.allclose(corner_box(sr.affine, sr.shape[-3:]), corner_box(lr.affine, lr.shape[-3:]), atol=1e-3)
    first, source = pydicom.dcmread(files[0]), pydicom.dcmread(source_files[0])
    assert first.PatientID == source.PatientID and first.StudyInstanceUID == source.StudyInstanceUID
    assert first.SeriesInstanceUID != source.SeriesInstanceUID and first.SOPInstanceUID != source.SOPInstanceUID
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "NOT FOR DIAGNOSTIC USE" in first.SeriesDescription
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == len(files)
    summary = json.loads((tmp_path / "out" / "study_sr.json").read_text())
    assert summary["outputs"]["sr"].endswith("study_sr")


def test_outputs_in_the_input_folder_are_never_taken_as_inputs_nor_overwrite_an_input(trained, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    lr_volume(folder / "case.nii.gz", shape=(10, 9, 6))
    lr_volume(folder / "case_sr.nii.gz", shape=(8, 8, 6), seed=1)  # a real input that happens to end in _sr
    foreign = (folder / "case_sr.nii.gz").read_bytes()
    proc = infer(trained, folder, folder)
    assert proc.returncode == 1 and "case_sr.nii.gz: exists and is not an earlier output" in proc.stderr
    assert (folder / "case_sr.nii.gz").read_bytes() == foreign  # the foreign file is untouched
    (folder / "case_sr.nii.gz").unlink()
    ok(infer(trained, folder, folder))
    first = sorted(p.name for p in folder.iterdir())
    assert "case_sr.nii.gz" in first and "case_sr_sr.nii.gz" not in first
    ok(infer(trained, folder, folder))  # a rerun replaces its own outputs and does not super-resolve them
    assert sorted(p.name for p in folder.iterdir()) == first


def test_dicom_series_picks_one_series_of_a_folder_by_number_or_uid(trained, tmp_path):
    """Issue 36, item 11: config id dicom_series (the same id as run adapting's) picks one series of a folder."""
    import pydicom
    from dicom_helpers import write_dicom_series

    study = tmp_path / "in" / "study"
    study.mkdir(parents=True)
    for number, description, depth in ((3, "T1 AX", 8), (4, "T2", 6)):
        volume = (np.random.default_rng(number).random((8, 8, depth)) * 1000).astype(np.int16)
        for f in write_dicom_series(tmp_path / f"s{number}", volume, description=description, number=number):
            f.rename(study / f"S{number}_{f.name}")
    inp, uid4 = tmp_path / "in", str(pydicom.dcmread(next(study.glob("S4_*"))).SeriesInstanceUID)
    ok(infer(trained, inp, tmp_path / "all", "--sliding_window", "False"))
    assert sorted(p.name for p in (tmp_path / "all").glob("*_sr.nii.gz")) == ["study_3_sr.nii.gz", "study_4_sr.nii.gz"]
    for choice in ("4", uid4):
        ok(infer(trained, inp, tmp_path / choice[:8], "--sliding_window", "False", "--dicom_series", choice))
        assert [p.name for p in (tmp_path / choice[:8]).glob("*_sr.nii.gz")] == ["study_4_sr.nii.gz"]
    proc = infer(trained, inp, tmp_path / "none", "--dicom_series", "7")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config id dicom_series: 7 names no DICOM series under")
    assert "series 3 'T1 AX' (uid" in last and "series 4 'T2' (uid " + uid4 in last
    assert not list((tmp_path / "none").glob("*_sr*")) if (tmp_path / "none").exists() else True
