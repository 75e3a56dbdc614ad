"""What a scan's header says about its slices: SliceThickness and SpacingBetweenSlices.

A DICOM series carries both (tags (0018,0050) and (0018,0088), read from its first file); a NIfTI converted by
dcm2niix carries them in its BIDS sidecar (`<name>.json` beside `<name>.nii.gz`). NIfTI headers themselves have
no slice thickness (pixdim is the spacing). The per-scan workflow takes the header's thickness before its own
estimate and warns when the two disagree (`bundle.adaptation.profile.choose_profile`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.data.datalist import split_image_suffix

__all__ = ["SliceHeader", "dicom_slice_header", "sidecar_slice_header"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceHeader:
    """Slice thickness and spacing between slices (mm, None when absent) and where they were read."""

    slice_thickness: float | None
    spacing_between_slices: float | None
    where: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "slice_thickness_mm": self.slice_thickness,
            "spacing_between_slices_mm": self.spacing_between_slices,
            "read_from": self.where,
        }


def _positive(value: Any) -> float | None:
    """A header value as a positive finite float, or None (absent, empty, zero or not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def dicom_slice_header(first_file: str | Path) -> SliceHeader | None:
    """SliceThickness and SpacingBetweenSlices of a DICOM series' first file; None when it has neither."""
    from bundle.data.dicom_series import read_header

    try:
        ds = read_header(first_file)
    except ValueError:
        return None
    header = SliceHeader(
        _positive(ds.get("SliceThickness")), _positive(ds.get("SpacingBetweenSlices")), f"DICOM {first_file}"
    )
    return header if header.slice_thickness or header.spacing_between_slices else None


def sidecar_slice_header(image_file: str | Path) -> SliceHeader | None:
    """The same from a BIDS sidecar `<name>.json` beside `<name>.nii[.gz]` (what dcm2niix writes); None when there
    is no sidecar, it is not JSON, or it has neither key."""
    path = Path(image_file)
    sidecar = path.with_name(split_image_suffix(path.name)[0] + ".json")
    if not sidecar.is_file():
        return None
    try:
        fields = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        logger.warning("%s: not read as a JSON sidecar (%s); its slice thickness is not used", sidecar, err)
        return None
    if not isinstance(fields, dict):
        return None
    header = SliceHeader(
        _positive(fields.get("SliceThickness")), _positive(fields.get("SpacingBetweenSlices")), f"sidecar {sidecar}"
    )
    return header if header.slice_thickness or header.spacing_between_slices else None
