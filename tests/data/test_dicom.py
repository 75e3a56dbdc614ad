"""DICOM series in and out: listing and checking series, loading exactly one, writing a derived SR series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from dicom_helpers import (
    COL_DIR,
    COL_SPACING,
    COLS,
    NORMAL,
    ORIGIN,
    RAS_FROM_LPS,
    ROW_DIR,
    ROW_SPACING,
    ROWS,
    SLICE_SPACING,
    STUDY_UID,
    corner_box,
    write_series,
)
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from pydicom.uid import MRImageStorage

from bundle.core.errors import ConfigError, DatasetError
from bundle.data.dicom_series import LoadImageOrSeriesd, check_series, dicom_series_items, list_dicom_series
from bundle.data.transforms import SuperResolutionAffined, super_resolution_affine
from bundle.inference import dicom_out
from bundle.inference.dicom_out import (
    check_output_format,
    choose_rescale,
    sr_series_description,
    write_dataset,
    write_derived_series,
)


def expected_ras_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = ROW_DIR * COL_SPACING, COL_DIR * ROW_SPACING, NORMAL * SLICE_SPACING
    lps[:3, 3] = ORIGIN
    return RAS_FROM_LPS @ lps


def load(item: dict) -> MetaTensor:
    return LoadImageOrSeriesd("image")(item)["image"]


# ---------------------------------------------------------------- input


def test_one_series_is_sorted_by_position_and_loads_with_its_geometry(tmp_path):
    values, paths, uid = write_series(tmp_path / "head")
    (series,) = list_dicom_series(tmp_path / "head")
    assert series.series_uid == uid and series.name == "head" and series.series_number == 3
    assert series.files == tuple(paths)  # slice order, not file-name order
    assert [p.name for p in paths] != sorted(p.name for p in paths)
    check_series(series)
    (item,) = dicom_series_items(tmp_path / "head")
    label = f"series 3 'T1 AX' (uid {uid})"
    expected = {"image": [str(p) for p in paths], "name": "head", "series_uid": uid, "series_number": 3}
    assert item == {**expected, "series_label": label}
    img = load(item)
    assert img.shape == (COLS, ROWS, 16)
    np.testing.assert_allclose(img.affine.numpy(), expected_ras_affine(), atol=1e-5)
    np.testing.assert_array_equal(img.numpy(), values.transpose(2, 1, 0))  # (z, row, col) -> (x, y, z)
    assert img.meta["series_name"] == "head" and img.meta["series_uid"] == uid
    via_folder = LoadImaged("image", image_only=True)({"image": str(tmp_path / "head")})["image"]
    np.testing.assert_allclose(via_folder.affine.numpy(), img.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(via_folder.numpy(), img.numpy())


def test_two_series_in_one_folder_give_two_items_each_loaded_alone(tmp_path):
    v1, _, uid1 = write_series(tmp_path / "study", n=16, number=3, prefix="A")
    v2, _, uid2 = write_series(tmp_path / "study", n=8, number=4, description="T2", prefix="B", seed=1)
    items = dicom_series_items(tmp_path / "study")
    assert [(i["name"], i["series_uid"], len(i["image"])) for i in items] == [
        ("study_3", uid1, 16),
        ("study_4", uid2, 8),
    ]
    for item, values in zip(items, (v1, v2), strict=True):
        img = load(item)
        assert img.shape == (COLS, ROWS, len(values))
        assert np.allclose(img.pixdim.numpy(), (COL_SPACING, ROW_SPACING, SLICE_SPACING))
        np.testing.assert_array_equal(img.numpy(), values.transpose(2, 1, 0))


def test_loader_is_a_loadimaged_and_leaves_other_inputs_alone(tmp_path):
    import nibabel as nib

    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), affine), tmp_path / "scan.nii.gz")
    item = {"image": str(tmp_path / "scan.nii.gz"), "name": "scan"}
    loader = LoadImageOrSeriesd("image")
    assert isinstance(loader, LoadImaged)  # MONAI Label finds and adapts LoadImaged instances
    ours, plain = loader(item)["image"], LoadImaged("image", image_only=True)(item)["image"]
    np.testing.assert_array_equal(ours.numpy(), plain.numpy())
    np.testing.assert_array_equal(ours.affine.numpy(), affine)
    assert "series_uid" not in ours.meta
    _, _, uid = write_series(tmp_path / "head", n=4)
    out = LoadImageOrSeriesd("image", image_only=False)(dicom_series_items(tmp_path / "head")[0])
    assert out["image"].shape == (COLS, ROWS, 4) and out["image_meta_dict"]["series_uid"] == uid


def test_series_without_plane_geometry_loads_in_instance_order_and_writes(tmp_path):
    import itk

    values = (np.random.default_rng(0).random((6, 8, 8)) * 1000).astype(np.int16)  # (z, y, x)
    img = itk.image_from_array(values)
    img.SetSpacing([2.0, 2.0, 3.0])
    folder = tmp_path / "series"
    folder.mkdir()
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New()  # secondary capture, no IPP
    writer.SetInput(img)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.SetFileNames([str(folder / f"IM{k:03d}.dcm") for k in range(1, 7)])
    writer.Update()
    (item,) = dicom_series_items(folder)
    assert [p.rsplit("/", 1)[1] for p in item["image"]] == [f"IM{k:03d}.dcm" for k in range(1, 7)]
    loaded = load(item)
    np.testing.assert_array_equal(loaded.numpy(), values.transpose(2, 1, 0))
    sr, affine = sr_like(loaded)
    files = write_derived_series(sr, affine, item["image"], tmp_path / "out", "m", "1", 4)
    assert len(files) == 24 and pydicom.dcmread(files[-1]).SourceImageSequence[0].ReferencedSOPInstanceUID == (
        pydicom.dcmread(item["image"][-1]).SOPInstanceUID
    )


def one_line_error(folder) -> str:
    with pytest.raises(DatasetError) as info:
        dicom_series_items(folder)
    text = str(info.value)
    assert "\n" not in text and info.value.code == f"error: {text}"
    assert text.startswith(f"{folder}: series 3 'T1 AX' (uid ")
    return text


def test_missing_slice_names_series_and_gap(tmp_path):
    _, paths, _ = write_series(tmp_path / "head")
    paths[7].unlink()  # 8th slice of 16
    text = one_line_error(tmp_path / "head")
    assert "slice gap of 5 mm between slices 7 and 8" in text
    assert f"({paths[6].name}, {paths[8].name})" in text
    assert text.endswith("expected 2.5 mm: a slice is missing")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("garbage", "unreadable file {name}: not a"),
        ("truncated", "unreadable file {name}: truncated: pixel data needs 240 bytes"),
        ("moved", "gap of 3 mm between slices 5 and 6 ({prev}, {name}), expected 2.5 mm: slices are unevenly spaced"),
        ("rotated", "orientations differ"),
        ("no_position", "{name}: has no ImagePositionPatient: not a slice of a 3D volume"),
    ],
)
def test_damaged_series_is_one_error_naming_series_and_file(tmp_path, damage, message):
    _, paths, _ = write_series(tmp_path / "head")
    target = paths[5]
    if damage == "garbage":
        target.write_bytes(b"this is not a DICOM file" * 10)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-100])
    else:
        ds = pydicom.dcmread(target)
        if damage == "moved":  # 0.5 mm off: 20% of the spacing
            ds.ImagePositionPatient = [float(v) for v in ORIGIN + (5 * SLICE_SPACING + 0.5) * NORMAL]
        elif damage == "no_position":
            del ds.ImagePositionPatient
        else:
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        write_dataset(ds, target)
    text = one_line_error(tmp_path / "head")
    assert message.format(name=target.name, prev=paths[4].name) in text, text


def test_tolerates_rounding_of_positions(tmp_path):
    _, paths, _ = write_series(tmp_path / "head")
    ds = pydicom.dcmread(paths[3])  # 0.01 mm = 0.4% of the spacing, as scanners round positions
    ds.ImagePositionPatient = [float(v) for v in ORIGIN + (3 * SLICE_SPACING + 0.01) * NORMAL]
    write_dataset(ds, paths[3])
    assert len(dicom_series_items(tmp_path / "head")) == 1


# ---------------------------------------------------------------- output


@pytest.fixture
def source(tmp_path):
    values, paths, uid = write_series(tmp_path / "in" / "head")
    (item,) = dicom_series_items(tmp_path / "in" / "head")
    return load(item), paths, uid


def sr_like(lr: MetaTensor, gain: float = 1.0, offset: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """A (X, Y, Z) volume 4x finer per axis, non-integer values, and its affine over the same extent."""
    sr = F.interpolate(lr.as_tensor()[None, None].double(), scale_factor=4, mode="trilinear")[0, 0]
    return sr * gain + offset, super_resolution_affine(lr.affine, (4, 4, 4))


def test_derived_series_round_trips_geometry_values_and_identity(source, tmp_path):
    lr, src_paths, src_uid = source
    sr, affine = sr_like(lr)
    files = write_derived_series(sr, affine, src_paths, tmp_path / "out", "RRDB-GAN x4", "0.1.0", 4)

    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 65)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f.name for f in files]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    back = LoadImaged("image", image_only=True)({"image": str(tmp_path / "out")})["image"]
    assert back.shape == (48, 40, 64)
    np.testing.assert_allclose(back.affine.numpy(), affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(back.pixdim.numpy(), np.array([COL_SPACING, ROW_SPACING, SLICE_SPACING]) / 4)
    np.testing.assert_allclose(corner_box(back.affine, back.shape), corner_box(lr.affine, lr.shape), atol=1e-4)
    step = float(pydicom.dcmread(files[0]).RescaleSlope)
    assert step == 1.0  # signed source, range fits: stored values are the real values
    assert np.abs(back.numpy() - sr.numpy()).max() <= step / 2 + 1e-4

    source_ds = pydicom.dcmread(src_paths[0])
    outs = [pydicom.dcmread(f) for f in files]
    first, last = outs[0], outs[-1]
    offset = (-3 / 8) * (COL_SPACING * ROW_DIR + ROW_SPACING * COL_DIR + SLICE_SPACING * NORMAL)
    lr_last = ORIGIN + 11 * COL_SPACING * ROW_DIR + 9 * ROW_SPACING * COL_DIR + 15 * SLICE_SPACING * NORMAL
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], ORIGIN + offset, atol=1e-4)
    last_centre = np.array([float(v) for v in last.ImagePositionPatient])
    last_centre += 47 * COL_SPACING / 4 * ROW_DIR + 39 * ROW_SPACING / 4 * COL_DIR
    np.testing.assert_allclose(last_centre, lr_last - offset, atol=1e-4)
    assert [d.InstanceNumber for d in outs] == list(range(1, 65))
    # kept (re-encoded as valid decimal strings: the test source writes 18-20 characters, DS allows 16)
    np.testing.assert_allclose(
        [float(v) for v in first.ImageOrientationPatient], [float(v) for v in source_ds.ImageOrientationPatient]
    )
    assert (first.Rows, first.Columns) == (40, 48)
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [ROW_SPACING / 4, COL_SPACING / 4])
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == SLICE_SPACING / 4

    assert {d.SeriesInstanceUID for d in outs} == {first.SeriesInstanceUID} and first.SeriesInstanceUID != src_uid
    sops = {d.SOPInstanceUID for d in outs}
    assert len(sops) == 64 and not sops & {pydicom.dcmread(p).SOPInstanceUID for p in src_paths}
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert (first.PatientID, first.PatientName, first.StudyInstanceUID) == ("P001", "Test^Patient", STUDY_UID)
    assert first.FrameOfReferenceUID == source_ds.FrameOfReferenceUID
    assert first.SOPClassUID == MRImageStorage and first.Modality == "MR"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]  # value 3 is required for MR images
    assert first.SeriesNumber == 1003
    assert first.SeriesDescription == "T1 AX SR x4 - NOT FOR DIAGNOSTIC USE"
    assert "x4" in first.DerivationDescription and "RRDB-GAN x4 version 0.1.0" in first.DerivationDescription
    assert first.SoftwareVersions == "0.1.0"
    assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
    np.testing.assert_allclose(first.pixel_array.T * step + float(first.RescaleIntercept), sr[:, :, 0], atol=0.5)


@pytest.mark.parametrize("signed", [False, True])
def test_a_source_rescale_slope_of_a_tenth_keeps_tenths_in_the_sr(tmp_path, signed):
    """Issue 36, item 5: the SR was stored as whole numbers (slope 1), losing the input's precision."""
    _, paths, _ = write_series(tmp_path / "in" / "head", signed=signed, rescale=(0.1, 0.0))
    lr = load(dicom_series_items(tmp_path / "in" / "head")[0])
    assert float(lr.max()) % 1 != 0  # the input itself holds tenths
    sr, affine = sr_like(lr, gain=1.0, offset=-12.34)  # fractional values, some below zero (no clamp)
    write_derived_series(sr, affine, paths, tmp_path / "out", "m", "1", 4)
    ds = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    assert float(ds.RescaleSlope) <= 0.1
    back = LoadImaged("image", image_only=True)({"image": str(tmp_path / "out")})["image"]
    assert np.abs(back.numpy() - sr.numpy()).max() <= 0.1 / 2 + 1e-4  # ITK reads float32


@pytest.mark.parametrize("rescale, signed", [((0.1, 0.0), False), ((0.3, -7.0), True), ((1.0, 0.0), True)])
def test_a_nonnegative_sr_is_written_without_negative_values(tmp_path, rescale, signed):
    """An SR clamped at zero (nonnegative) must not read back below zero, whatever rescale is chosen."""
    _, paths, _ = write_series(tmp_path / "in" / "head", signed=signed, rescale=rescale)
    lr = load(dicom_series_items(tmp_path / "in" / "head")[0])
    sr, affine = sr_like(lr, gain=37.3, offset=0.0)
    sr = sr.clamp_min(0)
    sr[..., :3] = 0.0  # exact zeros next to values far larger: a spread rescale
    write_derived_series(sr, affine, paths, tmp_path / "out", "m", "1", 4)
    back = LoadImaged("image", image_only=True)({"image": str(tmp_path / "out")})["image"]
    ds = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    assert float(back.min()) >= 0
    error, step = np.abs(back.numpy() - sr.numpy()), float(ds.RescaleSlope)
    assert error.max() <= step + 5e-4  # a zero off the stored grid reads back as its first value above 0
    assert error[sr.numpy() >= step].max() <= step / 2 + 5e-4  # ITK reads float32


@pytest.mark.parametrize("signed", [True, False])
def test_wide_or_negative_range_uses_rescale_that_itk_applies(tmp_path, signed):
    _, paths, _ = write_series(tmp_path / "in" / "head", signed=signed)
    lr = load(dicom_series_items(tmp_path / "in" / "head")[0])
    sr, affine = sr_like(lr, gain=300.0 if signed else 100.0, offset=-50.0)  # beyond int16 and uint16
    write_derived_series(sr, affine, paths, tmp_path / "out", "m", "1", 4)
    ds = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert ds.PixelRepresentation == int(signed) and ds.BitsStored == 16
    assert slope != 1.0 or intercept != 0.0
    back = LoadImaged("image", image_only=True)({"image": str(tmp_path / "out")})["image"]
    assert np.abs(back.numpy() - sr.numpy()).max() <= slope / 2 * 1.001


def test_choose_rescale_references():
    assert choose_rescale(-3.2, 1200.7, signed=True) == (1.0, 0.0, True)
    # values that fit 16 bits as they are keep the identity: a negative one switches to signed storage
    assert choose_rescale(-3.2, 1200.7, signed=False) == (1.0, 0.0, True)
    assert choose_rescale(0.0, 60000.0, signed=True) == (1.0, 0.0, False)
    slope, intercept, signed = choose_rescale(-3.2, 1200.7, signed=False, prefer_identity=False)  # a trust map
    assert intercept == pytest.approx(-3.2) and slope == pytest.approx(1203.9 / 65535, rel=1e-6) and not signed
    slope, intercept, signed = choose_rescale(0.0, 1e6, signed=True)
    assert slope == pytest.approx(1e6 / 65535, rel=1e-6) and intercept == pytest.approx(32768 * slope) and signed
    assert choose_rescale(10.0, 100.0, signed=False, source_slope=0.5, source_intercept=10.0) == (0.5, 10.0, False)
    # below the source's intercept: its step kept with signed storage (was the identity: a step of 1, not 0.5)
    assert choose_rescale(0.0, 100.0, signed=False, source_slope=0.5, source_intercept=10.0) == (0.5, 10.0, True)
    # a source step of 0.1 is kept; a range it cannot hold in 16 bits is spread, never the coarser identity
    assert choose_rescale(-0.7, 900.3, signed=False, source_slope=0.1) == (0.1, 0.0, True)
    slope, _, _ = choose_rescale(-3000.0, 4000.0, signed=False, source_slope=0.1)
    assert slope == pytest.approx(7000 / 65535, rel=1e-6)


def test_series_description_fits_lo_and_keeps_disclaimer():
    assert sr_series_description("T1 AX", (4, 4, 2)) == "T1 AX SR x4x4x2 - NOT FOR DIAGNOSTIC USE"
    long = sr_series_description("X" * 64, 4)
    assert len(long) == 64 and long.endswith(" SR x4 - NOT FOR DIAGNOSTIC USE")


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_nothing_half_written(source, tmp_path, monkeypatch, existing):
    lr, paths, _ = source
    sr, affine = sr_like(lr)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "previous.dcm").write_bytes(b"old")
    calls = []

    def failing(ds, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        write_dataset(ds, path)

    monkeypatch.setattr(dicom_out, "write_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        write_derived_series(sr, affine, paths, out, "m", "1", 4)
    if existing:
        assert [p.name for p in out.iterdir()] == ["previous.dcm"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    files = write_derived_series(sr, affine, paths, out, "m", "1", 4)  # replaces the previous result whole
    assert sorted(out.iterdir()) == files and len(files) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_geometry_errors(source, tmp_path):
    lr, paths, _ = source
    sr, affine = sr_like(lr)
    sheared = affine.clone()
    sheared[0, 1] += 0.1
    with pytest.raises(ValueError, match="not orthogonal"):
        write_derived_series(sr, sheared, paths, tmp_path / "out", "m", "1", 4)
    with pytest.raises(ValueError, match="expected a"):
        write_derived_series(sr[None].repeat(2, 1, 1, 1), affine, paths, tmp_path / "out", "m", "1", 4)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- pipeline


def test_writer_after_collation_writes_each_series_as_dicom_and_nifti(tmp_path):
    from bundle.inference.output_names import plan_outputs
    from bundle.inference.writer import SaveSROutputsd

    write_series(tmp_path / "study", n=16, number=3, prefix="A")
    write_series(tmp_path / "study", n=8, number=4, description="T2", prefix="B", seed=1)
    items = plan_outputs(dicom_series_items(tmp_path / "study"), tmp_path / "out")
    pre = Compose([LoadImageOrSeriesd("image"), EnsureChannelFirstd("image")])
    writers = {
        fmt: SaveSROutputsd(tmp_path / fmt, fmt, model_name="m", model_version="0.1.0") for fmt in ("dicom", "nifti")
    }
    lr_affines = []
    for batch in DataLoader(Dataset(items, pre), batch_size=1):  # collated and split as the evaluator does
        (data,) = decollate_batch(batch)
        data["pred"] = F.interpolate(data["image"].as_tensor()[None], scale_factor=4, mode="trilinear")[0]
        data = SuperResolutionAffined("pred", ref_key="image", scale=4)(data)
        for writer in writers.values():
            writer(dict(data))
        lr_affines.append(data["image"].affine)
    back = LoadImaged("image", image_only=True)({"image": str(tmp_path / "dicom" / "study_4_sr")})["image"]
    assert back.shape == (48, 40, 32)
    expected = super_resolution_affine(lr_affines[1], (4, 4, 4))
    np.testing.assert_allclose(back.affine.numpy(), expected.numpy(), atol=1e-4)
    for name, slices, description in (("study_3", 64, "T1 AX"), ("study_4", 32, "T2")):
        files = sorted((tmp_path / "dicom" / f"{name}_sr").iterdir())
        assert len(files) == slices
        assert pydicom.dcmread(files[0]).SeriesDescription.startswith(f"{description} SR x4")
        assert (tmp_path / "nifti" / f"{name}_sr.nii.gz").is_file()


def test_dicom_output_refuses_a_source_that_is_not_a_series(tmp_path):
    from bundle.inference.writer import SaveSROutputsd

    pred = MetaTensor(torch.rand(1, 8, 8, 8), meta={"filename_or_obj": str(tmp_path / "scan.nii.gz")})
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit, match="scan.nii.gz"):  # OutputError: one line
        SaveSROutputsd(tmp_path / "out", "dicom")({"pred": pred, "output_name": "scan", "source": "scan.nii.gz"})


def test_check_output_format(tmp_path):
    dicom_item = {"image": ["/d/IM1.dcm", "/d/IM2.dcm"], "name": "d", "series_uid": "1.2.3"}
    nifti_item = {"image": "/in/scan.nii.gz", "name": "scan"}
    check_output_format([dicom_item, nifti_item], "nifti")
    check_output_format([dicom_item], "dicom")
    with pytest.raises(ConfigError, match=r"^/in/scan.nii.gz: output_format 'dicom' needs DICOM series inputs"):
        check_output_format([dicom_item, nifti_item], "dicom")
    with pytest.raises(ConfigError, match="config id output_format: must be one of nifti, dicom, got 'png'"):
        check_output_format([nifti_item], "png")


def test_the_log_names_the_series_folder_and_series_not_a_path_that_does_not_exist(tmp_path, caplog):
    """Issue 36, item 5: a series in folder `series` was logged as `.../series/series`."""
    import logging

    from bundle.inference.output_names import plan_outputs
    from bundle.inference.writer import SaveSROutputsd

    write_series(tmp_path / "series", n=8, number=3)
    (item,) = plan_outputs(dicom_series_items(tmp_path / "series"), tmp_path / "out")
    assert not (tmp_path / "series" / "series").exists() and item["source"].endswith("series/series")
    (batch,) = DataLoader(Dataset([item], Compose([LoadImageOrSeriesd("image"), EnsureChannelFirstd("image")])))
    (data,) = decollate_batch(batch)
    data["pred"] = F.interpolate(data["image"].as_tensor()[None], scale_factor=4, mode="trilinear")[0]
    data = SuperResolutionAffined("pred", ref_key="image", scale=4)(data)
    with caplog.at_level(logging.INFO, logger="bundle.inference.writer"):
        SaveSROutputsd(tmp_path / "out", "dicom", model_name="m", model_version="0.1.0")(data)
    (line,) = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert line.startswith(f"{tmp_path / 'series'}, series 3 'T1 AX' (uid ") and "series/series" not in line
    assert line.endswith(f" -> {tmp_path / 'out' / 'series_sr'}") and (tmp_path / "out" / "series_sr").is_dir()


def test_dicom_series_choice_keeps_the_named_series_of_each_folder(tmp_path):
    from bundle.data.dicom_series import choose_series_items

    write_series(tmp_path / "p1", n=8, number=3, prefix="A")
    _, _, uid4 = write_series(tmp_path / "p1", n=6, number=4, description="T2", prefix="B", seed=1)
    write_series(tmp_path / "p2", n=6, number=4, description="T2", seed=2)
    items = dicom_series_items(tmp_path / "p1") + dicom_series_items(tmp_path / "p2") + [{"image": "x.nii.gz"}]
    assert [i.get("name") for i in choose_series_items(items, 4, tmp_path)] == ["p1_4", "p2", None]
    assert [i.get("name") for i in choose_series_items(items, uid4, tmp_path)] == ["p1_4", None]
    assert choose_series_items(items, None, tmp_path) == items
    with pytest.raises(ConfigError, match=r"config id dicom_series: 9 names no DICOM series under .*p1: series 3"):
        choose_series_items(items, 9, tmp_path)
    assert [i["name"] for i in dicom_series_items(tmp_path / "p1", "4")] == ["p1_4"]  # listed and checked alone
    write_series(tmp_path / "p1", n=5, number=4, description="T2 again", prefix="C", seed=3)
    with pytest.raises(ConfigError, match="names 2 DICOM series of .*; use the SeriesInstanceUID"):
        dicom_series_items(tmp_path / "p1", 4)
