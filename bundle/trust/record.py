"""The calibration record: what a conformal calibration found (lambda, coverage, passes, operator, warning
thresholds), saved beside the model it belongs to and checked when it is used.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from bundle.core.atomic import write_text_atomic
from bundle.core.errors import CalibrationError


@dataclass
class CalibrationRecord:
    """What inference needs to turn TTA std into a calibrated error bound, and to flag unusual inputs.

    lam: conformal multiplier (JSON key "lambda"); coverage_target / coverage_reached: wanted and measured on the
    calibration voxels; tta_passes: passes the std was computed with (the bound holds for that number only);
    std_floor: floor under the std in the bound; num_voxels / num_volumes: calibration sample; sr_output: which
    output was calibrated ("single" pass or "tta_mean"); consistency_residual_mean / _max: over validation volumes
    of the per-volume foreground mean |D(SR) - LR| (None when not measured); fraction_above_bound_max: largest
    per-volume fraction of voxels whose residual exceeded the bound on validation (None when not measured);
    consistency_operator: the operator those residuals were measured with (they compare only with its own);
    consistency_mode: the `consistency` mode of the output the bound was calibrated on ("project" calibrates the
    projected output; None: not recorded, calibrations before 0.6.0);
    ood_fraction_threshold / ood_residual_threshold: the out-of-distribution warning's thresholds on the fraction
    of voxels above the bound and on the mean residual, fitted on shifted validation volumes (`bundle.trust.ood`; None:
    not fitted, the fixed rule of `ood_warning` applies);
    operator_estimator_sha256: the operator estimator whose choices the bound and residuals were calibrated with
    (consistency_operator "auto"; NO_ESTIMATOR: auto without one, nothing projected; None: a fixed operator, mode
    "off", or a calibration before 0.6.1);
    error_variance_ratio: mean |SR - HR|^2 over mean max(std, floor)^2 on the calibration voxels, the squared error
    one unit of TTA variance means, which `ensemble_shrink` needs (None: not measured; the per-scan workflow
    records it).
    """

    lam: float
    coverage_target: float
    coverage_reached: float
    tta_passes: int
    std_floor: float
    num_voxels: int
    num_volumes: int
    sr_output: str = "single"
    consistency_residual_mean: float | None = None
    consistency_residual_max: float | None = None
    fraction_above_bound_max: float | None = None
    consistency_operator: str | None = None
    consistency_mode: str | None = None
    ood_fraction_threshold: float | None = None
    ood_residual_threshold: float | None = None
    operator_estimator_sha256: str | None = None
    error_variance_ratio: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationRecord:
        d = dict(d)
        if "lambda" in d:
            d["lam"] = d.pop("lambda")
        missing = [("lambda" if n == "lam" else n) for n in _REQUIRED if n not in d]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in d.items() if k in names})
        if not (isinstance(record.lam, (int, float)) and math.isfinite(record.lam) and record.lam > 0):
            raise ValueError(f"lambda must be a positive finite number, got {record.lam!r}")
        if not (isinstance(record.tta_passes, int) and record.tta_passes >= 1):
            raise ValueError(f"tta_passes must be a positive int, got {record.tta_passes!r}")
        return record


NO_ESTIMATOR = "none"  # operator_estimator_sha256 of a calibration made with "auto" and no estimator file


_REQUIRED = ("lam", "coverage_target", "coverage_reached", "tta_passes", "std_floor", "num_voxels", "num_volumes")


def save_calibration(path: str | os.PathLike, record: CalibrationRecord) -> Path:
    """Write `record` as JSON atomically (temp file in the same folder, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record.to_dict(), indent=4))
    return path


def load_calibration(path: str | os.PathLike) -> CalibrationRecord | None:
    """The record saved at `path`; None when the file does not exist (uncertainty stays uncalibrated).

    Raises CalibrationError naming the file when it is unreadable, not JSON, or lacks fields.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return CalibrationRecord.from_dict(data)
    except (OSError, ValueError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CalibrationError(f"{path}: not a usable uncertainty calibration ({first})") from None


def calibrated_uncertainty(std: torch.Tensor, calibration: CalibrationRecord) -> torch.Tensor:
    """lambda * max(std, floor): the calibrated error bound per voxel (same shape as std)."""
    return calibration.lam * std.float().clamp_min(calibration.std_floor)


def ensemble_shrink(
    std: torch.Tensor, spread: torch.Tensor, members: int, calibration: CalibrationRecord, mask: torch.Tensor
) -> float:
    """The factor on `calibrated_uncertainty` for an average of `members` predictions when the calibration measured
    single ones (held-out images have one orientation; the scan's output averages orientations and turns).

    The average's squared error is the members' mean squared error less their spread about the average (the
    ambiguity decomposition, exact per voxel; spread = mean_k (f_k - mean)^2 needs no reference). Over the `mask`
    the members' mean squared error is predicted as on calibration, r * mean(max(std, floor)^2) with r =
    `error_variance_ratio`, so the average's is that less mean(spread), and the bound shrinks by the square root of
    their ratio. It is global on purpose: per voxel the spread is a noisy draw that says little about the average's
    own error (for Gaussian members the two are independent), and a bound shrunk voxel by voxel under-covers. At
    most 1; and 1 (no narrowing) when the spread would leave the average less error than members with independent
    errors could (a share below 1 / members): the calibration then under-predicts the members' error here, and
    nothing it says may narrow the bound.

    std, spread, mask: the output's TTA std, members' spread and foreground, same shape; raises ValueError when the
    record has no error_variance_ratio."""
    ratio = calibration.error_variance_ratio
    if ratio is None or not ratio > 0:
        raise ValueError("the calibration has no error_variance_ratio: an ensemble's bound needs it")
    if members < 1:
        raise ValueError(f"an ensemble has at least one member, got {members}")
    if not mask.any():
        return 1.0
    members_error = ratio * float(std.double().clamp_min(calibration.std_floor)[mask].square().mean())
    share = 1.0 - float(spread.double()[mask].mean()) / members_error if members_error > 0 else 1.0
    return math.sqrt(min(share, 1.0)) if share >= 1.0 / members else 1.0
