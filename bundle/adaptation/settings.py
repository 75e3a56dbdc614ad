"""What `run adapting` is told, in the groups the workflow uses them in: the scan's intensities, its slice profile,
the generator adapted to it, the checks and post-processing its output gets, and where the results go.

Why groups and not one long list: each group is one step of the workflow (see `bundle.adaptation.workflow`), so
configs/adapt.json reads like the data flow and no component takes more than ten arguments. Each field keeps the
name of the argument it was, and the config passes each its user setting (`"uncertainty": "@uncertainty"`), so a
command-line id names one setting from the command line to the code. Defaults are the configs' values; each group
checks its own settings when it is built, in one ConfigError line that names the config id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bundle.adaptation.fit import FitSettings
from bundle.adaptation.geometry import PROFILES
from bundle.adaptation.predict import SLAB_FLIPS
from bundle.core.choices import CONSISTENCY_MODES, FOREGROUND_THRESHOLD, OUTPUT_FORMATS
from bundle.core.errors import ConfigError
from bundle.trust.units import nonnegative_applies

__all__ = ["IntensitySettings", "ProfileSettings", "GeneratorSettings", "TrustSettings", "OutputSettings"]


def _set(group: Any, **values: Any) -> None:
    """Store normalised values on a frozen group while it is built (`__post_init__`): the workflow reads them as-is."""
    for name, value in values.items():
        object.__setattr__(group, name, value)


@dataclass(frozen=True)
class IntensitySettings:
    """How the scan's intensities are scaled to [0, 1] (inference's robust percentiles and outlier guard) and which
    scaled voxels count as foreground in the uncertainty's calibration. Config ids as the fields (inference.json)."""

    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    foreground_threshold: float = FOREGROUND_THRESHOLD

    def __post_init__(self) -> None:
        percentiles = tuple(float(p) for p in self.intensity_percentiles)
        _set(self, intensity_percentiles=percentiles, foreground_threshold=float(self.foreground_threshold))


@dataclass(frozen=True)
class ProfileSettings:
    """The slice profile the user tells: `slice_profile` "auto" leaves the shape to the header and the scan itself,
    `slice_thickness` None the width (mm) likewise (`bundle.adaptation.profile.choose_profile`)."""

    slice_profile: str = "auto"
    slice_thickness: float | None = None

    def __post_init__(self) -> None:
        if self.slice_profile != "auto" and self.slice_profile not in PROFILES:
            raise ConfigError(f"slice_profile must be 'auto' or one of {tuple(PROFILES)}, got {self.slice_profile!r}")
        if self.slice_thickness is not None and not float(self.slice_thickness) > 0:
            raise ConfigError(f"slice_thickness must be > 0 mm, got {self.slice_thickness}")


@dataclass(frozen=True)
class GeneratorSettings:
    """The generator adapted to the scan: its size (`network_kwargs`: config id adapt_network), how it is trained
    (`fit_settings`: adapt_fit, checked here as `fit`), the perceptual term's weights (adapt_vgg_weights) and where
    it starts (`warm_start`: a weights file, "auto" for the prior of `priors_dir` (adapt_priors_dir) that fits the
    scan, None from scratch)."""

    network_kwargs: dict[str, Any] | None = None
    fit_settings: dict[str, Any] | None = None
    perceptual_weights: str = "random"
    warm_start: str | None = None
    priors_dir: str | None = None
    fit: FitSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, warm_start=self.warm_start or None, fit=FitSettings(**(self.fit_settings or {})))


@dataclass(frozen=True)
class TrustSettings:
    """What the adapted model's output is checked and post-processed with: the in-plane images held out to judge
    it against cubic B-spline and calibrate its bound (`held_out_fraction`), the test-time passes (`uncertainty`)
    and turned predictions averaged (`predict_rotations`), the bound's coverage target, and inference's
    consistency step and non-negative rule."""

    held_out_fraction: float = 0.3
    uncertainty: int = 4
    predict_rotations: int = 1
    coverage_target: float = 0.9
    consistency: str = "project"
    nonnegative: str = "auto"

    def __post_init__(self) -> None:
        _set(self, held_out_fraction=float(self.held_out_fraction), coverage_target=float(self.coverage_target))
        if not 1 <= self.uncertainty <= len(SLAB_FLIPS):
            raise ConfigError(
                f"uncertainty: per-scan adaptation has 1 to {len(SLAB_FLIPS)} TTA passes, got {self.uncertainty}"
            )
        _set(self, uncertainty=int(self.uncertainty))
        if not (isinstance(self.predict_rotations, int) and self.predict_rotations >= 0):
            raise ConfigError(f"predict_rotations must be an integer >= 0, got {self.predict_rotations!r}")
        if self.consistency not in CONSISTENCY_MODES:
            raise ConfigError(f"consistency must be one of {CONSISTENCY_MODES}, got {self.consistency!r}")
        try:
            nonnegative_applies(self.nonnegative)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass(frozen=True)
class OutputSettings:
    """Where and how the results are written: the folder, the SR's format (a DICOM series needs one as input),
    whether earlier outputs of the same name are replaced, and the model version the summary and DICOM name."""

    output_dir: str
    output_format: str = "nifti"
    overwrite: bool = False
    model_version: str = ""

    def __post_init__(self) -> None:
        _set(self, overwrite=bool(self.overwrite))
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
