"""A few extreme voxels (a corrupted slice, a conversion's scaling mistake) cannot wreck the output."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import INFER, run_bundle, tiny_generator
from monai.data import MetaTensor

from bundle.data.robust_intensity import OUTLIER_KEY, input_outliers_summary
from bundle.data.transforms import RobustNormalised


def brain_like(shape=(20, 20, 12), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 50).astype(np.float32)


def normalise(arr: np.ndarray, **kw) -> MetaTensor:
    img = MetaTensor(torch.as_tensor(arr)[None], meta={"filename_or_obj": "scan.nii.gz"})
    return RobustNormalised("image", clip=False, **kw)({"image": img})["image"]


def test_spikes_are_clipped_counted_and_the_rest_unchanged():
    arr = brain_like()
    clean = normalise(arr)
    arr[3, 4, 5] = arr[10, 2, 7] = 1e30
    arr[0, 0, 0] = -1e30
    out = normalise(arr)
    record = json.loads(out.meta[OUTLIER_KEY])
    assert record["clipped_voxels"] == 3 and record["fraction"] == pytest.approx(3 / arr.size)
    assert float(out.max()) == pytest.approx(4.0) and float(out.min()) == pytest.approx(-3.0)
    # the percentiles barely move; every other voxel keeps its (robustly scaled) value
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 3, 4, 5] = mask[0, 10, 2, 7] = mask[0, 0, 0, 0] = False
    assert torch.allclose(out[mask], clean[mask], atol=2e-2)
    lo, hi = record["limits"][0]  # in the input's units: 3 percentile ranges beyond each percentile
    assert lo < arr[1:, 1:, 1:].min() and hi > 1e2 and hi < 1e3
    assert input_outliers_summary(out) == {"input_outliers": record}


def test_bright_lesion_survives_and_clean_volume_records_nothing_clipped():
    arr = brain_like()
    arr[5:7, 5:7, 5:7] = 300.0  # twice the upper percentile: a real bright lesion, not a spike
    out = normalise(arr)
    assert json.loads(out.meta[OUTLIER_KEY])["clipped_voxels"] == 0
    assert float(out.max()) > 1.5


def test_a_volume_dominated_by_extremes_is_refused_in_one_line():
    arr = brain_like()
    arr.reshape(-1)[::50] = 1e30  # 2% of the voxels
    with pytest.raises(ValueError) as err:
        normalise(arr)
    text = str(err.value)
    assert text.startswith("scan.nii.gz: ") and "set by extreme values" in text and "\n" not in text


def test_training_normalisation_is_unchanged():
    arr = brain_like()
    arr[3, 4, 5] = 1e30
    img = MetaTensor(torch.as_tensor(arr)[None])
    out = RobustNormalised("image")({"image": img})["image"]
    assert float(out.max()) == 1.0 and OUTLIER_KEY not in out.meta


def test_inference_with_two_spikes_gives_a_sane_output_and_records_them(tmp_path):
    model = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(tiny_generator().state_dict(), model)
    inp = tmp_path / "in"
    inp.mkdir()
    arr = brain_like()
    arr[3, 4, 5] = arr[12, 9, 6] = 1e30
    nib.save(nib.Nifti1Image(arr, np.eye(4)), inp / "spiky.nii.gz")
    proc = run_bundle(
        "run", "inference", "--config_file", INFER, "--input_dir", str(inp), "--output_dir", str(tmp_path / "sr"),
        "--ckpt_path", str(model), "--uncertainty", "0", "--sliding_window", "False",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sr = nib.load(tmp_path / "sr" / "spiky_sr.nii.gz").get_fdata()
    assert sr.size == 307_200 and np.isfinite(sr).all()
    # every output voxel lies within a few times the input's normal range (50-150), none near 1e30 or 5e8
    assert np.abs(sr).max() < 1e4 and np.median(np.abs(sr)) < 1e3
    assert "2 extreme voxel(s)" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "sr" / "spiky_sr.json").read_text())
    assert summary["input_outliers"]["clipped_voxels"] == 2
