"""bundle/export (scripts/export_bundle.py): the exported folder passes what model-zoo CI's `ci/verify_bundle.py -m full` checks,
MONAI's check_properties for inference and training, and runs from another working directory.

Nothing is trained: a tiny generator with random weights, built through the merged config. The zoo's checks
are re-done here through monai.bundle's public functions (verify_metadata against the vendored schema,
offline; verify_net_in_out; ckpt_export; the large-file hash check and the required files), with the
exported `bundle/` package, not the repository's, first on sys.path, as the zoo's script puts it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_settings
from monai.apps.utils import download_url
from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_metadata, verify_net_in_out

from bundle.core.errors import BundleError
from bundle.export.configs import add_property_ids
from bundle.export.folder import export, load_weights
from bundle.inference.overlays import build_network, merge_config, shape_mismatch
from bundle.trust.operator_estimate import OperatorEstimator

SCHEMA = ROOT / "tests" / "assets" / "meta_schema_20240725.json"
LR_SPACING = (2.0, 3.0, 4.0)
LR_ORIGIN = (10.0, -20.0, 5.0)


def lr_volume(path: Path, shape=(10, 9, 6)) -> np.ndarray:
    affine = np.diag([*LR_SPACING, 1.0])
    affine[:3, 3] = LR_ORIGIN
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(data, affine), path)
    return affine


@contextmanager
def exported_code_first(bundle_dir: Path):
    """Import `bundle` from the exported folder (as the zoo's verify_bundle.py does), then restore."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "bundle" or k.startswith("bundle.")}
    sys.path.insert(0, str(bundle_dir))
    try:
        yield
    finally:
        sys.path.remove(str(bundle_dir))
        for k in [k for k in sys.modules if k == "bundle" or k.startswith("bundle.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random generator (saved nested under "model"), exported with its overlay and a results file, and a
    second one as the perceptual model (in a folder of its own, without calibration or estimator beside it)."""
    work = tmp_path_factory.mktemp("export")
    overlay = work / "tiny.json"
    overlay.write_text(json.dumps({**tiny_settings(), "cache_rate": 0.0}, indent=4))  # the tests' sizes
    config, _ = merge_config(ROOT / "configs" / "inference.json", [overlay])
    torch.manual_seed(0)
    net = build_network(config, ROOT)
    torch.save({"model": net.state_dict()}, work / "trained.pt")
    estimator = OperatorEstimator(features=4)  # beside the model, as `release_model.py install` puts it
    torch.save({"state_dict": estimator.state_dict(), "features": 4}, work / "operator_estimator.pt")
    scores = {
        "sr": {"psnr": {"mean": 31.25, "sd": 0.0, "n": 1}},
        "trilinear": {"psnr": {"mean": 30.0, "sd": 0.0, "n": 1}},
    }
    summary = {"cases": 1, "degradations": {"kspace": scores}, "methods": scores}
    (work / "summary.json").write_text(json.dumps(summary))
    torch.manual_seed(1)
    (work / "perceptual").mkdir()
    torch.save(build_network(config, ROOT).state_dict(), work / "perceptual" / "model.pt")
    dest = export(
        ckpt=str(work / "trained.pt"), overlays=[str(overlay)], name="tiny_sr", version="0.2.0",
        output_dir=str(work / "dist"), results=str(work / "summary.json"), changelog="tiny test export",
        perceptual_ckpt=str(work / "perceptual" / "model.pt"),
    )  # fmt: skip
    return dest, net.eval()


def test_zoo_required_files_version_and_large_files(exported, tmp_path):
    dest, net = exported
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (dest / name).is_file(), name
    for name in ("configs/train.json", "configs/logging.conf", "models/model.ts", "docs/README.md"):
        assert (dest / name).is_file(), name
    assert (dest / "bundle" / "core" / "networks.py").is_file() and (dest / "monailabel" / "main.py").is_file()
    assert not list(dest.parent.glob("*.partial"))
    meta = json.loads((dest / "configs" / "metadata.json").read_text())
    assert meta["version"] == "0.2.0" and next(iter(meta["changelog"])) == "0.2.0"
    assert meta["changelog"]["0.2.0"] == "tiny test export" and "0.1.0" in meta["changelog"]
    # the zoo reads large_files.yml through ConfigParser and calls download_url; present files only get hashed
    entries = ConfigParser.load_config_file(str(dest / "large_files.yml"))["large_files"]
    assert {e["path"] for e in entries} == {
        "models/model.pt", "models/model.ts", "models/operator_estimator.pt",
        "models/perceptual/model.pt", "models/perceptual/operator_estimator.pt",
    }  # fmt: skip
    for e in entries:
        assert e["url"] == "" and e["hash_type"] == "sha256"
        assert e["hash_val"] == hashlib.sha256((dest / e["path"]).read_bytes()).hexdigest()
        download_url(url=e["url"], filepath=dest / e["path"], hash_val=e["hash_val"], hash_type="sha256", fuzzy=True)
    with pytest.raises(Exception, match="hash check"):
        download_url(url="", filepath=dest / "models" / "model.pt", hash_val="0" * 64, hash_type="sha256")
    tracked = [p for p in dest.rglob("*") if p.is_file()]
    too_big = [p for p in tracked if p.stat().st_size >= 1_000_000 and str(p.relative_to(dest)) not in
               {e["path"] for e in entries}]  # fmt: skip
    assert not too_big
    # the exported weights are the trained ones, as a plain state dict
    state = torch.load(dest / "models" / "model.pt", weights_only=True)
    assert set(state) == set(net.state_dict()) and "conv_first.weight" in state
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    card = (dest / "docs" / "README.md").read_text()
    assert card.startswith("# Model card") and "| sr |" in card and "31.2500" in card
    assert "features=8" in card and "num_blocks=1" in card


def test_zoo_metadata_shapes_and_torchscript(exported):
    dest, net = exported
    meta, config = str(dest / "configs" / "metadata.json"), str(dest / "configs" / "inference.json")
    with exported_code_first(dest):
        verify_metadata(meta_file=meta, filepath=str(SCHEMA))
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=str(dest))
        ckpt_export(
            net_id="network_def", filepath=str(dest / "models" / "verify_model.ts"),
            ckpt_file=str(dest / "models" / "model.pt"), meta_file=meta, config_file=config, bundle_root=str(dest),
        )  # fmt: skip
        import bundle

        assert Path(bundle.__file__).resolve().is_relative_to(dest.resolve())
    x = torch.rand(1, 1, 6, 5, 4)
    with torch.no_grad():
        expected = net(x)
        for name in ("model.ts", "verify_model.ts"):
            out = torch.jit.load(str(dest / "models" / name))(x)
            assert out.shape == (1, 1, 24, 20, 16)
            assert torch.allclose(out, expected, atol=1e-5)


def test_inference_json_alone_builds_the_trained_network(exported):
    dest, _ = exported
    config = json.loads((dest / "configs" / "inference.json").read_text())
    assert config["bundle_root"] == "."
    state = torch.load(dest / "models" / "model.pt", weights_only=True)
    with exported_code_first(dest):
        parser = ConfigParser()
        parser.read_config(str(dest / "configs" / "inference.json"))
        parser["bundle_root"] = str(dest)
        parser.get_parsed_content("network_def").load_state_dict(state, strict=True)
    repo_config, _ = merge_config(ROOT / "configs" / "inference.json", [])
    assert shape_mismatch(state, build_network(repo_config, ROOT, device="meta")) is not None


def test_monai_check_properties_inference_and_train(exported, tmp_path, tiny_dataset):
    dest, _ = exported
    lr_volume(tmp_path / "in" / "scan.nii.gz")
    common = {"bundle_root": str(dest), "meta_file": str(dest / "configs" / "metadata.json"),
              "logging_file": str(dest / "configs" / "logging.conf")}  # fmt: skip
    with exported_code_first(dest):
        infer = create_workflow(
            config_file=str(dest / "configs" / "inference.json"), workflow_type="inference",
            dataset_dir=str(tmp_path / "in"), **common,
        )  # fmt: skip
        assert infer.check_properties() == []
        train = create_workflow(
            config_file=str(dest / "configs" / "train.json"), workflow_type="train",
            dataset_dir=str(tiny_dataset), output_dir=str(tmp_path / "out"), **common,
        )  # fmt: skip
        assert train.check_properties() == []


def test_bundle_runs_inference_from_another_directory(exported, tmp_path):
    dest, _ = exported
    affine = lr_volume(tmp_path / "in" / "scan.nii.gz", shape=(10, 9, 6))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--config_file", str(dest / "configs" / "inference.json"), "--bundle_root", str(dest),
        "--meta_file", str(dest / "configs" / "metadata.json"),
        "--logging_file", str(dest / "configs" / "logging.conf"),
        "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = nib.load(tmp_path / "out" / "scan_sr.nii.gz")
    assert out.shape == (40, 36, 24)
    assert np.allclose(out.header.get_zooms(), np.array(LR_SPACING) / 4)
    # same field of view: first voxel centre moved by -3/8 of an LR voxel, extent unchanged
    assert np.allclose(out.affine[:3, 3], affine[:3, 3] + np.array(LR_SPACING) * (1 / 4 - 1) / 2)
    assert np.allclose(np.array(out.shape) * out.header.get_zooms(), np.array([10, 9, 6]) * LR_SPACING)
    assert np.isfinite(out.get_fdata()).all()


def test_perceptual_model_beside_the_fidelity_one_and_chosen_by_ckpt_dir(exported, tmp_path):
    """models/perceptual/ holds the perceptual weights and the shared estimator; `--ckpt_dir` runs it."""
    dest, net = exported
    perceptual = dest / "models" / "perceptual"
    state = torch.load(perceptual / "model.pt", weights_only=True)
    saved = torch.load(dest.parents[1] / "perceptual" / "model.pt", weights_only=True)
    assert set(state) == set(saved) and all(torch.equal(state[k], v) for k, v in saved.items())
    assert not all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # not the fidelity model
    shared = (dest / "models" / "operator_estimator.pt").read_bytes()
    assert (perceptual / "operator_estimator.pt").read_bytes() == shared  # none beside it: the release's shared one
    assert not (perceptual / "calibration.json").exists()
    meta = json.loads((dest / "configs" / "metadata.json").read_text())
    assert meta["changelog"]["0.2.0"] == "tiny test export"
    card = (dest / "docs" / "README.md").read_text()
    assert "## Two models: fidelity (default) and perceptual" in card
    assert "## One model: fidelity" not in card
    assert "`--ckpt_dir <bundle>/models/perceptual`" in card and "no uncertainty calibration of its own yet" in card
    assert "Never use the perceptual output alone for diagnosis" in card
    digest = hashlib.sha256((perceptual / "model.pt").read_bytes()).hexdigest()
    assert f"`models/perceptual/model.pt` sha256 `{digest}`" in card
    lr_volume(tmp_path / "in" / "scan.nii.gz", shape=(10, 9, 6))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--config_file", str(dest / "configs" / "inference.json"), "--bundle_root", str(dest),
        "--meta_file", str(dest / "configs" / "metadata.json"),
        "--logging_file", str(dest / "configs" / "logging.conf"), "--ckpt_dir", str(perceptual),
        "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert nib.load(tmp_path / "out" / "scan_sr.nii.gz").shape == (40, 36, 24)
    assert f"ckpt_dir: {str(perceptual)!r}" in proc.stderr + proc.stdout  # the model, calibration and estimator folder


def test_perceptual_card_and_files_found_beside_the_perceptual_model(tmp_path):
    from bundle.export.card import FIDELITY_ONLY, perceptual_card
    from bundle.export.folder import write_perceptual

    assert "holds the fidelity model only" in FIDELITY_ONLY and "--perceptual_ckpt" in FIDELITY_ONLY

    card = perceptual_card({"models/model.pt": "a", "models/perceptual/model.pt": "b"}, has_calibration=True)
    assert "its own uncertainty calibration (`models/perceptual/calibration.json`)" in card
    assert "`models/perceptual/model.pt` sha256 `b`" in card and "`models/model.pt` sha256" not in card
    assert "MSE + (1 - SSIM) only, no adversarial or perceptual term" in card
    assert "0.001 adversarial + 0.2 random-slice VGG19" in card and "may invent plausible texture" in card
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "calibration.json").write_text('{"lambda": 1}')
    (tmp_path / "p" / "operator_estimator.pt").write_bytes(b"own")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "operator_estimator.pt").write_bytes(b"shared")
    folder = tmp_path / "bundle"
    write_perceptual(folder, {"w": torch.ones(2)}, tmp_path / "p" / "model.pt", tmp_path / "f" / "model.pt")
    assert (folder / "models" / "perceptual" / "calibration.json").read_text() == '{"lambda": 1}'
    assert (folder / "models" / "perceptual" / "operator_estimator.pt").read_bytes() == b"own"
    assert torch.equal(torch.load(folder / "models" / "perceptual" / "model.pt", weights_only=True)["w"], torch.ones(2))


def test_perceptual_checkpoint_that_does_not_fit_is_named(tmp_path):
    demo, _ = merge_config(ROOT / "configs" / "inference.json", [ROOT / "configs" / "demo.json"])
    net = build_network(demo, ROOT)
    torch.save(net.state_dict(), tmp_path / "demo.pt")
    torch.save({k: v[..., :1] if v.ndim == 5 else v for k, v in net.state_dict().items()}, tmp_path / "odd.pt")
    with pytest.raises(BundleError) as err:
        export(
            ckpt=str(tmp_path / "demo.pt"), overlays=[str(ROOT / "configs" / "demo.json")], name="x",
            output_dir=str(tmp_path / "dist"), perceptual_ckpt=str(tmp_path / "odd.pt"),
        )  # fmt: skip
    assert str(err.value).startswith(f"{tmp_path / 'odd.pt'}: does not fit network_def of")
    with pytest.raises(BundleError, match=r"missing.pt: .*--perceptual_ckpt"):
        load_weights(tmp_path / "missing.pt", "--perceptual_ckpt")
    assert not (tmp_path / "dist" / "x").exists()


def test_checkpoint_that_does_not_fit_names_both_and_the_overlay(tmp_path):
    demo, _ = merge_config(ROOT / "configs" / "inference.json", [ROOT / "configs" / "demo.json"])
    torch.save(build_network(demo, ROOT).state_dict(), tmp_path / "demo.pt")
    with pytest.raises(BundleError) as err:
        export(ckpt=str(tmp_path / "demo.pt"), name="x", output_dir=str(tmp_path / "dist"))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'demo.pt'}: does not fit network_def of")
    assert "it fits configs/inference.json + configs/demo.json" in message
    odd = {k: v[..., :1] if v.ndim == 5 else v for k, v in torch.load(tmp_path / "demo.pt").items()}
    torch.save(odd, tmp_path / "odd.pt")
    with pytest.raises(BundleError, match="with another shape.*no single overlay in configs/ fits it"):
        export(ckpt=str(tmp_path / "odd.pt"), name="x", output_dir=str(tmp_path / "dist"))
    assert not (tmp_path / "dist" / "x").exists() and not list((tmp_path / "dist").glob("*.partial"))


def test_existing_bundle_kept_unless_overwrite(exported):
    dest, _ = exported
    before = (dest / "models" / "model.pt").read_bytes()
    with pytest.raises(BundleError, match="already exists; pass --overwrite True"):
        export(ckpt=str(dest / "models" / "model.pt"), name=dest.name, output_dir=str(dest.parent))
    assert (dest / "models" / "model.pt").read_bytes() == before


def test_non_finite_or_missing_weights_refused(tmp_path):
    torch.save({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pt")
    with pytest.raises(BundleError, match=r"nan.pt: non-finite weights in w"):
        load_weights(tmp_path / "nan.pt")
    with pytest.raises(BundleError, match="missing.pt: generator checkpoint not found"):
        load_weights(tmp_path / "missing.pt")


def test_merge_applies_only_ids_the_base_has(tmp_path):
    base = {"bundle_root": ".", "a": 1, "net": {"_target_": "X", "k": 2}, "run": "@a"}
    (tmp_path / "base.json").write_text(json.dumps(base))
    overlay = {"a": 5, "net#k": 7, "net#extra": 1, "only_in_train": 3, "bundle_root": "/abs", "+net": {"m": 0}}
    (tmp_path / "over.json").write_text(json.dumps(overlay))
    merged, skipped = merge_config(tmp_path / "base.json", [tmp_path / "over.json"])
    assert merged == {"bundle_root": ".", "a": 5, "net": {"_target_": "X", "k": 7, "extra": 1, "m": 0}, "run": "@a"}
    assert skipped == ["over.json:only_in_train", "over.json:bundle_root"]


def test_add_property_ids_adds_only_what_is_missing():
    infer = {"input_dir": "$'in'", "evaluator": {"key_val_metric": {"psnr": {"_target_": "P"}}}, "x": 1}
    changes = add_property_ids(infer, "inference")
    assert list(infer) == ["dataset_dir", "input_dir", "evaluator", "x", "key_metric"]
    assert infer["dataset_dir"] == "$'in'" and infer["input_dir"] == "@dataset_dir"
    assert infer["key_metric"] == {"psnr": {"_target_": "P"}} and infer["evaluator"]["key_val_metric"] == "@key_metric"
    assert len(changes) == 2
    assert add_property_ids(infer, "inference") == []  # a second pass changes nothing
    train = {"train": {"a": [{"_target_": "H1"}], "b": [{"_target_": "H2"}], "handlers": "$@train#a + @train#b"}}
    add_property_ids(train, "train")
    assert train["train"]["handlers"] == [{"_target_": "H1"}, {"_target_": "H2"}]
    assert train["train"]["inferer"] == {"_target_": "SimpleInferer"}
    kept = {"train": {"handlers": "$@train#a if x else []", "inferer": {"_target_": "I"}}}
    assert add_property_ids(kept, "train") == [] and kept["train"]["handlers"] == "$@train#a if x else []"


# MONAI's documented bundle commands from another folder; metadata and card of the exported network


def monai_bundle(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the repository on the path
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # 42 s; `test_bundle_runs_inference_from_another_directory` keeps the exported bundle's runs in make test
def test_documented_commands_work_from_another_folder_and_offline(exported, tmp_path):
    dest, _ = exported
    meta, config = str(dest / "configs" / "metadata.json"), str(dest / "configs" / "inference.json")
    schema = dest / "docs" / "meta_schema_20240725.json"
    assert schema.is_file()  # shipped, so verify_metadata needs no download
    steps = {
        "verify_metadata": ["verify_metadata", "--meta_file", meta, "--filepath", str(schema)],
        "verify_net_in_out": [
            "verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config,
            "--bundle_root", str(dest),
        ],
        "ckpt_export": [
            "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), "--meta_file", meta,
            "--config_file", config, "--ckpt_file", str(dest / "models" / "model.pt"), "--bundle_root", str(dest),
        ],
    }  # fmt: skip
    for name, args in steps.items():
        proc = monai_bundle(*args, cwd=tmp_path)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
    assert (tmp_path / "model.ts").stat().st_size > 0


def test_metadata_and_card_describe_the_exported_network_and_the_cost_of_uncertainty(exported):
    dest, _ = exported
    tiny = tiny_settings()
    description = json.loads((dest / "configs" / "metadata.json").read_text())["description"]
    expected = f"{tiny['num_blocks']} residual-in-residual dense blocks, {tiny['features']} features, growth"
    assert expected in description and "10 residual-in-residual" not in description
    config = json.loads((dest / "configs" / "inference.json").read_text())
    assert config["uncertainty"] == 0  # passes only when asked
    assert "_requires_" in config["network_def"]
    assert "`--uncertainty N`" in (dest / "docs" / "README.md").read_text()


def test_a_missing_checkpoint_names_the_export_scripts_own_flag(tmp_path):
    import re

    from bundle.core.errors import CheckpointError

    with pytest.raises(CheckpointError) as err:
        load_weights(tmp_path / "missing.pt")
    assert re.search(r"--ckpt\b(?!_)", str(err.value)) and "--ckpt_path" not in str(err.value), str(err.value)
