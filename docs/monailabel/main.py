"""A minimal MONAI Label app serving the SR bundle for inference (and training through MONAI Label's bundle
train task). Start with:

    monailabel start_server --app docs/monailabel --studies /path/to/images --conf bundle_path .
"""

from __future__ import annotations

import logging
import os

from lib.super_resolution import SuperResolution
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class SuperResolutionApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        default_bundle = os.path.abspath(os.path.join(app_dir, "..", ".."))
        self.bundle_path = conf.get("bundle_path", default_bundle)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="sr-bundle", version="0.1.0")

    def init_infers(self):
        return {"super_resolution": SuperResolution(self.bundle_path, self.conf)}

    def init_trainers(self):
        return {"super_resolution": BundleTrainTask(self.bundle_path, self.conf)}
