"""Calibrate the model's test-time-augmentation uncertainty on the held-out validation volumes, after training.

    python -m monai.bundle run calibrating --config_file "['configs/train.json','configs/calibrate.json']"

Each validation HR volume is degraded by every method of `eval_lr_methods` (the mix a user's scan may come from),
super-resolved by the model runner with its `uncertainty` augmentations, and scored: the conformal factor lambda
such that `coverage_target` of the foreground voxels have |SR - HR| <= lambda * std is stored with the model
(models/calibration.json), with the consistency residuals seen on validation, which inference uses to flag inputs
unlike the training data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from bundle.core.atomic import write_text_atomic
from bundle.core.progress import VolumeProgress
from bundle.data.datalist import iter_hr_volumes
from bundle.data.degradation import check_evaluation_methods, evaluation_lr
from bundle.trust.conformal import calibrate_volumes
from bundle.trust.consistency import ConsistencyStep, estimator_fingerprint
from bundle.trust.ood import VolumeTrust, fit_ood_thresholds, measure_volume, shifted_pairs
from bundle.trust.record import save_calibration
from bundle.trust.runner import ModelRunner

__all__ = ["UncertaintyCalibration"]

logger = logging.getLogger(__name__)


class UncertaintyCalibration:
    """Runs the calibration over `datalist` (validation items; `transform` gives the normalised, padded HR).

    Args:
        model_runner: the trained generator as inference runs it (`bundle.trust.runner.ModelRunner`: weights,
            device, inferer, autocast, and its `uncertainty` TTA passes, which inference must use too).
        consistency_step: inference's data-consistency step (`bundle.trust.consistency.ConsistencyStep`): the bound
            is calibrated on the errors of what it writes (projected or not), the residuals are of the SR before it.
        calibration_path: the calibration JSON written beside the model.
        eval_lr_methods: degradations each validation volume is calibrated under.
        coverage_target: the fraction of foreground voxels the calibrated bound must cover.
        foreground_threshold: HR intensity above which a voxel counts as foreground.
        ood_shifts: distribution shifts (`bundle.trust.ood.SHIFTS`) each validation volume is also run under, to fit
            the out-of-distribution warning's thresholds (empty: the warning keeps its fixed rule).
        sr_output: "best" keeps the TTA mean when it beats the single pass on validation, else the single pass.
    """

    def __init__(
        self,
        datalist: list[dict],
        transform: Callable[[dict], dict],
        model_runner: ModelRunner,
        consistency_step: ConsistencyStep,
        calibration_path: str,
        eval_lr_methods: Sequence[str],
        coverage_target: float,
        foreground_threshold: float,
        ood_shifts: Sequence[str],
        sr_output: str = "best",
    ) -> None:
        if not 0 < coverage_target < 1:
            raise ValueError(f"coverage_target must be in (0, 1), got {coverage_target}")
        self.datalist, self.transform = datalist, transform
        self.runner, self.step = model_runner, consistency_step
        self.output_path = Path(calibration_path)
        self.scale = model_runner.scale
        self.lr_methods = check_evaluation_methods(eval_lr_methods)
        self.passes, self.coverage, self.sr_output = model_runner.uncertainty, coverage_target, sr_output
        self.foreground_threshold = foreground_threshold
        self.ood_shifts = tuple(ood_shifts)

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(HR (1, C, sX, sY, sZ), LR (1, C, X, Y, Z)) for every validation volume and degradation."""
        for case, hr in iter_hr_volumes(self.transform, self.datalist):
            for method in self.lr_methods:
                yield hr, evaluation_lr(hr[0], self.scale, method, case)[None]

    def _ood_rows(self, record, predict, consistency) -> list[VolumeTrust]:
        """Coverage and the warning's two numbers for every validation volume x shift x degradation.

        The volumes are read again, one at a time, rather than kept from `_pairs`: a validation set of many large
        volumes would otherwise sit in memory through the whole calibration, for the time of one extra read each."""
        items = iter_hr_volumes(self.transform, self.datalist)
        total = len(self.datalist) * len(self.ood_shifts) * len(self.lr_methods)
        progress = VolumeProgress("calibrating the out-of-distribution warning", total, unit="volume")
        rows = []
        for case, shift, method, hr, lr in shifted_pairs(items, self.ood_shifts, self.lr_methods, self.scale):
            cov, above, residual = measure_volume(hr, lr, predict, consistency, record, self.scale, self.passes)
            rows.append(VolumeTrust(case, shift, method, cov, above, residual))
            progress.step(f"{case} {shift} {method}: coverage {cov:.1%}")
        return rows

    @torch.no_grad()
    def run(self) -> dict:
        self.runner.load()
        on_device = self.runner.predictor("calibrating")

        def predict(lr: torch.Tensor) -> torch.Tensor:
            return on_device(lr).cpu()

        record, report = calibrate_volumes(
            self._pairs(),
            predict,
            self.step.output_and_residual,
            self.scale,
            passes=self.passes,
            target=self.coverage,
            sr_output=self.sr_output,
            foreground_threshold=self.foreground_threshold,
        )
        record = dataclasses.replace(
            record,
            consistency_operator=self.step.operator,
            consistency_mode=self.step.mode,
            operator_estimator_sha256=estimator_fingerprint(
                self.step.operator, self.step.mode, self.step.estimator_path
            ),
        )
        if self.ood_shifts:
            rows = self._ood_rows(record, predict, self.step.output_and_residual)
            fit = fit_ood_thresholds(rows, self.coverage)
            record = dataclasses.replace(
                record,
                ood_fraction_threshold=fit["fraction_threshold"],
                ood_residual_threshold=fit["residual_threshold"],
            )
            report["ood_fit"] = fit
            report["ood_rows"] = [dataclasses.asdict(r) for r in rows]
            logger.info("out-of-distribution warning fitted on %d shifted validation volume(s): %s", len(rows), fit)
        save_calibration(self.output_path, record)
        report_path = self.output_path.with_name(self.output_path.stem + "_report.json")
        write_text_atomic(report_path, json.dumps(report, indent=4))
        logger.info(
            "uncertainty calibrated on %d volume(s) x %d degradation(s): lambda %.3f for %.0f%% coverage "
            "(reached %.1f%%), output %s; written to %s",
            len(self.datalist),
            len(self.lr_methods),
            record.lam,
            100 * self.coverage,
            100 * record.coverage_reached,
            record.sr_output,
            self.output_path,
        )
        return {"record": record.to_dict(), "report": report}
