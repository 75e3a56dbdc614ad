"""Calibrate the model's test-time-augmentation uncertainty on the held-out validation volumes, after training.

    python -m monai.bundle run calibrating --config_file "['configs/train.json','configs/calibrate.json']"

Each validation HR volume is degraded by every method of `lr_methods` (the mix a user's scan may come from),
super-resolved with `passes` augmentations, and scored: the conformal factor lambda such that `coverage` of the
foreground voxels have |SR - HR| <= lambda * std is stored with the model (models/calibration.json), with the
consistency residuals seen on validation, which inference uses to flag inputs unlike the training data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from monai.inferers import Inferer

from bundle.core.atomic import write_text_atomic
from bundle.core.choices import EVAL_DEFAULT, FOREGROUND_THRESHOLD
from bundle.core.geometry import ensure_scale3
from bundle.core.progress import ProgressInferer, VolumeProgress
from bundle.data.datalist import iter_hr_volumes
from bundle.data.degradation import check_evaluation_methods, evaluation_lr
from bundle.inference.generator import load_generator
from bundle.trust.conformal import calibrate_volumes
from bundle.trust.consistency import ConsistencyStep, estimator_fingerprint
from bundle.trust.ood import SHIFTS, VolumeTrust, fit_ood_thresholds, measure_volume, shifted_pairs
from bundle.trust.record import save_calibration

__all__ = ["UncertaintyCalibration"]

logger = logging.getLogger(__name__)


class UncertaintyCalibration:
    """Runs the calibration over `datalist` (validation items; `transform` gives the normalised, padded HR).

    Args:
        network / inferer / device / ckpt_path: the trained generator and how to run it on a whole LR volume.
        output_path: the calibration JSON written beside the model.
        lr_methods: degradations each validation volume is calibrated under.
        consistency / operator / estimator_path: inference's data-consistency step (`consistency`,
            `consistency_operator`, `operator_estimator_path`): the bound is calibrated on the errors of what it
            writes (projected or not), the residuals are of the SR before it.
        passes: TTA passes (inference's `uncertainty` must use the same number).
        coverage: the fraction of foreground voxels the calibrated bound must cover.
        sr_output: "best" keeps the TTA mean when it beats the single pass on validation, else the single pass.
        amp, amp_dtype: autocast on CUDA with the run's `amp_dtype`, as inference.json and the evaluation run it.
        ood_shifts: distribution shifts (`bundle.trust.ood.SHIFTS`) each validation volume is also run under, to fit
            the out-of-distribution warning's thresholds (empty: the warning keeps its fixed rule).
    """

    def __init__(
        self,
        datalist: list[dict],
        transform: Callable[[dict], dict],
        network: torch.nn.Module,
        inferer: Inferer,
        output_path: str,
        ckpt_path: str,
        scale: int | Sequence[int] = 4,
        lr_methods: Sequence[str] = EVAL_DEFAULT,
        operator: str = "auto",
        passes: int = 8,
        coverage: float = 0.9,
        sr_output: str = "best",
        foreground_threshold: float = FOREGROUND_THRESHOLD,
        device: str | torch.device = "cpu",
        amp: bool = True,
        amp_dtype: str = "bfloat16",
        ood_shifts: Sequence[str] = SHIFTS,
        consistency: str = "project",
        estimator_path: str | None = None,
    ) -> None:
        if not 0 < coverage < 1:
            raise ValueError(f"coverage_target must be in (0, 1), got {coverage}")
        self.datalist, self.transform = datalist, transform
        self.network, self.inferer = network, ProgressInferer(inferer, passes, desc="calibrating")
        self.output_path, self.ckpt_path = Path(output_path), ckpt_path
        self.scale = ensure_scale3(scale)
        self.lr_methods = check_evaluation_methods(lr_methods)
        self.passes, self.coverage, self.sr_output = passes, coverage, sr_output
        self.foreground_threshold = foreground_threshold
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"  # as inference runs: the std must be of the same numerics
        self.amp_dtype = getattr(torch, amp_dtype)
        self.ood_shifts = tuple(ood_shifts)
        self.step = ConsistencyStep(consistency, operator, self.scale, estimator_path, self.device)

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
        load_generator(self.network, self.ckpt_path, self.device)
        self.network.to(self.device).eval()

        def predict(lr: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp):
                return self.inferer(lr.to(self.device), self.network).float().cpu()

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
