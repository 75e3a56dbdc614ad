"""The data-consistency step every stage applies the same way: inference (`DataConsistencyd`), the evaluation's "sr"
row, the calibration and per-scan adaptation, so that what is measured is what a user gets. Its map is always of
the network's output before any projection (the projected output's map is ~0 and says nothing).

`operator` is a fixed consistency operator (`OPERATORS`), which projects, or "auto": estimated per volume from the
LR by `bundle.trust.operator_estimate`: its CNN gives the probability of k-space truncation against blur, and the
network's output tells which blur (`with_blur_evidence`). "auto" writes a mixture (`auto_weights`): k-space
truncation's projection has `kspace_share` of the CNN's k-space probability (none at or below 0.2, all at or above
0.6, linear between: KSPACE_SHARE), the projection with the blur the output names has the rest, and each share goes
to the network's SR instead where its operator does not explain the output (`with_output_evidence`: RMS(D(SR) - LR)
above EXPLAINED_RESIDUAL, AREA_EXPLAINED or GAUSSIAN_EXPLAINED of the LR's own detail), as a Hamming-filtered k-space
LR's output explains no operator. A sure estimate the output contradicts projects nothing and the log warns. The map
uses the most probable operator. Without an estimator "auto" projects nothing and maps with FALLBACK_OPERATOR, saying
so once.

Measured on tuning volumes only (the 60 LR of data/synth_tune, the demo's 6 training volumes and three 96^3 crops of
the 1 mm MNI template under five degradations; docs/results.md, version 0.8.7), with the 0.8.7 release network (MSE
alone in both stages): its own SR of a k-space LR is weak (-0.97 to +0.53 dB over cubic B-spline), what it invents
beyond the LR is right, so the projections carry the gain: +0.27 to +2.59 dB over its SR with k-space truncation on
k-space LR, +0.07 to +1.10 with block average on block-average LR, up to +0.79 with the Gaussian profile on Gaussian
LR. Block average, which 0.8.5-0.8.6 never projected (their network's SR beat it on k-space LR taken for it), now
beats the SR even there (-0.29 to +0.96 dB), though it loses 0.56-1.64 dB to k-space's projection. The CNN (trained
on HR of every sharpness, so unsure where sharpness cannot tell) gives k-space LR 0.51-0.92 and blurred LR 0.09-0.77
(block average 0.46-0.77): weighting by the probability itself left too much of the other operator in (template
crops: worst +0.35 against +0.46 with KSPACE_SHARE; the windows 0.2-0.8 to 0.45-0.55 were measured: 0.3-0.7 has the
best worst case on the demo's volumes and within 0.03 dB of the best elsewhere). What the rule delivers, gain over
cubic B-spline, mean / worst: template crops +1.83 / +0.46, data/synth_tune +1.78 / +0.45, the demo's training
volumes +3.08 / +2.18 (0.8.6's network and rule: +1.63 / +0.33, +1.70 / +0.41, +2.87 / +1.98). The 0.8.8 network
(stage 2's learning rate decayed; its SR +0.08 to +0.49 dB better on the four tuning sets, its projections up to
+0.22) under the same rule with the blur threshold measured again for it (`BLUR_LOG_RATIO_THRESHOLD`): template crops
+1.87 / +0.70, data/synth_tune +1.92 / +0.43, the demo's training volumes +3.12 / +2.18; the template crops sharpened
(the edge contrast of a single real scan) +1.15 / +0.44 (0.8.7: +1.10 / +0.42). The 0.8.9 estimator (trained at a
learning rate that learns from the first steps, `operator_estimator_training.LEARNING_RATE`) gives k-space LR a lower
probability on the template crops (0.47-0.76): measured again over the windows 0.15-0.55, 0.2-0.5, 0.2-0.6,
0.25-0.65, 0.3-0.7 and 0.4-0.8 with the same network, 0.2-0.6 has the best worst case over the four sets (+0.49
against +0.44 for 0.3-0.7; template crops +1.86 / +0.67, sharpened +1.15 / +0.49, data/synth_tune +1.93 / +0.52, the
demo's volumes +3.14 / +2.18), means within 0.03 dB of the best; an estimator trained with another seed gives the
same worst case under it (+0.49; +0.34 under 0.3-0.7).

The projection (`consistent_output`) is per operator, measured on the same tuning volumes with the 0.7.0 network
(data/synth_tune's 3 and the demo's 6 training volumes; gains over cubic B-spline in dB):
- RIGHT_INVERSE: the correction D(output) = LR asks for is a cubic B-spline of LR voxels for block average and the
  Gaussian profile (`project`'s inverse "bspline"), not the minimum-norm correction (blocks for block average):
  better on all 9 volumes, by +0.09 to +0.28 (block average) and +0.02 to +0.06 (Gaussian); a k-space LR taken for
  block average also loses less (+0.08 to +0.35). Under k-space truncation it stays minimum-norm (a band-limited
  correction), with
- DETAIL_GAIN: only that share of the network's detail that the operator does not see is kept (`project`'s
  `detail_gain`). The least-squares gain of that detail under k-space truncation was 0.44-0.87 (median 0.80), and
  0.75 beat the full projection on every volume (+0.01 to +0.25), worst case +0.46 against +0.30 for the B-spline
  correction (which wins the mean by 0.06); block average and the Gaussian profile keep the whole detail (their
  gain measured 0.85-1.08). The 0.8.5 network (no SSIM term in its last stage) hallucinates less, so k-space keeps
  0.9 since 0.8.6: over g = 0.5, 0.75, 0.9, 1.0 on k-space LR of the template crops, data/synth_tune and the demo's
  6 training volumes, 0.9 has the best mean on the template crops (+0.89 against +0.68 dB for 0.75) and the demo
  volumes (+0.05 on each), 0.02 less on data/synth_tune, worst case +0.42 against +0.46 (docs/results.md, 0.8.6).
  Measured again for the 0.8.7 network under the 0.8.7 rule (g = 0.6, 0.75, 0.9, 1.0; what "auto" delivers on the
  three tuning sets): 0.9 keeps the best template mean (+1.83 against +1.81 for 0.75) and the best worst case over
  the sets (+0.45 against +0.41), 0.75 the better template worst case (+0.55 against +0.46); kept. The 0.8.8 network
  (true operator, k-space LR, g = 0.5, 0.75, 0.9, 1.0): 0.9 has the best worst case on the template crops (+0.80
  against +0.78 for 0.75 and +0.75 for 1.0; sharpened +0.49 against +0.48 and +0.47) and the demo's volumes, 0.02 dB
  below 0.75 on data/synth_tune; kept.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch

from bundle.core.choices import CONSISTENCY_MODES, OPERATORS
from bundle.core.digest import file_sha256
from bundle.core.errors import CheckpointError
from bundle.data.operators import consistency_map, project
from bundle.trust.operator_estimate import (
    AREA_EXPLAINED,
    EXPLAINED_RESIDUAL,
    GAUSSIAN_EXPLAINED,
    OperatorEstimate,
    consistency_residuals,
    estimate_operator,
    load_operator_estimator,
    lr_detail,
    named_blur,
    with_output_evidence,
)
from bundle.trust.record import NO_ESTIMATOR

__all__ = [
    "AUTO",
    "FALLBACK_OPERATOR",
    "ConsistencyStep",
    "ConsistencyResult",
    "DETAIL_GAIN",
    "RIGHT_INVERSE",
    "check_operator_choice",
    "consistent_output",
    "estimator_fingerprint",
    "auto_weights",
    "kspace_share",
    "KSPACE_SHARE",
]

logger = logging.getLogger(__name__)
AUTO = "auto"
FALLBACK_OPERATOR = "area"  # the map's operator when "auto" has no estimator: the mildest of the three
# the CNN's k-space probability at and below which k-space truncation has no share in "auto"'s output, and at and
# above which it has all (`kspace_share`; measured: the module's docstring)
KSPACE_SHARE = (0.2, 0.6)
# how closely each blur must explain the output to be projected by "auto" (`auto_weights`)
BLUR_EXPLAINED = {"area": AREA_EXPLAINED, "gaussian": GAUSSIAN_EXPLAINED}
# the share of the network's unmeasured detail a projection keeps, per operator (measured: the module's docstring)
DETAIL_GAIN = {"kspace": 0.9, "area": 1.0, "gaussian": 1.0}
# the shape of the correction a projection adds, per operator (`right_inverse`; measured: the module's docstring)
RIGHT_INVERSE = {"kspace": "minimum_norm", "area": "bspline", "gaussian": "bspline"}


def check_operator_choice(operator: str) -> str:
    if operator != AUTO and operator not in OPERATORS:
        raise ValueError(f"consistency_operator must be one of {(AUTO, *OPERATORS)}, got {operator!r}")
    return operator


def estimator_fingerprint(
    operator: str | None, mode: str | None, estimator_path: str | os.PathLike | None
) -> str | None:
    """The sha256 of the estimator file behind "auto" choices (NO_ESTIMATOR: auto without one), None when no
    estimate is made (a fixed operator, mode "off"): what the calibration records and inference compares."""
    if operator != AUTO or mode == "off":
        return None
    found = bool(estimator_path) and os.path.isfile(str(estimator_path))
    return file_sha256(str(estimator_path)) if found else NO_ESTIMATOR


def kspace_share(p_kspace: float) -> float:
    """The share of k-space truncation's projection in what "auto" writes, from the CNN's k-space probability:
    (p - low) / (high - low) of KSPACE_SHARE, clipped to [0, 1]."""
    low, high = KSPACE_SHARE
    return min(1.0, max(0.0, (float(p_kspace) - low) / (high - low)))


def auto_weights(estimate: OperatorEstimate) -> dict[str, float]:
    """{operator: its projection's share in what "auto" writes} (the network's SR has the rest, 1 - the sum).

    k-space truncation has `kspace_share` of the CNN's k-space probability, the blur the output names
    (`named_blur` of the output's `blur_log_ratio`) the rest; each share goes to its projection only where that
    operator explains the output (relative residual at most EXPLAINED_RESIDUAL for k-space, AREA_EXPLAINED for block
    average, GAUSSIAN_EXPLAINED for the Gaussian profile), else to the network's SR."""
    relative = estimate.relative_residuals or {}
    share = kspace_share(estimate.probabilities.get("kspace", 0.0))
    weights = {op: 0.0 for op in OPERATORS}
    if relative.get("kspace", math.inf) <= EXPLAINED_RESIDUAL:
        weights["kspace"] = share
    if estimate.blur_log_ratio is not None:
        blur = named_blur(estimate.blur_log_ratio)
        if relative.get(blur, math.inf) <= BLUR_EXPLAINED[blur]:
            weights[blur] = 1.0 - share
    return weights


def consistent_output(
    sr: torch.Tensor, lr: torch.Tensor, scale: int | tuple[int, int, int], operator: str, fwhm_factor: float = 1.0
) -> torch.Tensor:
    """The projection every path applies: `project` with the operator's DETAIL_GAIN and RIGHT_INVERSE, shapes as
    `project`."""
    return project(sr.float(), lr, scale, operator, fwhm_factor, DETAIL_GAIN[operator], RIGHT_INVERSE[operator])


@dataclass(frozen=True)
class ConsistencyResult:
    """The output (projected or not), the map |D(SR) - LR| of the unprojected SR (None for mode "off"), the
    operator used, whether the output was projected, and the estimate behind an "auto" choice (else None)."""

    output: torch.Tensor
    residual: torch.Tensor | None
    operator: str
    projected: bool
    estimate: OperatorEstimate | None
    mixed: bool = False  # the output is the share-weighted mean of the projections (and the SR): `auto_weights`

    def record(self) -> dict:
        """What the per-volume summary and the evaluation's tables keep of the step."""
        out: dict = {"operator": self.operator, "projected": self.projected, "mixed": self.mixed}
        if self.estimate is not None:
            out.update(estimated=True, **self.estimate.record())
        return out


class ConsistencyStep:
    """(SR, LR) -> ConsistencyResult under `mode` ("off", "map", "project") and `operator` (fixed or "auto").

    SR (C, sX, sY, sZ) or (B, C, ...) and LR of the matching LR shape, normalised intensities. `estimator_path`: the
    operator estimator file for "auto" (loaded once, on first use; missing = no projection, a warning once).
    `fwhm_factor`: the Gaussian operator's FWHM over the scale (per-scan adaptation's measured slice profile).
    """

    def __init__(
        self,
        mode: str,
        operator: str,
        scale: int | tuple[int, int, int],
        estimator_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        fwhm_factor: float = 1.0,
    ) -> None:
        if mode not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}, got {mode!r}")
        self.mode, self.operator, self.scale = mode, check_operator_choice(operator), scale
        self.estimator_path, self.device, self.fwhm_factor = estimator_path, device, float(fwhm_factor)
        self._estimator: torch.nn.Module | None = None
        self._missing_said = False

    def estimator(self) -> torch.nn.Module | None:
        if self._estimator is None and self.estimator_path and os.path.isfile(self.estimator_path):
            try:
                self._estimator = load_operator_estimator(self.estimator_path, self.device)
            except ValueError as err:  # damaged: one line, not a transform chain's traceback
                raise CheckpointError(f"{err}; replace it or set --consistency_operator") from None
        if self._estimator is None and not self._missing_said:
            self._missing_said = True
            logger.warning(
                "consistency_operator auto: no operator estimator at %s, so nothing is projected and the consistency "
                "map uses the %s operator (`make model` makes the estimator; or set --consistency_operator)",
                self.estimator_path,
                FALLBACK_OPERATOR,
            )
        return self._estimator

    def operator_for(self, sr: torch.Tensor, lr: torch.Tensor) -> tuple[str, OperatorEstimate | None]:
        """(operator, estimate) for one LR volume and its SR: a fixed operator with no estimate; for "auto" the most
        probable operator and the estimate judged by the output, or FALLBACK_OPERATOR and None without an
        estimator."""
        if self.operator != AUTO:
            return self.operator, None
        estimator = self.estimator()
        if estimator is None:
            return FALLBACK_OPERATOR, None
        lr5, sr5 = (lr if lr.dim() == 5 else lr[None]), (sr if sr.dim() == 5 else sr[None])
        # one volume: the first of a batch, as for the CNN (every caller passes one)
        estimate = with_output_evidence(
            estimate_operator(lr5[:1], estimator),
            consistency_residuals(sr5[:1], lr5[:1], self.scale),
            lr_detail(lr5[:1]),
        )
        return estimate.operator, estimate

    def __call__(self, sr: torch.Tensor, lr: torch.Tensor) -> ConsistencyResult:
        if self.mode == "off":
            return ConsistencyResult(sr, None, self.operator, False, None)
        lr = lr.to(sr.device).float()
        operator, estimate = self.operator_for(sr, lr)
        residual = consistency_map(sr.float(), lr, self.scale, operator, self.fwhm_factor)
        if self.mode != "project":
            return ConsistencyResult(sr, residual, operator, False, estimate)
        if estimate is None:  # a fixed operator (projected), or "auto" without an estimator (nothing projected)
            fixed = self.operator != AUTO
            output = consistent_output(sr, lr, self.scale, operator, self.fwhm_factor) if fixed else sr
            return ConsistencyResult(output, residual, operator, fixed, None)
        weights = {op: w for op, w in auto_weights(estimate).items() if w > 0.0}
        if not weights:  # no operator the estimate names explains the output: the network's SR
            return ConsistencyResult(sr, residual, operator, False, estimate)
        projections = {op: consistent_output(sr, lr, self.scale, op, self.fwhm_factor) for op in weights}
        whole = [op for op, w in weights.items() if w == 1.0]
        if whole:  # one operator's share is all: its projection
            return ConsistencyResult(projections[whole[0]], residual, whole[0], True, estimate)
        # each projection weighted by its share, the network's SR by the rest
        mixed = (1.0 - sum(weights.values())) * sr.float()
        for op, w in weights.items():
            mixed = mixed + w * projections[op]
        return ConsistencyResult(mixed.to(sr.dtype), residual, operator, False, estimate, mixed=True)

    def output_and_residual(self, sr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what inference writes, |D(SR) - LR| on the HR grid) from one run of the step, the pair the calibration
        and the out-of-distribution studies score; the map with this step's operator in mode "off" too."""
        result = self(sr, lr)
        if result.residual is not None:
            return result.output, result.residual
        lr = lr.to(sr.device).float()
        operator = self.operator_for(sr, lr)[0]
        return result.output, consistency_map(sr.float(), lr, self.scale, operator, self.fwhm_factor)
