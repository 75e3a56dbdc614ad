"""Config ids checked before anything is built, and cache filling that names the bad file: one line each."""

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from config_stacks import CONFIGS, STACKS
from conftest import TRAIN, run_bundle
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, LoadImaged

from bundle.config_check import CHECKS, SSIM_WINDOW, check_ids, min_hr_patch
from bundle.core.errors import ConfigError, DatasetError
from bundle.data.datalist import CheckedCacheDataset
from bundle.data.transforms import CheckVolumed

# the stacks whose `config_check` entry must cover every user-set id; adapting's input_image has no default to
# check before a run and its adapt_* settings are checked by the workflow that takes them
CHECKED = {name: files for name, files in STACKS.items() if name != "adapting"}


def is_user_value(value) -> bool:
    """A value a user sets (literal, list or mapping of literals), not a component, reference or expression."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(map(is_user_value, value))
    if isinstance(value, dict):
        return "_target_" not in value and all(map(is_user_value, value.values()))
    return True


def merged(files: list[str]) -> dict:
    return ConfigParser.load_config_files([str(CONFIGS / f) for f in files])


def fails(**values) -> str:
    """The message of the ConfigError that check_ids raises (one line)."""
    with pytest.raises(ConfigError) as err:
        check_ids(**values)
    assert err.value.code == f"error: {err.value.message}" and "\n" not in err.value.code
    return err.value.code


# ------------------------------------------------------------------------------------------------------------------
# check_ids
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted({f.name for f in CONFIGS.glob("*.json")} - {"metadata.json"}))
def test_every_user_set_config_id_has_a_check(name):
    config = json.loads((CONFIGS / name).read_text())
    missing = [k for k, v in config.items() if "#" not in k and is_user_value(v) and k not in CHECKS]
    assert not missing, f"{name}: add these ids to bundle.config_check.CHECKS: {missing}"


@pytest.mark.parametrize(
    "files", [*CHECKED.values(), ["train.json", "demo.json", "tiny.json"], ["train.json", "thick_slice.json"]]
)
def test_shipped_configs_pass_their_checks(files):
    parser = ConfigParser(merged(files))
    ids = [k for k in CHECKS if k in parser]
    assert "scale" in ids and "device" in ids
    check_ids(**{k: parser.get_parsed_content(k) for k in ids})  # no error


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("max_epochs", "abc", "an integer >= 1"),
        ("max_epochs", 2.0, "an integer >= 1"),
        ("max_epochs", True, "an integer >= 1"),
        ("num_workers", -1, "an integer >= 0"),
        ("amp", "false", "true or false (True or False on the command line)"),
        ("learning_rate", 0, "a number > 0"),
        ("lr_decay_start_epoch", -1, "an integer >= 0, or null (no decay)"),
        ("lr_decay_final_fraction", 0, "a number in (0, 1]"),
        ("noise_max", float("nan"), "a number >= 0"),
        ("overlap", 1.0, "a number in [0, 1)"),
        ("cache_rate", 1.5, "a number in [0, 1]"),
        ("coverage_target", 1, "a number in (0, 1)"),
        ("predict_rotations", -1, "an integer >= 0"),
        ("scale", [1, 2], "an integer >= 1 or a list of 3 integers >= 1"),
        ("lr_patch_size", 30, "a list of 3 integers >= 1"),
        ("roi_size", [64, 64, 0], "a list of 3 integers >= 1"),
        ("modality_channel", -1, "'all' or an integer >= 0"),
        ("slices_per_plane", "full", "'all' or an integer >= 0 (0 = no perceptual term)"),
        ("lr_method", "cubic", "one of 'kspace', 'area', 'gaussian', 'trilinear', 'random'"),
        ("residual_base", True, "one of 'none', 'trilinear', 'bspline'"),
        ("consistency_operator", "trilinear", "one of 'auto', 'kspace', 'area', 'gaussian'"),
        (
            "eval_lr_methods",
            [],
            "a non-empty list of 'kspace', 'area', 'gaussian', 'trilinear', 'kspace_hamming', 'noisy'",
        ),
        ("intensity_percentiles", [99.5, 0.5], "[lower, upper] percentiles with 0 <= lower < upper <= 100"),
        ("slice_schedule", {"0": 4}, "a mapping {first epoch >= 1: 'all' or an integer >= 0}"),
        ("vgg_weights", "/no/such/vgg19.pth", "'imagenet', 'torchvision', 'random' or an existing weights file"),
        ("device", "gpu", "a torch device such as 'cpu' or 'cuda:0'"),
        ("dataset_dir", 5, "a file or folder path"),
    ],
)
def test_bad_value_names_the_id_and_what_it_expects(name, value, expected):
    assert fails(**{name: value}) == f"error: config id {name}: expected {expected}, got {value!r}"


def test_good_values_pass(tmp_path):
    weights = tmp_path / "vgg19.pth"
    weights.write_bytes(b"")
    good = dict(
        max_epochs=1, learning_rate=1, overlap=0, cache_rate=1.0, amp=False, modality_channel=2, scale=[1, 1, 4],
        slices_per_plane="all", slice_schedule={"1": 4, 50: "all"}, lpips_slices_per_plane=None,
        lpips_weights=None, vgg_weights=str(weights), device=torch.device("cpu"), dataset_dir=tmp_path,
    )  # fmt: skip
    assert [name for name, value in good.items() if not CHECKS[name][1](value)] == []  # each passes its own test
    assert check_ids(**good) is None  # and together (the checks across ids)
    for name, bad in (("max_epochs", 0), ("slice_schedule", {"1": 0})):  # one bad value among them is still found
        with pytest.raises(ConfigError, match=f"config id {name}:"):
            check_ids(**{**good, name: bad})


def test_unknown_id_is_a_mistake_in_the_config():
    with pytest.raises(TypeError, match=r"no check for config id\(s\) \['max_epoch'\]"):
        check_ids(max_epoch=3)


def test_min_hr_patch_matches_the_losses():
    from bundle.core.networks import Discriminator3D
    from bundle.training.losses import ContentLoss, RandomSlicePerceptualLoss

    assert min_hr_patch(3, "conv3_4") == {"SSIM window": 11, "discriminator 2**d_stages": 8, "VGG layer conv3_4": 4}
    assert Discriminator3D(features=2, num_stages=3).min_size == 8
    loss = ContentLoss(perceptual=None)
    loss(torch.rand(1, 1, SSIM_WINDOW, SSIM_WINDOW, SSIM_WINDOW), torch.rand(1, 1, 11, 11, 11))
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        loss(torch.rand(1, 1, 10, 11, 11), torch.rand(1, 1, 10, 11, 11))
    vgg = RandomSlicePerceptualLoss(slices_per_plane=1, layer="conv3_4", weights="random")
    vgg(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4))
    with pytest.raises(RuntimeError):
        vgg(torch.rand(1, 1, 3, 4, 4), torch.rand(1, 1, 3, 4, 4))


def test_lr_patch_size_must_give_hr_patches_every_loss_takes():
    tiny = dict(scale=4, d_stages=2, slices_per_plane=2, perceptual_layer="conv1_2")
    assert fails(lr_patch_size=[1, 1, 1], **tiny) == (
        "error: config id lr_patch_size: [1, 1, 1] x scale [4, 4, 4] gives HR patches [4, 4, 4], but every axis "
        "needs at least 11 voxels (SSIM window: 11, discriminator 2**d_stages: 4, VGG layer conv1_2: 1); "
        "use lr_patch_size [3, 3, 3] or larger"
    )
    check_ids(lr_patch_size=[3, 3, 3], **tiny)  # HR 12 >= 11
    deep = dict(scale=[1, 1, 4], d_stages=3, slices_per_plane=4, perceptual_layer="conv5_4")
    message = fails(lr_patch_size=[64, 64, 3], **deep)  # HR z = 12 < 16 (VGG conv5_4 after 4 pools)
    assert "HR patches [64, 64, 12]" in message and "at least 16 voxels" in message
    suggested = json.loads(re.search(r"use lr_patch_size (\[.*?\])", message).group(1))
    assert suggested == [64, 64, 4]
    check_ids(lr_patch_size=suggested, **deep)
    check_ids(lr_patch_size=[64, 64, 3], **{**deep, "slices_per_plane": 0})  # no VGG term: 12 is enough
    assert "2**d_stages: 16" in fails(lr_patch_size=[3, 3, 3], scale=4, d_stages=4)


def test_checks_across_ids():
    assert fails(slices_per_plane=4, perceptual_weight=0).startswith("error: config id perceptual_weight: is 0 while")
    assert "epoch 5 turns the perceptual term on" in fails(slices_per_plane=0, slice_schedule={"5": 4})
    assert "epoch 9 turns the perceptual term off" in fails(slices_per_plane=4, slice_schedule={"1": 8, "9": 0})
    message = fails(uncertainty=17, scale=[1, 1, 4])
    assert message.startswith("error: config id uncertainty: 17 ") and "allows only 16" in message
    check_ids(uncertainty=48, scale=4)
    assert "calibration needs" in fails(uncertainty=0, coverage_target=0.9)
    assert "not before max_epochs 40" in fails(lr_decay_start_epoch=40, max_epochs=40)
    check_ids(lr_decay_start_epoch=39, max_epochs=40, lr_decay_final_fraction=1.0)
    check_ids(lr_decay_start_epoch=None, max_epochs=40)


# ------------------------------------------------------------------------------------------------------------------
# CheckedCacheDataset
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def volumes(tmp_path):
    """Three small NIfTI volumes (8, 8, 6); the second has one NaN voxel. Returns (items, arrays)."""
    items, arrays = [], []
    for i in range(3):
        arr = np.random.default_rng(i).random((8, 8, 6)).astype(np.float32)
        if i == 1:
            arr[2, 3, 4] = np.nan
        path = tmp_path / f"case{i}.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
        items.append({"image": str(path)})
        arrays.append(arr)
    return items, arrays


def loading(*extra):
    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), *extra])


@pytest.mark.timeout(60)  # a SystemExit lost in a worker thread would hang the pool
@pytest.mark.parametrize("num_workers", [0, 2])
def test_cache_filling_error_is_one_line_naming_the_file(volumes, num_workers):
    items, arrays = volumes
    good = [items[0], items[2]]
    ds = CheckedCacheDataset(good, loading(CheckVolumed("image", min_size=1)), num_workers=num_workers, progress=False)
    assert len(ds) == 2 and np.array_equal(ds[1]["image"][0].numpy(), arrays[2])
    with pytest.raises(DatasetError) as err:
        CheckedCacheDataset(items, loading(CheckVolumed("image", min_size=1)), num_workers=num_workers, progress=False)
    assert err.value.code == f"error: {items[1]['image']}: contains NaN or infinite values"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_cache_filling_error_names_the_image_when_the_cause_does_not(volumes, num_workers):
    items, _ = volumes

    def reject(img):
        raise ValueError("bad\n  value")

    def stop(img):
        raise DatasetError("stopped here")

    with pytest.raises(DatasetError) as err:
        CheckedCacheDataset(items[:1], loading(Lambdad("image", reject)), num_workers=num_workers, progress=False)
    assert err.value.code == f"error: {items[0]['image']}: bad value"
    with pytest.raises(DatasetError) as err:  # raised as a SystemExit inside a worker thread: no hang
        CheckedCacheDataset(items[:1], loading(Lambdad("image", stop)), num_workers=num_workers, progress=False)
    assert err.value.code == f"error: {items[0]['image']}: stopped here"
    data = [{"image": np.ones((1, 4, 4, 4), np.float32)}] * 2
    with pytest.raises(DatasetError, match=r"^data item 0: bad value$"):
        CheckedCacheDataset(data, Compose([Lambdad("image", reject)]), num_workers=num_workers, progress=False)


# ------------------------------------------------------------------------------------------------------------------
# Through the bundle runner
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", CHECKED)
def test_config_check_entry_covers_every_user_set_id(stack):
    config = merged(CHECKED[stack])
    user_ids = {k for k, v in config.items() if "#" not in k and is_user_value(v)}
    assert user_ids - set(config["config_check"]) == set()
    # first, after only putting the bundle on sys.path (initialize runs before the runner does that)
    for init in (config["initialize"], merged(["train.json", "multi_gpu_train.json"])["initialize"]):
        assert init[0].startswith("$sys.path.insert(0, os.path.abspath(@bundle_root))") and init[1] == "@config_check"


def last_error(proc) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert sum(line.startswith("error:") for line in lines) == 1, lines
    return lines[-1]


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--max_epochs", "abc", "error: config id max_epochs: expected an integer >= 1, got 'abc'"),
        ("--lr_patch_size", "[1,1,1]", "error: config id lr_patch_size: [1, 1, 1] x scale [4, 4, 4] gives HR patches"),
    ],
)
def test_runner_bad_value_is_one_line(tiny_dataset, tmp_path, option, value, expected):
    proc = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(tiny_dataset), "--ckpt_dir",
        str(tmp_path / "models"), "--output_dir", str(tmp_path / "outputs"), option, value,
    )  # fmt: skip
    assert last_error(proc).startswith(expected)
    assert "Loading dataset" not in proc.stderr  # checked in `initialize`, before anything is built
    assert not list(tmp_path.iterdir())  # nothing written


def test_runner_nan_in_a_training_image_is_one_line(tiny_dataset, tmp_path):
    train = merged(["train.json"])
    assert {train[k]["dataset"]["_target_"] for k in ("train", "validate")} == {
        "bundle.data.datalist.CheckedCacheDataset"
    }  # both caches name the bad file
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    bad = data / "imagesTr" / "BRATS_002.nii.gz"  # a training case (the last of three validates)
    img = nib.load(bad)
    arr = img.get_fdata(dtype=np.float32)
    arr[5, 5, 5, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), bad)
    proc = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "outputs"), "--num_workers", "2",
    )  # fmt: skip
    assert last_error(proc) == f"error: {bad}: contains NaN or infinite values"
    assert not (tmp_path / "models").exists() and not (tmp_path / "outputs").exists()


def test_every_channel_is_for_inference_only():
    with pytest.raises(ConfigError, match="config id modality_channel: 'all' is for inference only"):
        check_ids(modality_channel="all", max_epochs=3)
    check_ids(modality_channel="all", input_dir="in")  # inference.json passes input_dir
