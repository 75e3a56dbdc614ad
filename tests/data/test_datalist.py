import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from bundle.core.errors import DatasetError
from bundle.data import datalist as data_module
from bundle.data.datalist import download_msd_task01, inference_datalist, msd_datalist, split_datalist


def test_demo_dataset_has_msd_layout(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    train = load_decathlon_datalist(str(tiny_dataset / "dataset.json"), data_list_key="training")
    test = load_decathlon_datalist(str(tiny_dataset / "dataset.json"), data_list_key="test")
    assert len(train) == 3 and len(test) == 1
    img = nib.load(train[0]["image"])
    assert img.shape == (32, 32, 24, 4)
    assert nib.load(train[0]["label"]).shape == (32, 32, 24)
    arr = img.get_fdata()
    assert np.isfinite(arr).all() and arr.max() > 0
    assert set(np.unique(nib.load(train[0]["label"]).get_fdata())) <= {0, 1, 2, 3}


def test_demo_dataset_is_deterministic(tmp_path):
    from bundle.data.demo_data import make_demo_data

    a = make_demo_data(str(tmp_path / "a"), num_train=1, num_test=0, shape=(16, 16, 16), seed=5)
    b = make_demo_data(str(tmp_path / "b"), num_train=1, num_test=0, shape=(16, 16, 16), seed=5)
    c = make_demo_data(str(tmp_path / "c"), num_train=1, num_test=0, shape=(16, 16, 16), seed=6)
    read = lambda root: nib.load(f"{root}/imagesTr/BRATS_001.nii.gz").get_fdata()  # noqa: E731
    assert np.array_equal(read(a), read(b)) and not np.array_equal(read(a), read(c))
    assert not list(tmp_path.glob("*.partial"))


def test_demo_dataset_is_reused_only_when_it_is_the_one_asked_for(tmp_path, capsys):
    from bundle.data.demo_data import make_demo_data

    out = make_demo_data(str(tmp_path / "d"), num_train=1, num_test=0, shape=(16, 16, 16), seed=5)
    written = (tmp_path / "d" / "imagesTr" / "BRATS_001.nii.gz").stat().st_mtime_ns
    assert make_demo_data(out, num_train=1, num_test=0, shape=(16, 16, 16), seed=5) == out
    assert "already present" in capsys.readouterr().out
    assert (tmp_path / "d" / "imagesTr" / "BRATS_001.nii.gz").stat().st_mtime_ns == written
    with pytest.raises(
        DatasetError, match=r"d holds another dataset \(numTraining 1 \(asked 2\), seed 5 \(asked 6\)\)"
    ):
        make_demo_data(out, num_train=2, num_test=0, shape=(16, 16, 16), seed=6)
    # a dataset written before the seed was recorded is judged by what it records
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    del meta["seed"]
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(meta))
    assert make_demo_data(out, num_train=1, num_test=0, shape=(16, 16, 16), seed=9) == out


def test_msd_datalist_errors(tmp_path, tiny_dataset):
    with pytest.raises(DatasetError, match="dataset.json: not found.*medicaldecathlon"):
        msd_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        msd_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/x.nii.gz"}]}))
    with pytest.raises(DatasetError, match="x.nii.gz: listed .* but missing"):
        msd_datalist(tmp_path)
    with pytest.raises(DatasetError, match="no 'test' entries"):
        msd_datalist(tmp_path, "test")
    items = msd_datalist(tiny_dataset)
    assert len(split_datalist(items, 1, "train")) == 2 and len(split_datalist(items, 1, "val")) == 1
    with pytest.raises(DatasetError, match="hold out"):
        split_datalist(items, 3, "train")


def test_download_uses_monai_apps_with_checksum(tmp_path, monkeypatch):
    calls = {}

    def fake_download_and_extract(url, filepath, output_dir, hash_val):
        calls.update(url=url, hash_val=hash_val)
        target = tmp_path / "Task01_BrainTumour"
        target.mkdir()
        (target / "dataset.json").write_text("{}")

    import monai.apps

    monkeypatch.setattr(monai.apps, "download_and_extract", fake_download_and_extract)
    assert download_msd_task01(tmp_path) == tmp_path / "Task01_BrainTumour"
    assert calls["url"].endswith("Task01_BrainTumour.tar") and len(calls["hash_val"]) == 32
    calls.clear()
    download_msd_task01(tmp_path)  # present: nothing downloaded
    assert not calls
    assert data_module.MSD_TASK01 == "Task01_BrainTumour"


def test_inference_datalist_kinds(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.nrrd").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    from dicom_helpers import write_series

    write_series(tmp_path / "series", n=4)  # a real series: its headers are read and checked
    items = inference_datalist(tmp_path)
    assert [i["name"] for i in items] == ["a", "b", "series"]
    assert len(items[2]["image"]) == 4 and items[2]["series_uid"]  # one item per series, its files in order
    (tmp_path / "series" / "broken.dcm").write_bytes(b"")
    with pytest.raises(DatasetError, match="series"):
        inference_datalist(tmp_path)
    assert inference_datalist(tmp_path / "a.nii.gz")[0]["name"] == "a"
    with pytest.raises(DatasetError, match="notes.txt: not a supported image"):
        inference_datalist(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="input not found"):
        inference_datalist(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        inference_datalist(empty)


def test_case_name_strips_only_the_image_suffix():
    from bundle.data.datalist import case_name

    assert case_name({"image": "/d/imagesTs/BRATS_001.nii.gz"}) == "BRATS_001"
    # two runs of one subject stay two cases (their noisy LR is seeded by the name)
    assert case_name({"image": "sub-01.run1.nii.gz"}) == "sub-01.run1"
    assert case_name({"image": "scan.NRRD"}) == "scan"


def test_iter_hr_volumes_loads_one_volume_at_a_time_and_names_a_bad_file():
    import torch

    from bundle.data.datalist import iter_hr_volumes

    loaded = []

    def transform(item):
        if "broken" in item["image"]:
            raise ValueError("truncated gzip")
        loaded.append(item["image"])
        return {"image": np.full((1, 2, 3, 4), len(loaded), dtype=np.float64)}

    items = [{"image": "/d/a.nii.gz"}, {"image": "/d/b.nii.gz"}, {"image": "/d/broken.nii.gz"}]
    volumes = iter_hr_volumes(transform, items)
    case, hr = next(volumes)
    assert loaded == ["/d/a.nii.gz"]  # lazily: the second volume is not read yet
    assert case == "a" and hr.shape == (1, 1, 2, 3, 4) and hr.dtype == torch.float32 and float(hr.max()) == 1.0
    assert next(volumes)[0] == "b"
    with pytest.raises(DatasetError, match="broken.nii.gz"):
        next(volumes)
