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

Trust: the bundle's postprocessing leaves the per-volume trust summary under "trust" (in the input's intensity
units, `units` says so); `TrustToResultd` copies it into "result", the dict MONAI Label's Writer returns as the
response JSON, beside its latencies. Uncertainty costs one network pass per test-time augmentation, so it runs
only when a request asks: `{"uncertainty": 8}` in the request's params (the calibration beside the model is for
8); without it, one pass (consistency map and summary only).

Models: `model="perceptual"` serves the bundle's perceptual model (models/perceptual/model.pt) with its own
calibration and operator estimator (the bundle's `ckpt_dir` set to that folder, `lib.models`); the response's
`result` names the model that answered (`"model": "fidelity"` or `"perceptual"`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from lib.models import MODELS, config_overrides, model_file
from monai.transforms import MapTransform, SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask


class TrustToResultd(MapTransform):
    """Copy the trust summary (`keys`, a dict) into `result_key`, the JSON MONAI Label answers a request with."""

    def __init__(self, keys: str = "trust", result_key: str = "result", model: str = "") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.result_key, self.model = result_key, model

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            result = dict(d.get(self.result_key) or {})
            result[key] = d[key]
            if self.model:
                result["model"] = self.model
            d[self.result_key] = result
        return d


def requested_passes(data: Mapping[str, Any] | None) -> int:
    """The request's `uncertainty` param as a number of TTA passes (0 when absent); one line on a bad value."""
    value = (data or {}).get("uncertainty", 0)
    try:
        passes = int(value)
    except (TypeError, ValueError):
        passes = -1
    if passes < 0 or str(value).strip() not in (str(passes), f"{passes}.0"):
        raise ValueError(f"uncertainty: expected 0 or a number of test-time augmentation passes, got {value!r}")
    return passes


class ModelConstants(BundleConstants):
    """MONAI Label's bundle constants with the weights of one of the bundle's models (`lib.models.model_file`)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def model_pytorch(self) -> str:
        return model_file(self.model)


class SuperResolution(BundleInferTask):
    def __init__(self, path: str, conf: dict[str, str], model: str = "fidelity", **kwargs) -> None:
        self.model = model
        super().__init__(
            path,
            conf,
            const=ModelConstants(model),
            type=InferType.OTHERS,
            add_post_restore=False,
            post_filter=[SaveImaged],
            load_strict=True,
            **kwargs,
        )
        if getattr(self, "bundle_config", None) is not None:  # the model's folder: its calibration and estimator
            self.bundle_config.update(config_overrides(path, model))
        self.description = MODELS[model].description

    def post_transforms(self, data=None):
        """The bundle's postprocessing (trust maps, intensity restore, SR affine) and then the channel axis dropped.

        One channel only: the bundle's default modality_channel (0) gives one.
        """
        return [
            *super().post_transforms(data),
            SqueezeDimd(keys=self.key_pred, dim=0),
            TrustToResultd(model=self.model),
        ]

    def inferer(self, data=None):
        """The bundle's inferer, under `uncertainty` test-time augmentations when the request asks for them."""
        from bundle.trust.tta import make_sr_inferer

        base = super().inferer(data)
        scale = self.bundle_config.get_parsed_content("scale")
        calibration = self.bundle_config.get_parsed_content("calibration")
        return make_sr_inferer(base, scale, requested_passes(data), calibration)
