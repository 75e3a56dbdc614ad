"""One orientation before the network, the input's own after: the SR must not depend on how an array is stored.

The same scan can reach inference as arrays stored in any of 48 axis orders and directions (a NIfTI written
LAS or RAS, a DICOM series read in LPS and converted, a volume saved z-flipped). The network is not equivariant
to flips and axis swaps, so without a common orientation the same scan gives different SR volumes. The demo volumes
(MNI-derived) are stored RAS, so training saw RAS arrays, and inference brings every input
to RAS (`ToTrainingOrientationd`, before the network) and the outputs back to the input's stored orientation
(`RestoreOrientationd`, after `SuperResolutionAffined`): the output arrays line up voxel for voxel with the input.
Training does not reorient: a model trained on volumes stored otherwise should pass their code as `axcodes`.

Both only flip and permute array axes (MONAI's `Orientation`), which is exact; the affine changes with them so
the world position of every voxel is kept. Volumes are channel-first MetaTensors (C, X, Y, Z).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation

__all__ = ["TRAINING_AXCODES", "ORIGINAL_AXCODES_KEY", "axcodes_of", "ToTrainingOrientationd", "RestoreOrientationd"]

TRAINING_AXCODES = "RAS"
ORIGINAL_AXCODES_KEY = "sr_original_axcodes"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # axcodes_of reads affines in RAS world space


def axcodes_of(affine: torch.Tensor | np.ndarray) -> str:
    """The orientation code ('RAS', 'LPS', 'ASL', ...) of a (4, 4) voxel-to-world affine in RAS world space."""
    return "".join(nib.orientations.aff2axcodes(np.asarray(torch.as_tensor(affine, dtype=torch.float64))))


def _reorient(img: Any, axcodes: str) -> Any:
    """`img` (C, X, Y, Z) MetaTensor flipped/permuted to `axcodes`; the same object when it already is."""
    if not isinstance(img, MetaTensor) or axcodes_of(img.affine) == axcodes:
        return img
    out = Orientation(axcodes=axcodes, labels=RAS_LABELS)(img)
    assert isinstance(out, MetaTensor)  # a MetaTensor in, a MetaTensor out
    # Orientation records an invertible operation; the restore here is explicit, so drop the record (it would
    # otherwise travel into the writer and MONAI Label's inverse and be undone twice)
    out.applied_operations = list(getattr(img, "applied_operations", []))
    return out


class ToTrainingOrientationd(MapTransform):
    """Reorient `keys` to the training orientation (RAS) and remember the stored one in the meta data.

    Shapes: (C, X, Y, Z) -> (C, X', Y', Z'), the same voxels in another axis order; the stored orientation code
    goes to `meta["sr_original_axcodes"]` for `RestoreOrientationd`.
    """

    def __init__(self, keys: KeysCollection, axcodes: str = TRAINING_AXCODES, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        pairs = [next((i for i, p in enumerate(("LR", "AP", "SI")) if c in p), -1) for c in axcodes.upper()]
        if len(axcodes) != 3 or sorted(pairs) != [0, 1, 2]:
            raise ValueError(f"axcodes must be a three-letter orientation code such as 'RAS', got {axcodes!r}")
        self.axcodes = axcodes.upper()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                continue
            original = axcodes_of(img.affine)
            out = _reorient(img, self.axcodes)
            out.meta[ORIGINAL_AXCODES_KEY] = original
            d[key] = out
        return d


class RestoreOrientationd(MapTransform):
    """Bring `keys` (SR grid MetaTensors, (C, sX, sY, sZ)) back to the orientation `ref_key` was stored in.

    Reads `meta["sr_original_axcodes"]` of `ref_key` (set by `ToTrainingOrientationd`); a no-op without it.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        original = getattr(d.get(self.ref_key), "meta", {}).get(ORIGINAL_AXCODES_KEY)
        if not original:
            return d
        for key in self.key_iterator(d):
            d[key] = _reorient(d[key], str(original))
        return d
