"""A thick-slice input to `run inference`: said in one log line and in the trust summary.

Inference upsamples every axis by `scale`, so a scan with 5 mm slices and 1 mm pixels (x4) comes out at
0.25 x 0.25 x 1.25 mm, still five times coarser across the slices. `run adapting` (configs/adapt.json) is the tool
for such a scan. The rule is the adapting workflow's (`bundle.core.geometry.THICK_SLICE_MIN_RATIO`, the largest
spacing over the mean in-plane spacing), applied to the output: a model trained for thick slices (a per-axis scale
such as [1, 1, 4]) whose output is near isotropic is not warned about.

`validated_datalist` runs this once per input, before anything is inferred, and keeps the result on the item under
`SPACING_KEY` (JSON text, which survives MONAI's collation unchanged); the writer puts it in `<name>_sr.json`
(`spacing_summary`: "input_spacing_mm", "spacing_warning").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

from bundle.core.geometry import THICK_SLICE_MIN_RATIO, ensure_scale3, slice_ratio

__all__ = ["SPACING_KEY", "thick_slice_warning", "spacing_record", "spacing_summary"]

SPACING_KEY = "sr_input_spacing"


def _spacing(affine: Any) -> list[float]:
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return [float(v) for v in np.linalg.norm(a, axis=0)]


def _text(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _spacings(image: Any, scale: int | Sequence[int]) -> tuple[list[float], list[float]]:
    """(the input's spacing, the output's) in mm, in the input's stored axis order.

    `image` is the preprocessed input: its affine is the training orientation's (RAS), which `scale` applies to;
    "original_affine" in its meta data (when the loader recorded it) is the stored one.
    """
    scale3 = ensure_scale3(scale)
    meta = getattr(image, "meta", None) or {}
    current = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    stored = np.asarray(meta.get("original_affine", current), dtype=np.float64)
    if stored.ndim == 3:  # still batched
        stored = stored[0]
    spacing = _spacing(stored)
    # stored axis i lies along world (RAS) axis ornt[i, 0], which is the training orientation's axis of that index
    ornt = io_orientation(stored)
    out = [sp / scale3[int(ornt[i, 0])] for i, sp in enumerate(spacing)]
    return spacing, out


def thick_slice_warning(image: Any, source: str, scale: int | Sequence[int]) -> str | None:
    """One line when the SR of `image` (a preprocessed input MetaTensor) would still be thick-slice, else None."""
    spacing, out = _spacings(image, scale)
    if not all(v > 0 for v in spacing):
        return None
    _, ratio = slice_ratio(out)
    if ratio < THICK_SLICE_MIN_RATIO:
        return None
    _, input_ratio = slice_ratio(spacing)
    return (
        f"{source}: voxel spacing {_text(spacing)} mm is thick-slice (largest / in-plane spacing {input_ratio:.3g} >= "
        f"{THICK_SLICE_MIN_RATIO}); inference gives it {_text(out)} mm, still {ratio:.3g}x coarser across the "
        "slices; `run adapting` (per-scan thick-slice SR, configs/adapt.json) is the tool for thick slices"
    )


def spacing_record(image: Any, source: str, scale: int | Sequence[int]) -> str:
    """JSON text for the item: the input's spacing (mm, stored axis order) and the warning (or null)."""
    spacing, _ = _spacings(image, scale)
    return json.dumps(
        {
            "input_spacing_mm": [round(v, 6) for v in spacing],
            "spacing_warning": thick_slice_warning(image, source, scale),
        }
    )


def spacing_summary(item: Mapping[Any, Any]) -> dict[str, Any]:
    """{"input_spacing_mm", "spacing_warning"} for the trust summary from an item ({} when nothing was checked)."""
    record = item.get(SPACING_KEY)
    if isinstance(record, (list, tuple)) and len(record) == 1:  # still batched
        record = record[0]
    return dict(json.loads(record)) if isinstance(record, str) else {}
