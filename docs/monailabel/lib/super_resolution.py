"""MONAI Label infer task for the SR bundle: the bundle's own task, minus the restore step, plus a squeeze.

MONAI Label's BundleInferTask, by default, appends a step that resizes the prediction back to the input
size with nearest-neighbour interpolation, which would undo the super-resolution. This task turns that
step off and drops the bundle's SaveImaged (MONAI Label writes the result itself).

With the restore step off, nothing removes the channel axis any more: the prediction reaches MONAI Label's
Writer as (1, sX, sY, sZ) (s the bundle's per-axis scale: 4 in every axis, or [1, 1, 4] for thick slices),
which it hands to ITK as a 4-D image with a 3-D direction matrix, and the request fails with HTTP 500.
SqueezeDimd(dim=0) makes it (sX, sY, sZ); the affine (spacing / s, the same field of view) set by the bundle's
SuperResolutionAffined is kept, and the Writer saves it as the result volume. The bundle's writer
(`bundle.inference.writer.SaveSROutputsd`) is a SaveImaged, so `post_filter` drops it too.
"""

from __future__ import annotations

from monai.transforms import SaveImaged, SqueezeDimd
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
        self.description = "3D super-resolution (RRDB-GAN); output grid `scale` times finer than the input"

    def post_transforms(self, data=None):
        """The bundle's postprocessing (trust maps, intensity restore, SR affine) and then the channel axis dropped.

        One channel only: the bundle's default modality_channel (0) gives one.
        """
        return [*super().post_transforms(data), SqueezeDimd(keys=self.key_pred, dim=0)]
