"""Which degradation made an LR volume, estimated from the LR alone, so that `consistency: project` can pick its
operator for a scan whose acquisition nobody told it (`consistency_operator: auto`).

The projection gains 1-4 dB over cubic B-spline with the right operator and loses up to 4 dB with a wrong one
(docs/results.md), and the generator cannot tell band-limited LR from blurred LR on its own. A small 3-D CNN does:
trained on synthetic LR volumes of every operator (`bundle.trust.operator_estimator_training`), it reads the whole LR
volume (fully convolutional, global average pooling, so any size from 4 voxels per axis on) and returns one
probability per operator. Below `min_probability` the estimate counts as unsure (reported so); `bundle.trust.consistency`
weights each projection by a share of the k-space probability rather than trust the most probable whole, since a
wrong operator costs more than the right one gains (`auto_weights`, measured there).

Which of the two blurs (block average or Gaussian profile) made a blurred LR, the CNN tells less reliably than the
output itself: `blur_log_ratio` compares how consistent the network's SR already is with the LR under each blur,
and `with_blur_evidence` gives the CNN's blur probability to the blur that ratio picks. Measured on tuning volumes
only (the 3 of `data/synth_tune`, the demo's 6 training volumes and three crops of the MNI template, plain and
sharpened; single pass of the 0.9.0 release model): the ratio is at least +0.54 on every block-average LR and at most
+0.21 on every Gaussian-profile LR (noisy ones included), 45 of 45 right at BLUR_LOG_RATIO_THRESHOLD; the CNN alone had
3 of the demo's 6 block-average LR below 0.9 (0.6.0).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.core.choices import OPERATORS
from bundle.data.operators import forward_operator

__all__ = [
    "OperatorEstimator",
    "OperatorEstimate",
    "estimate_operator",
    "load_operator_estimator",
    "MIN_PROBABILITY",
    "MIN_LR_SIZE",
    "BLUR_OPERATORS",
    "BLUR_LOG_RATIO_THRESHOLD",
    "EXPLAINED_RESIDUAL",
    "GAUSSIAN_EXPLAINED",
    "AREA_EXPLAINED",
    "blur_log_ratio",
    "named_blur",
    "consistency_residuals",
    "lr_detail",
    "with_blur_evidence",
    "with_output_evidence",
]

logger = logging.getLogger(__name__)

# below this the estimate is "unsure" and `consistency: project` weights each projection by its probability; set
# before any measurement (a wrong operator costs about three times what the right one gains, so 9 in 10 is the least)
MIN_PROBABILITY = 0.9
MIN_LR_SIZE = 4  # the stride-2 layer needs 4 voxels per axis to leave a 2-voxel map for the last convolution
BLUR_OPERATORS = ("area", "gaussian")
# `blur_log_ratio` above this: block average, else Gaussian profile. Measured for the 0.8.8 release model (stage 2's
# learning rate decayed) on 75 tuning LR (data/synth_tune, the demo's training volumes, three 96^3 crops of the MNI
# template, and the same crops sharpened as a sharper check): block average +0.59 to +0.98, Gaussian profile (noisy or
# not) -0.92 to +0.33 (Hamming-filtered k-space -0.53 to -0.45, told apart by AREA_EXPLAINED); the bound is between,
# nearer the Gaussian side as a block-average LR projected with the Gaussian profile loses 2-3 dB, the reverse 0.3-1.
# The 0.8.7 model's parted at -0.6, the 0.8.5 model's at +0.34, the 0.7.0 model's at about -0.3: the bound belongs to
# the network, measured with each (docs/results.md). The 0.9.0 model (stage 2 on 64 synthetic volumes), the same 75
# LR: block average +0.54 to +1.01, Gaussian profile -1.11 to +0.21 (Hamming-filtered k-space -0.47 to -0.42): 0.30
# (stage 2 on 32 volumes, measured first: +0.45 to +0.98 against -1.07 to +0.14).
BLUR_LOG_RATIO_THRESHOLD = 0.30
# An operator "explains" the output when RMS(D(SR) - LR) is at most this fraction of the LR's own detail
# (`lr_detail`); the consistency step projects only with operators that do (`bundle.trust.consistency`), so a sure
# estimate of an operator that did not make the LR (a Hamming-filtered k-space LR taken for a Gaussian profile) is
# not imposed. Measured for the 0.7.0 release model on tuning volumes only (45 LR of data/synth_tune and the demo's
# training volumes): at most 0.50 for the operator that made the LR (k-space 0.42-0.50, block average and Gaussian
# profile 0.26-0.36), at least 0.73 for the Gaussian profile on Hamming-filtered k-space LR; the bound is between.
# The 0.8.5 model (60 tuning LR, template crops included): k-space 0.16-0.26 on k-space LR, 0.78-1.35 on Hamming LR;
# the 0.8.7 model: 0.20-0.45 against 0.87-1.43; the 0.8.8 model: 0.16-0.26 against 0.87-1.51; the 0.9.0 model:
# 0.16-0.26 against 1.12-1.73
EXPLAINED_RESIDUAL = 0.6
# The Gaussian profile is projected only where it explains the output this closely (`bundle.trust.consistency`):
# 0.8.5 release model, the same 60 tuning LR: 0.16-0.22 on Gaussian-profile LR (noisy or not), at least 0.32 on
# Hamming-filtered k-space LR, which the output's blur evidence also names Gaussian; the midpoint. The 0.8.7 model:
# 0.14-0.20 against at least 0.37; the 0.8.8 model 0.14-0.26 against at least 0.38; the 0.9.0 model 0.12-0.24
# against at least 0.53
GAUSSIAN_EXPLAINED = 0.27
# Block average likewise: 0.8.7 release model, the same 60 tuning LR: at most 0.28 on block-average LR, at least 0.61
# on Hamming-filtered k-space LR (whose log ratio can lie above BLUR_LOG_RATIO_THRESHOLD); about the midpoint. The
# 0.8.8 model: at most 0.18 against at least 0.62; the 0.9.0 model: at most 0.16 against at least 0.82
AREA_EXPLAINED = 0.45


class OperatorEstimator(nn.Module):
    """LR (B, 1, X, Y, Z), normalised intensities -> logits (B, len(OPERATORS)), in `OPERATORS` order.

    Four 3x3x3 convolutions (one of stride 2) and a global average: about 70k weights, 0.3 MB. The receptive field
    (11 LR voxels) sees ringing and edge profiles, not anatomy, which is what tells the operators apart.
    """

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        f = int(features)
        # group norms: without them the pooled features start nearly constant and training sits at chance for
        # thousands of steps (measured); each volume is one sample of its own size, so no batch norm
        self.features = nn.Sequential(
            nn.Conv3d(2, f, 3, padding=1),
            nn.GroupNorm(4, f),
            nn.ReLU(inplace=True),
            nn.Conv3d(f, 2 * f, 3, padding=1),
            nn.GroupNorm(4, 2 * f),
            nn.ReLU(inplace=True),
            nn.Conv3d(2 * f, 2 * f, 3, stride=2, padding=1),
            nn.GroupNorm(4, 2 * f),
            nn.ReLU(inplace=True),
            nn.Conv3d(2 * f, 2 * f, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.classify = nn.Linear(2 * f, len(OPERATORS))

    @staticmethod
    def inputs(lr: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) -> (B, 2, X, Y, Z): the volume and its high-pass part (minus its 3x3x3 mean), each
        standardised per volume. The cue is the profile of edges and ringing, a few percent of the intensity, which
        the plain volume buries under anatomy and contrast: given only that, training sat at chance (measured)."""
        high = lr - F.avg_pool3d(F.pad(lr, [1] * 6, mode="replicate"), 3, stride=1)
        parts = []
        for x in (lr, high):
            mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
            std = x.std(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
            parts.append((x - mean) / std)
        return torch.cat(parts, dim=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(self.inputs(lr)))


@dataclass(frozen=True)
class OperatorEstimate:
    """The most probable operator, its probability, every operator's probability, and whether it is sure."""

    operator: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)
    sure: bool = False
    # set by `with_blur_evidence`: the CNN's own probabilities and ln(r_gaussian / r_area) of the output
    estimator_probabilities: dict[str, float] | None = None
    blur_log_ratio: float | None = None
    # set by `with_output_evidence`: RMS(D(SR) - LR) / `lr_detail` per operator, and whether the estimated operator
    # explains the output (its relative residual at most EXPLAINED_RESIDUAL)
    relative_residuals: dict[str, float] | None = None
    agrees: bool | None = None

    def describe(self) -> str:
        others = ", ".join(f"{k} {v:.2f}" for k, v in self.probabilities.items() if k != self.operator)
        verdict = "sure" if self.sure else "unsure: each projection the output agrees with is weighted by its share"
        blur = ""
        if self.blur_log_ratio is not None:
            chosen = named_blur(self.blur_log_ratio)
            blur = f"; blur told by the output's consistency: {chosen}, log ratio {self.blur_log_ratio:+.2f}"
        if self.agrees is False and self.relative_residuals is not None:
            named = [self.operator] if self.sure else [op for op, p in self.probabilities.items() if p > 0]
            residuals = ", ".join(f"{op} {self.relative_residuals[op]:.2f}" for op in named)
            verdict = (
                f"but {'it does not explain' if self.sure else 'none of them explains'} the output (residual {residuals} of"
                f" the LR's detail, above {EXPLAINED_RESIDUAL}): the LR was made otherwise, so nothing is projected"
            )
        return f"{self.operator} (probability {self.probability:.2f}; {others}{blur}; {verdict})"

    def record(self) -> dict:
        """What the per-volume summary keeps of the estimate."""
        out: dict = {"probability": self.probability, "probabilities": self.probabilities}
        if self.blur_log_ratio is not None:
            out.update(estimator_probabilities=self.estimator_probabilities, blur_log_ratio=self.blur_log_ratio)
        if self.agrees is not None:
            out.update(relative_residuals=self.relative_residuals, agrees=self.agrees)
        return out


@torch.no_grad()
def estimate_operator(
    lr: torch.Tensor, estimator: nn.Module, min_probability: float = MIN_PROBABILITY
) -> OperatorEstimate:
    """Estimate the operator of one LR volume, (C, X, Y, Z) or (1, C, X, Y, Z), in the network's normalised
    intensities; channels are averaged (the estimator reads one). Axes under MIN_LR_SIZE are edge-padded."""
    x = torch.as_tensor(lr).float()
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5:
        raise ValueError(f"expected an LR volume (C, X, Y, Z) or (1, C, X, Y, Z), got shape {tuple(x.shape)}")
    x = x.mean(dim=1, keepdim=True)
    pads = [max(MIN_LR_SIZE - int(n), 0) for n in x.shape[-3:]]
    if any(pads):
        x = nn.functional.pad(x, [p for n in reversed(pads) for p in (0, n)], mode="replicate")
    estimator.eval()
    device = next(estimator.parameters()).device
    probs = torch.softmax(estimator(x.to(device)).double(), dim=1)[0].cpu()
    best = int(probs.argmax())
    table = {op: float(p) for op, p in zip(OPERATORS, probs, strict=True)}
    return OperatorEstimate(OPERATORS[best], float(probs[best]), table, float(probs[best]) >= min_probability)


def consistency_residuals(sr: torch.Tensor, lr: torch.Tensor, scale: int | tuple[int, int, int]) -> dict[str, float]:
    """{operator: RMS of D(SR) - LR} for every operator of `OPERATORS`, SR (C, X, Y, Z) or (B, C, X, Y, Z) and its
    LR. The network is not told the operator, so its output leans to none; the true one explains the LR best."""
    rms = {}
    for op in OPERATORS:
        degraded = forward_operator(sr.float(), scale, op)
        if lr.shape[-4:] != degraded.shape[-4:] or lr.numel() != degraded.numel():
            raise ValueError(f"LR shape {list(lr.shape)} does not match SR shape {list(sr.shape)} / scale {scale}")
        rms[op] = max(float((degraded - lr.to(degraded).reshape(degraded.shape)).pow(2).mean().sqrt()), 1e-12)
    return rms


def blur_log_ratio(sr: torch.Tensor, lr: torch.Tensor, scale: int | tuple[int, int, int]) -> float:
    """ln(r_gaussian / r_area) of `consistency_residuals`: above BLUR_LOG_RATIO_THRESHOLD the output is the more
    consistent with block average, below it with the Gaussian profile."""
    return _blur_log_ratio_of(consistency_residuals(sr, lr, scale))


def named_blur(log_ratio: float) -> str:
    """The blur a `blur_log_ratio` names: block average above BLUR_LOG_RATIO_THRESHOLD, else the Gaussian profile."""
    return "area" if log_ratio > BLUR_LOG_RATIO_THRESHOLD else "gaussian"


def _blur_log_ratio_of(residuals: dict[str, float]) -> float:
    return math.log(residuals["gaussian"] / residuals["area"])


def with_blur_evidence(
    estimate: OperatorEstimate, log_ratio: float, min_probability: float = MIN_PROBABILITY
) -> OperatorEstimate:
    """The estimate with the CNN's k-space probability kept and its blur probability (1 - p_kspace) given whole to
    the blur `log_ratio` picks (`blur_log_ratio`, threshold BLUR_LOG_RATIO_THRESHOLD); sure as `estimate_operator`."""
    blur = named_blur(log_ratio)
    p_kspace = estimate.probabilities.get("kspace", 0.0)
    table = {op: (p_kspace if op == "kspace" else 1.0 - p_kspace if op == blur else 0.0) for op in OPERATORS}
    best = max(table, key=lambda op: table[op])
    return OperatorEstimate(
        best, table[best], table, table[best] >= min_probability, dict(estimate.probabilities), float(log_ratio)
    )


def lr_detail(lr: torch.Tensor) -> float:
    """RMS of the LR minus its 3 x 3 x 3 local mean (edges replicated): the scale of what an operator must explain,
    so that residuals compare across scans and intensities. LR (C, X, Y, Z) or (B, C, X, Y, Z)."""
    x = lr.float().reshape(-1, 1, *lr.shape[-3:])
    local = F.avg_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return max(float((x - local).pow(2).mean().sqrt()), 1e-12)


def with_output_evidence(
    estimate: OperatorEstimate, residuals: dict[str, float], detail: float, min_probability: float = MIN_PROBABILITY
) -> OperatorEstimate:
    """The CNN's estimate judged by the output's own consistency (`consistency_residuals`, in units of `lr_detail`):
    the blur is the one the output picks (`with_blur_evidence`), and `agrees` says whether the estimated operator
    (a sure estimate) or one of the operators it mixes (an unsure one) explains the output (relative residual at
    most EXPLAINED_RESIDUAL). False: no operator the estimate names made this LR, and the consistency step projects
    nothing."""
    judged = with_blur_evidence(estimate, _blur_log_ratio_of(residuals), min_probability)
    relative = {op: residuals[op] / detail for op in OPERATORS}
    # sure: the operator itself must explain the output; unsure: one of those it mixes (probability > 0) must
    candidates = [judged.operator] if judged.sure else [op for op, p in judged.probabilities.items() if p > 0]
    agrees = any(relative[op] <= EXPLAINED_RESIDUAL for op in candidates)
    return dataclasses.replace(judged, relative_residuals=relative, agrees=agrees)


def load_operator_estimator(path: str | os.PathLike, device: str | torch.device = "cpu") -> OperatorEstimator:
    """The estimator saved by `scripts/make_operator_estimator.py` ({"state_dict", "features"}), weights only.

    Raises FileNotFoundError naming the file when it is missing, ValueError when it does not hold an estimator."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no operator estimator (consistency_operator 'auto' needs one; `make model` makes it, or set "
            "--consistency_operator to kspace, area or gaussian)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, pickled code: one line naming the file
        raise ValueError(f"{path}: not a readable operator estimator ({type(err).__name__})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise ValueError(f"{path}: not an operator estimator (expected a dict with 'state_dict')")
    estimator = OperatorEstimator(int(payload.get("features", 16)))
    try:
        estimator.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the operator estimator: {str(err).splitlines()[0]}") from None
    return estimator.to(device).eval()
