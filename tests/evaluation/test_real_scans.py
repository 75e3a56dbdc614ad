"""bundle/evaluation/real_scans.py (scripts/make_real_scans.py): real scans as an MSD test set, crops that keep their
place in space, and the packaged scan read from its cached archive and checked."""

import nibabel as nib
import numpy as np
import pytest

from bundle.evaluation import real_scans as mrs


def test_real_scans_are_an_msd_test_set_of_two_real_volumes(tmp_path):
    from bundle.data.datalist import msd_datalist

    out = mrs.make_real_scans(output_dir=str(tmp_path / "real"), scans="T1_nibabel,EPI_nibabel")  # offline ones
    items = msd_datalist(out, section="test")
    shapes = sorted(tuple(nib.load(i["image"]).shape) for i in items)
    assert shapes == [(33, 41, 25), (128, 96, 24)]  # the T1 and the first EPI volume, as shipped
    assert not (tmp_path / "real.partial").exists()


def test_a_cropped_real_scan_keeps_its_place_in_space(tmp_path, monkeypatch):
    monkeypatch.setitem(mrs.SCANS, "T1_crop40", ("anatomical.nii", None, 40.0))  # 2 mm voxels: at most 20 each
    out = mrs.make_real_scans(output_dir=str(tmp_path / "real"), scans="T1_nibabel,T1_crop40")
    full = nib.load(f"{out}/imagesTs/T1_nibabel.nii.gz")
    crop = nib.load(f"{out}/imagesTs/T1_crop40.nii.gz")
    arr = full.get_fdata()
    box = mrs.foreground_box(arr, full.header.get_zooms(), 40.0)
    assert crop.shape == tuple(min(20, s.stop - s.start) for s in box) and max(crop.shape) == 20
    np.testing.assert_array_equal(crop.get_fdata(), arr[box])
    start = np.array([s.start for s in box] + [1])
    np.testing.assert_allclose(crop.affine[:, 3], full.affine @ start)  # the same voxels at the same place


def test_packaged_scan_is_read_from_the_cached_archive_and_checked(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([1.0, 1.0, 1.0, 1.0]))
    payload = img.to_bytes()
    cache = tmp_path / "wheels"
    cache.mkdir()
    with tarfile.open(cache / "fakepkg-1.0.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("fakepkg-1.0/data/scan.nii")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached archive must not be downloaded again")

    monkeypatch.setattr(mrs.subprocess, "run", no_network)
    good = mrs.PackagedFile("fakepkg", "1.0", "fakepkg-1.0/data/scan.nii", hashlib.sha256(payload).hexdigest(), "MIT")
    np.testing.assert_array_equal(mrs.load_scan(good, cache).get_fdata(), img.get_fdata())
    bad = mrs.PackagedFile("fakepkg", "1.0", "fakepkg-1.0/data/scan.nii", "0" * 64, "MIT")
    with pytest.raises(SystemExit, match="SHA-256"):
        mrs.load_scan(bad, cache)
    with pytest.raises(SystemExit, match="unknown scan"):
        mrs.select_scans("T1_nibabel,nope")
    assert mrs.select_scans("demo") == ["T1_nibabel", "EPI_nibabel", "T1_pycortex_S1_crop96"]
    assert mrs.select_scans("all") == ["T1_nibabel", "EPI_nibabel", "T1_pycortex_S1"]  # as shipped: no crops
