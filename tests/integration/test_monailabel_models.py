"""The MONAI Label app's choice of model (docs/monailabel/lib/models.py), without MONAI Label installed: one infer
task per model the bundle holds, each reading its model, calibration and operator estimator from its own folder.

lib/models.py imports nothing of monailabel; main.py and lib/super_resolution.py are imported here against a small
stand-in for the three monailabel classes they use, which reads the bundle config and the model file the way
monailabel 0.8.5's BundleInferTask does (configs/inference.json, bundle_root set, models/<const.model_pytorch()>).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import types

import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser

APP = ROOT / "docs" / "monailabel"


def _bundle(tmp_path, perceptual: bool):
    """A bundle folder: the configs and metadata, a fidelity model and, when asked, a perceptual one."""
    root = tmp_path / "bundle"
    shutil.copytree(ROOT / "configs", root / "configs")
    (root / "models").mkdir()
    torch.save({"w": torch.zeros(1)}, root / "models" / "model.pt")
    if perceptual:
        (root / "models" / "perceptual").mkdir()
        torch.save({"w": torch.ones(1)}, root / "models" / "perceptual" / "model.pt")
    return root


@pytest.fixture
def app_modules(monkeypatch):
    """The app's `lib.models`, `lib.super_resolution` and `main`, imported with monailabel stood in for."""

    class BundleConstants:
        def model_pytorch(self) -> str:
            return "model.pt"

    class BundleInferTask:
        def __init__(self, path, conf, const=None, type="", post_filter=None, add_post_restore=True, **kwargs):
            self.const = const or BundleConstants()
            self.bundle_config = ConfigParser()
            self.bundle_config.read_config(os.path.join(path, "configs", "inference.json"))
            self.bundle_config.config.update({"bundle_root": path})
            self.model_path = os.path.join(path, "models", self.const.model_pytorch())
            self.description = "from metadata"

    class MONAILabelApp:
        def __init__(self, app_dir, studies, conf, name, version):
            self.conf = conf
            self._infers = self.init_infers()

    fake = {
        "monailabel": types.ModuleType("monailabel"),
        "monailabel.interfaces": types.ModuleType("monailabel.interfaces"),
        "monailabel.interfaces.app": types.SimpleNamespace(MONAILabelApp=MONAILabelApp),
        "monailabel.interfaces.tasks": types.ModuleType("monailabel.interfaces.tasks"),
        "monailabel.interfaces.tasks.infer_v2": types.SimpleNamespace(InferType=types.SimpleNamespace(OTHERS="others")),
        "monailabel.tasks": types.ModuleType("monailabel.tasks"),
        "monailabel.tasks.infer": types.ModuleType("monailabel.tasks.infer"),
        "monailabel.tasks.infer.bundle": types.SimpleNamespace(
            BundleConstants=BundleConstants, BundleInferTask=BundleInferTask
        ),
        "monailabel.tasks.train": types.ModuleType("monailabel.tasks.train"),
        "monailabel.tasks.train.bundle": types.SimpleNamespace(BundleTrainTask=lambda path, conf: None),
    }
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("lib", "lib.models", "lib.super_resolution", "main"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(APP))
    modules = types.SimpleNamespace(
        models=importlib.import_module("lib.models"),
        sr=importlib.import_module("lib.super_resolution"),
        main=importlib.import_module("main"),
    )
    yield modules
    for name in ("lib", "lib.models", "lib.super_resolution", "main"):
        sys.modules.pop(name, None)


def test_served_models_are_those_the_bundle_holds_or_those_named(app_modules, tmp_path):
    models = app_modules.models
    one, both = str(_bundle(tmp_path / "one", False)), str(_bundle(tmp_path / "both", True))
    assert models.served_models(one, {}) == ["fidelity"]
    assert models.served_models(both, {}) == ["fidelity", "perceptual"]
    assert models.served_models(both, {"models": "perceptual"}) == ["perceptual"]
    assert models.served_models(both, {"models": " fidelity , perceptual,fidelity"}) == ["fidelity", "perceptual"]
    with pytest.raises(ValueError, match=r"'gan' is not one of fidelity, perceptual"):
        models.served_models(both, {"models": "gan"})
    with pytest.raises(ValueError, match=r"models/perceptual/model.pt not found: the bundle holds no perceptual"):
        models.served_models(one, {"models": "perceptual"})
    assert models.MODELS["fidelity"].task == "super_resolution"  # the task name servers and clients already use
    assert models.MODELS["perceptual"].task == "super_resolution_perceptual"


def test_each_task_reads_its_model_calibration_and_estimator_from_its_folder(app_modules, tmp_path):
    bundle = str(_bundle(tmp_path, True))
    app = app_modules.main.SuperResolutionApp(str(APP), str(tmp_path / "studies"), {"bundle_path": bundle})
    assert sorted(app._infers) == ["super_resolution", "super_resolution_perceptual"]
    for task, folder in (("super_resolution", "models"), ("super_resolution_perceptual", "models/perceptual")):
        infer = app._infers[task]
        config = infer.bundle_config
        assert infer.model_path == os.path.join(bundle, folder, "model.pt")
        assert config.get_parsed_content("ckpt_path") == os.path.join(bundle, folder, "model.pt")
        assert config.get_parsed_content("calibration_path") == os.path.join(bundle, folder, "calibration.json")
        assert config.get_parsed_content("operator_estimator_path") == os.path.join(
            bundle, folder, "operator_estimator.pt"
        )
    assert "fidelity model (default)" in app._infers["super_resolution"].description
    perceptual = app._infers["super_resolution_perceptual"].description
    assert "random-slice VGG19" in perceptual and "never use it alone for diagnosis" in perceptual
    only = app_modules.main.SuperResolutionApp(str(APP), "", {"bundle_path": bundle, "models": "perceptual"})
    assert list(only._infers) == ["super_resolution_perceptual"]


def test_the_response_names_the_model_that_answered(app_modules):
    to_result = app_modules.sr.TrustToResultd(model="perceptual")
    out = to_result({"trust": {"units": "input"}, "result": {"latencies": 1}})
    assert out["result"] == {"latencies": 1, "trust": {"units": "input"}, "model": "perceptual"}
    assert "model" not in app_modules.sr.TrustToResultd()({"trust": {}})["result"]
