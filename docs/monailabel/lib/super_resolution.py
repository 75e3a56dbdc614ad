"""MONAI Label infer task for the SR bundle: the bundle's own task, minus the restore step.

MONAI Label's BundleInferTask, by default, appends a step that resizes the prediction back to the input
size with nearest-neighbour interpolation, which would undo the super-resolution. This task turns that
step off and drops the bundle's SaveImaged (MONAI Label writes the result itself).
"""

from __future__ import annotations

from monai.transforms import SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask


class SuperResolution(BundleInferTask):
    def __init__(self, path: str, conf: dict[str, str], **kwargs) -> None:
        super().__init__(
            path,
            conf,
            type=InferType.OTHERS,
            add_post_restore=False,
            post_filter=[SaveImaged],
            load_strict=True,
            **kwargs,
        )
        self.description = "3D x4 super-resolution (RRDB-GAN); output grid is 4x finer than the input"
