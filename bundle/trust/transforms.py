"""Inference post-processing that says how far to trust an SR volume: finiteness, data consistency, uncertainty.

Runs on one decollated item of the inference evaluator, in normalised intensities (before `RestoreIntensityd`):
    "image": the LR input (C, X, Y, Z), as the network saw it
    "pred":  the network output (C, sX, sY, sZ), or (2C, ...) = [SR | TTA std] from `bundle.trust.tta.TTAInferer`
and leaves "pred", "uncertainty" (TTA std, when computed), "consistency" (|D(SR) - LR| on the HR grid) and
"trust" (the per-volume summary of `bundle.trust.summary.trust_summary`) for the writer.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.core.choices import FOREGROUND_THRESHOLD
from bundle.core.errors import OutputError
from bundle.data.transforms import source_name
from bundle.trust.consistency import ConsistencyStep, estimator_fingerprint
from bundle.trust.record import CalibrationRecord, calibrated_uncertainty
from bundle.trust.summary import trust_summary
from bundle.trust.tta import written_sr

__all__ = ["CheckFiniteOutputd", "SplitUncertaintyd", "DataConsistencyd", "TrustSummaryd", "CalibrateUncertaintyd"]

logger = logging.getLogger(__name__)


class CheckFiniteOutputd(MapTransform):
    """Stop with one line naming the input when the network output holds NaN or Inf (nothing is written).

    A model whose weights went non-finite writes NaN volumes; a clinic must never receive one.
    """

    def __init__(self, keys: KeysCollection = "pred", ref_key: str = "image") -> None:
        super().__init__(keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            bad = int((~torch.isfinite(torch.as_tensor(d[key]))).sum())
            if bad:
                raise OutputError(
                    f"{source_name(d[self.ref_key])}: the super-resolved volume has {bad} non-finite voxel(s); "
                    "nothing was written for it. The model weights are probably broken: retrain or use another "
                    "--ckpt_path"
                )
        return d


class SplitUncertaintyd(MapTransform):
    """Split a [SR | std] output of `TTAInferer` (2C channels for a C-channel input) into "pred" and `std_key`.

    A no-op when the output has as many channels as the input (uncertainty off).
    """

    def __init__(self, keys: KeysCollection = "pred", ref_key: str = "image", std_key: str = "uncertainty") -> None:
        super().__init__(keys)
        self.ref_key, self.std_key = ref_key, std_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        channels = d[self.ref_key].shape[0]
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.shape[0] == 2 * channels:
                d[key], d[self.std_key] = pred[:channels], pred[channels:]
        return d


class DataConsistencyd(MapTransform):
    """Check (and optionally enforce) that the SR output, degraded again, gives back the LR input.

    mode "map": `consistency_key` gets |D(SR) - LR| on the HR grid (D = `operator`), where the output disagrees
    with what was measured. "project": also replaces the SR by SR + U(LR - D(SR)), so D(output) equals the
    input exactly (the map of the projected output is then ~0 and the map of the unprojected one is kept).
    "off": nothing. `operator` "auto" estimates D per volume (`bundle.trust.consistency`): the estimator at
    `estimator_path` reads k-space truncation against blur from the LR, the SR's consistency tells which blur; k-space
    truncation and the blur the output names are projected, each by its share and where it explains the output
    (`auto_weights`); what was done goes to
    `record_key` for the summary. Shapes: pred (C, sX, sY, sZ), LR (C, X, Y, Z).

    `step` is the configs' one `consistency_step` (`bundle.trust.consistency.ConsistencyStep`: mode, operator,
    scale, estimator), the one the evaluation and the calibration apply too.
    """

    def __init__(
        self,
        step: ConsistencyStep,
        keys: KeysCollection = "pred",
        lr_key: str = "image",
        consistency_key: str = "consistency",
        record_key: str = "consistency_step",
    ) -> None:
        super().__init__(keys)
        self.step = step
        self.lr_key, self.consistency_key, self.record_key = lr_key, consistency_key, record_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.step.mode == "off":
            return d
        lr = torch.as_tensor(d[self.lr_key]).float()
        for key in self.key_iterator(d):
            result = self.step(torch.as_tensor(d[key]).float(), lr)
            d[self.consistency_key], d[key], d[self.record_key] = result.residual, result.output, result.record()
            if result.estimate is not None:
                (logger.warning if result.estimate.agrees is False else logger.info)(
                    "%s: degradation estimated from the LR: %s", source_name(d[self.lr_key]), result.estimate.describe()
                )
        return d


class TrustSummaryd(MapTransform):
    """Per-volume trust summary under `summary_key`; logs one warning line when the input looks unusual.

    Uses `bundle.trust.summary.trust_summary` on the normalised SR, its TTA std and its consistency map (either may
    be absent) with the calibration stored beside the model (None: uncalibrated, said in the summary). `passes`
    (`@uncertainty`) gives "tta_passes" and "sr_output": which SR was written, "single" (the one network pass) or
    "tta_mean" (the mean of the passes, `bundle.trust.tta.written_sr`).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        std_key: str = "uncertainty",
        consistency_key: str = "consistency",
        ref_key: str = "image",
        calibration: CalibrationRecord | None = None,
        summary_key: str = "trust",
        foreground_threshold: float = FOREGROUND_THRESHOLD,
        record_key: str = "consistency_step",
        passes: int = 0,
    ) -> None:
        super().__init__(keys)
        self.std_key, self.consistency_key, self.ref_key = std_key, consistency_key, ref_key
        self.record_key, self.passes = record_key, passes
        self.calibration, self.summary_key = calibration, summary_key
        self.foreground_threshold = foreground_threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            sr = torch.as_tensor(d[key]).float()[None]
            std = d.get(self.std_key)
            residual = d.get(self.consistency_key)
            summary = trust_summary(
                sr,
                None if std is None else torch.as_tensor(std).float()[None].to(sr.device),
                None if residual is None else torch.as_tensor(residual).float()[None].to(sr.device),
                calibration=self.calibration,
                foreground_threshold=self.foreground_threshold,
            )
            summary["input"] = source_name(d[self.ref_key])
            summary["sr_output"] = written_sr(self.passes, self.calibration)
            summary["tta_passes"] = self.passes
            if self.record_key in d:
                summary["consistency_step"] = d[self.record_key]
            if summary["warning"]:
                logger.warning("%s: %s", summary["input"], summary["warning"])
            d[self.summary_key] = summary
        return d


class CalibrateUncertaintyd(MapTransform):
    """Turn the TTA std under `keys` into the calibrated error bound lambda * max(std, floor), the map users see.

    Without a calibration the raw std stays (and the summary says "calibration" is missing). A calibration made
    with another number of passes, another consistency mode or operator (those of `step`, the configs'
    `consistency_step`), or (operator "auto") another operator estimator file or none, does not hold for this run:
    the log says so once. Without a `step` only the passes are compared.
    """

    def __init__(
        self,
        keys: KeysCollection = "uncertainty",
        calibration: CalibrationRecord | None = None,
        passes: int = 0,
        step: ConsistencyStep | None = None,
    ):
        super().__init__(keys, allow_missing_keys=True)
        self.calibration = calibration
        if calibration is None:
            return
        operator, mode = (None, None) if step is None else (step.operator, step.mode)
        estimator_path = None if step is None else step.estimator_path
        estimator = None  # the estimator behind this run's "auto" choices, hashed only when the calibration names one
        if calibration.operator_estimator_sha256:
            estimator = (estimator_fingerprint(operator, mode, estimator_path) or "")[:12]
        checks = (  # (what the calibration recorded, what this run uses, the line that says they differ)
            (
                calibration.consistency_mode,
                mode,
                "uncertainty: the calibration was made for consistency {r}, this run uses {u}; the bound describes the "
                "other output (set --consistency {r}, or run calibrating again)",
            ),
            (
                calibration.consistency_operator,
                operator,
                "consistency: validation residuals were measured with the {r} operator, this run uses {u}; the "
                "out-of-distribution warning compares unlike residuals (set --consistency_operator {r})",
            ),
            (
                (calibration.operator_estimator_sha256 or "")[:12],
                estimator,
                "consistency: the calibration's projections were chosen by operator estimator {r}, this run's by {u} "
                "(sha256 prefixes); the bound describes other outputs (run calibrating again)",
            ),
            (
                calibration.tta_passes,
                passes,
                "uncertainty: the calibration was made with {r} passes, this run uses {u}; the bound is not calibrated "
                "for it (set --uncertainty {r})",
            ),
        )
        for recorded, used, line in checks:
            if recorded and used and recorded != used:
                logger.warning(line.format(r=recorded, u=used))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.calibration is None:
            return d
        for key in self.key_iterator(d):
            d[key] = calibrated_uncertainty(torch.as_tensor(d[key]), self.calibration)
        return d
