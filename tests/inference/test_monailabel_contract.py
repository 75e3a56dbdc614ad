"""Load the bundle the way MONAI Label's bundle tasks do (no server, no monailabel install)."""

import shutil

import nibabel as nib
import numpy as np
import torch
from conftest import ROOT, tiny_generator, tiny_settings
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged


def copy_bundle(dst):
    """The bundle copied outside the repository, as MONAI Label (or the model zoo) would hold it."""
    for name in ("configs", "bundle", "LICENSE"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    (dst / "models").mkdir()
    torch.manual_seed(0)
    net = tiny_generator()
    torch.save(net.state_dict(), dst / "models" / "model.pt")
    return net


def test_infer_task_contract(tmp_path):
    bundle_dir = tmp_path / "bundle_copy"
    bundle_dir.mkdir()
    reference = copy_bundle(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    text = (bundle_dir / "configs" / "inference.json").read_text()
    assert "@_meta_" not in text
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = "cpu"  # MONAI Label overwrites the device with a string
    tiny = tiny_settings()
    for k in ("num_blocks", "features", "growth", "residual_base"):  # the network sizes an export merges in
        parser[k] = tiny[k]
    network = parser.get_parsed_content("network_def")
    state = torch.load(bundle_dir / "models" / "model.pt", weights_only=True)
    network.load_state_dict(state.get("model", state))
    network.eval()

    image = tmp_path / "lr.nii.gz"
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.rand(10, 9, 6).astype(np.float32) * 200, affine), image)
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    assert data["image"].shape == (1, 10, 9, 6)
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
        expected = reference.eval()(data["image"][None].as_tensor())[0]
    assert torch.allclose(torch.as_tensor(data["pred"]), expected, atol=1e-5)
    post = parser.get_parsed_content("postprocessing")
    kept = Compose([t for t in post.transforms if not isinstance(t, SaveImaged)])  # MONAI Label's post_filter
    out = kept(data)
    assert out["pred"].shape == (1, 40, 36, 24)
    assert np.allclose(np.diag(out["pred"].affine)[:3], [0.5, 0.5, 0.75])


def test_train_task_contract(tmp_path, tiny_dataset):
    bundle_dir = tmp_path / "bundle_copy"
    bundle_dir.mkdir()
    copy_bundle(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.json"))
    for key in ("network", "train#trainer", "train#dataset", "validate#dataset"):
        assert key in parser, key
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = "cpu"
    for k, v in tiny_settings().items():
        parser[k] = v
    items = sorted((tiny_dataset / "imagesTr").glob("*.nii.gz"))
    data = [{"image": str(p), "label": str(tiny_dataset / "labelsTr" / p.name)} for p in items]
    parser["train#trainer#max_epochs"] = 1
    parser["train#dataset#data"] = data[:2]
    parser["validate#dataset#data"] = data[2:]
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.epoch == 1
    assert (bundle_dir / "models" / "model.pt").is_file()
    assert list((bundle_dir / "models").glob("checkpoint*.pt"))
