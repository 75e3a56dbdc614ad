"""A simulated acquisition (`Case`, written by the thick step) and what a method needs to run on it (`Plan`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bundle.evaluation.peers.simulation import load_nifti


@dataclass
class Case:
    """One simulated acquisition: where its files are and how it was made."""

    scan: str
    setting: str
    folder: Path  # holds hr.nii.gz, thick.nii.gz, setting.json
    axis: int
    factor: float
    profile: str
    meta: dict = field(default_factory=dict)
    thickness: float | None = None  # the profile's width in thin voxels (FWHM / box width); None: the factor

    @property
    def profile_width(self) -> float:
        """The slice profile's width in thin voxels: FWHM for Gaussian, full width for box."""
        return float(self.factor if self.thickness is None else self.thickness)

    @property
    def thickness_mm(self) -> float:
        """The slice thickness in mm: `profile_width` times the HR reference's spacing along the slice axis."""
        return self.profile_width * float(load_nifti(self.hr).header.get_zooms()[self.axis])

    @property
    def thick(self) -> Path:
        return self.folder / "thick.nii.gz"

    @property
    def hr(self) -> Path:
        return self.folder / "hr.nii.gz"


@dataclass
class Plan:
    """What a method needs to run: a command (or None when it cannot run here) and where its output will be."""

    cmd: Sequence[str] | str | None
    output: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    note: str = ""
    unavailable: str = ""


def load_cases(
    output_dir: str | Path, settings: Sequence[str] | None = None, scans: Sequence[str] | None = None
) -> list[Case]:
    """The simulated acquisitions under <output_dir>/thick, optionally only some settings / scans."""
    cases = []
    for meta_path in sorted(Path(output_dir).glob("thick/*/*/setting.json")):
        meta = json.loads(meta_path.read_text())
        if settings and meta["setting"] not in settings:
            continue
        if scans and meta["scan"] not in scans:
            continue
        case = Case(
            meta["scan"],
            meta["setting"],
            meta_path.parent.resolve(),
            meta["axis"],
            meta["factor"],
            meta["profile"],
            meta,
            meta.get("thickness"),  # written before gap settings existed: as wide as the factor
        )
        cases.append(case)
    return cases
