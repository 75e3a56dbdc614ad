"""A minimal MONAI Label app serving the SR bundle for inference (and training through MONAI Label's bundle
train task).

In the repository (bundle = the repository root, two levels up):
    monailabel start_server --app docs/monailabel --studies /path/to/images --conf bundle_path .
In an exported bundle (scripts/export_bundle.py puts this app in <bundle>/monailabel):
    monailabel start_server --app dist/<name>/monailabel --studies /path/to/images

One infer task per model the bundle holds (lib/models.py): `super_resolution`, the fidelity model (models/model.pt,
the default), and `super_resolution_perceptual` when the bundle holds models/perceptual/model.pt; `--conf models
perceptual` (or `fidelity`) serves only the models named.
"""

from __future__ import annotations

import json
import logging
import os

from lib.models import MODELS, served_models
from lib.super_resolution import SuperResolution
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


def find_bundle(app_dir: str, conf: dict[str, str]) -> str:
    """The bundle to serve: `--conf bundle_path DIR`, else the nearest folder above the app that holds
    configs/inference.json (the exported bundle one level up, the repository two levels up).

    The bundle must hold models/model.pt: MONAI Label would otherwise skip the model without an error and
    the server would start with nothing to serve.
    """
    if conf.get("bundle_path"):
        path = os.path.abspath(conf["bundle_path"])
    else:
        candidates = [os.path.abspath(os.path.join(app_dir, *[".."] * n)) for n in (1, 2)]
        found = [c for c in candidates if os.path.isfile(os.path.join(c, "configs", "inference.json"))]
        if not found:
            raise ValueError(f"{app_dir}: no bundle above the app; pass --conf bundle_path <bundle folder>")
        path = found[0]
    if not os.path.isfile(os.path.join(path, "configs", "inference.json")):
        raise ValueError(f"{path}: configs/inference.json not found; --conf bundle_path must name a bundle folder")
    if not os.path.isfile(os.path.join(path, "models", "model.pt")):
        raise ValueError(f"{path}: models/model.pt not found; train a model or export one (scripts/export_bundle.py)")
    return path


class SuperResolutionApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_path = find_bundle(app_dir, conf)
        with open(os.path.join(self.bundle_path, "configs", "metadata.json")) as f:
            version = json.load(f).get("version", "0")
        logger.info("serving the bundle at %s (version %s)", self.bundle_path, version)
        self.models = served_models(self.bundle_path, conf)
        logger.info("models served: %s", ", ".join(f"{MODELS[m].task} ({m})" for m in self.models))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="sr-bundle", version=version)

    def init_infers(self):
        return {MODELS[m].task: SuperResolution(self.bundle_path, self.conf, model=m) for m in self.models}

    def init_trainers(self):
        return {"super_resolution": BundleTrainTask(self.bundle_path, self.conf)}
