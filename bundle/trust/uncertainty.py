"""Where is the SR output unreliable? Test-time-augmentation spread, calibrated by conformal prediction.

A scan can come out worse than interpolation, and one SR pass says nothing about where. We run the network on
invertible flips/permutations of the LR input, undo each on the HR grid, and take the voxel-wise spread (std).
MONAI's `TestTimeAugmentation` assumes the output grid equals the input grid, so the inversion is done here.

The raw std is not an error bar. Split conformal prediction (Angelopoulos & Bates 2021; Angelopoulos et al.
2022, image-to-image regression) turns it into one: on validation volumes with known HR, lambda is the
finite-sample quantile of |error| / max(std, floor), so that |error| <= lambda * max(std, floor) holds for the
target fraction of foreground voxels. The guarantee is marginal over voxels of volumes exchangeable with the
calibration volumes (voxels inside one volume are correlated, so it is approximate per volume); a scan unlike the
training data breaks it, which is what `ood_warning` looks for through the consistency residual |D(SR) - LR|.

Tensors are (B, C, X, Y, Z); the HR grid is `scale` (a per-axis int triple) times the LR grid.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from scipy import stats

from bundle.core.atomic import write_text_atomic
from bundle.core.errors import CalibrationError
from bundle.core.geometry import ensure_scale3
from bundle.core.metrics import masked_mean

__all__ = [
    "Augmentation",
    "tta_augmentations",
    "TTAResult",
    "tta_predict",
    "TTAInferer",
    "conformal_scores",
    "conformal_quantile",
    "conformal_lambda",
    "coverage",
    "ConformalAccumulator",
    "spearman",
    "CalibrationRecord",
    "save_calibration",
    "load_calibration",
    "calibrated_uncertainty",
    "foreground_mask",
    "trust_summary",
    "ood_warning",
    "calibrate_volumes",
    "OOD_RESIDUAL_FACTOR",
]

AXIS_NAMES = "XYZ"
OOD_RESIDUAL_FACTOR = 3.0  # mean consistency residual above this multiple of the validation maximum -> warning


# ----------------------------------------------------------------------------------------------------------------
# Test-time augmentation
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Permute the spatial axes by `perm`, then flip the (post-permutation) spatial axes in `flips`.

    Both are exact on either grid: LR voxel i along an axis of scale s covers HR voxels s*i .. s*i+s-1, so a flip
    of the LR axis is the same flip of the HR axis, and a permutation among equal-scale axes maps the HR grid the
    same way. `invert` undoes `apply` on the network's HR output.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        parts = []
        if self.perm != (0, 1, 2):
            parts.append("perm" + "".join(AXIS_NAMES[p] for p in self.perm))
        if self.flips:
            parts.append("flip" + "".join(AXIS_NAMES[a] for a in self.flips))
        return "+".join(parts) or "identity"

    def apply(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) LR -> augmented LR (spatial axes permuted, then flipped)."""
        x = lr.permute(0, 1, *(2 + p for p in self.perm))
        return torch.flip(x, dims=[2 + a for a in self.flips]) if self.flips else x

    def invert(self, hr: torch.Tensor) -> torch.Tensor:
        """Network output for the augmented LR, (B, C, sX', sY', sZ') -> the original HR orientation."""
        x = torch.flip(hr, dims=[2 + a for a in self.flips]) if self.flips else hr
        inverse = [0, 0, 0]
        for i, p in enumerate(self.perm):
            inverse[p] = i
        return x.permute(0, 1, *(2 + p for p in inverse))


def _flip_subsets() -> list[tuple[int, ...]]:
    """(), (X,), (Y,), (Z,), (X,Y), (X,Z), (Y,Z), (X,Y,Z): by size, then axis order."""
    return [c for k in range(4) for c in itertools.combinations(range(3), k)]


def tta_augmentations(scale: int | Sequence[int], n: int) -> list[Augmentation]:
    """The first `n` invertible augmentations for an SR model of per-axis `scale`, in a fixed order.

    Order: the identity; the seven flips of axis subsets; then, for each allowed non-identity permutation (in
    itertools order), its combination with each of the eight flip subsets. A permutation may only exchange axes
    of equal scale, otherwise the HR output of the permuted input is not the permuted HR grid: (4, 4, 4) allows
    all 6 permutations (48 augmentations), (1, 1, 4) only swapping X and Y (16), (2, 3, 4) none (8).
    """
    scale3 = ensure_scale3(scale)
    perms = [p for p in itertools.permutations(range(3)) if all(scale3[i] == scale3[q] for i, q in enumerate(p))]
    available = [Augmentation(perm, flips) for perm in perms for flips in _flip_subsets()]  # identity perm first
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of test-time augmentations must be a positive int, got {n!r}")
    if n > len(available):
        raise ValueError(
            f"{n} test-time augmentations requested but scale {list(scale3)} allows only {len(available)} "
            "(flips of axis subsets, and permutations of equal-scale axes)"
        )
    return available[:n]


@dataclass
class TTAResult:
    """`single`: the identity pass; `mean`, `std`: voxel-wise over the passes (population std). All
    (B, C, sX, sY, sZ) float32."""

    single: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@torch.no_grad()
def tta_predict(
    lr: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor], scale: int | Sequence[int], passes: int
) -> TTAResult:
    """Run `predict` (LR (B, C, X, Y, Z) -> HR (B, C, sX, sY, sZ), e.g. inferer + network) on `passes`
    augmentations of `lr`, undo each on the HR grid, and return the identity pass, mean and std.

    Memory: Welford's running mean and sum of squared deviations in float64, plus the identity pass; the passes
    are never stacked. Identical passes give a std of exactly 0.
    """
    if lr.dim() != 5:
        raise ValueError(f"expected an LR tensor (B, C, X, Y, Z), got shape {tuple(lr.shape)}")
    scale3 = ensure_scale3(scale)
    expected = (*lr.shape[:2], *(n * s for n, s in zip(lr.shape[2:], scale3, strict=True)))
    single = mean = m2 = None
    for k, aug in enumerate(tta_augmentations(scale3, passes), start=1):
        out = aug.invert(predict(aug.apply(lr)))
        if tuple(out.shape) != expected:
            raise ValueError(
                f"predict returned {tuple(out.shape)} for augmentation {aug.name}; expected {expected} "
                f"(LR {tuple(lr.shape)} times scale {list(scale3)})"
            )
        x = out.to(torch.float64, copy=True)  # updated in place below; never alias the caller's tensor
        if single is None:
            single, mean, m2 = out.float().clone(), x.clone(), torch.zeros_like(x)
            continue
        delta = x - mean
        mean.add_(delta, alpha=1.0 / k)
        m2.addcmul_(delta, x.sub_(mean))  # delta * (x - new mean)
        del out, x, delta
    std = (m2 / passes).sqrt_()
    return TTAResult(single=single, mean=mean.float(), std=std.float())


class TTAInferer(Inferer):
    """An inferer for the bundle's evaluators: `inferer` (e.g. make_inferer's) under `passes` test-time augmentations.

    Returns the SR output chosen by `output` ("single": the identity pass, "tta_mean": the TTA mean, as recorded in
    `CalibrationRecord.sr_output`); when `with_std`, the TTA std follows as extra channels, (B, 2C, sX, sY, sZ)
    with SR in [:, :C] and std in [:, C:], for postprocessing to split into two keys. With passes = 1, "single"
    and with_std False it equals the wrapped inferer.
    """

    def __init__(
        self, inferer: Inferer, scale: int | Sequence[int], passes: int, output: str = "single", with_std: bool = True
    ) -> None:
        super().__init__()
        if output not in ("single", "tta_mean"):
            raise ValueError(f"TTA output must be 'single' or 'tta_mean', got {output!r}")
        tta_augmentations(scale, passes)  # fail at construction on a bad number of passes
        self.inferer, self.scale, self.passes = inferer, ensure_scale3(scale), passes
        self.output, self.with_std = output, with_std

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        res = tta_predict(inputs, lambda x: self.inferer(x, network, *args, **kwargs), self.scale, self.passes)
        sr = res.single if self.output == "single" else res.mean
        return torch.cat([sr, res.std], dim=1) if self.with_std else sr


def make_sr_inferer(
    inferer: Inferer, scale: int | Sequence[int], passes: int, calibration: CalibrationRecord | None = None
) -> Inferer:
    """The inference evaluator's inferer: `inferer` itself when passes is 0, else a `TTAInferer` returning
    [SR | std], whose SR is the output the calibration chose ("single" without a calibration). Either way the
    windows and passes of each volume are logged with an ETA (`bundle.core.progress.ProgressInferer`)."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 0:
        raise ValueError(f"uncertainty must be 0 (off) or a number of test-time augmentation passes, got {passes!r}")
    from bundle.core.progress import ProgressInferer  # windows and passes, with an ETA, inside each volume

    if passes == 0:
        return ProgressInferer(inferer, 1)
    output = calibration.sr_output if calibration is not None else "single"
    return TTAInferer(ProgressInferer(inferer, passes), scale, passes, output)


# ----------------------------------------------------------------------------------------------------------------
# Conformal calibration
# ----------------------------------------------------------------------------------------------------------------


def _select(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The 1-D float64 values under `mask` (broadcastable to `values`; None = every voxel)."""
    values = values.detach()
    if mask is None:
        return values.reshape(-1).double()
    return values.reshape(-1)[mask.detach().to(torch.bool).expand_as(values).reshape(-1)].double()


def conformal_scores(
    abs_error: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None, std_floor: float = 1e-3
) -> torch.Tensor:
    """Normalised nonconformity scores |error| / max(std, floor) of the masked voxels, 1-D float64 on the CPU."""
    if abs_error.shape != std.shape:
        raise ValueError(f"error {tuple(abs_error.shape)} and std {tuple(std.shape)} must have the same shape")
    if std_floor <= 0:
        raise ValueError(f"std_floor must be > 0, got {std_floor}")
    scores = abs_error.detach().abs().double() / std.detach().double().clamp_min(std_floor)
    return _select(scores, mask).cpu()


def conformal_quantile(scores: torch.Tensor | np.ndarray, coverage: float = 0.9) -> float:
    """Split-conformal quantile: the k-th smallest of n scores with k = ceil((n + 1) * coverage).

    That is the empirical quantile at level ceil((n + 1) q) / n, which makes a fresh exchangeable score fall at
    or below it with probability >= q. Needs k <= n, i.e. n >= q / (1 - q) scores (9 for q = 0.9).
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    n = s.numel()
    k = math.ceil((n + 1) * coverage)
    if k > n:
        raise ValueError(f"{n} calibration voxel(s) are too few for coverage {coverage}: need at least {k}")
    return float(torch.kthvalue(s, k).values)


def conformal_lambda(
    abs_error: torch.Tensor,
    std: torch.Tensor,
    mask: torch.Tensor | None = None,
    coverage: float = 0.9,
    std_floor: float = 1e-3,
) -> float:
    """Lambda such that |error| <= lambda * max(std, floor) on `coverage` of the masked voxels (finite-sample).

    For several volumes, concatenate their `conformal_scores` (or use `ConformalAccumulator`) and call
    `conformal_quantile`.
    """
    return conformal_quantile(conformal_scores(abs_error, std, mask, std_floor), coverage)


def coverage(
    abs_error: torch.Tensor, std: torch.Tensor, lam: float, mask: torch.Tensor | None = None, std_floor: float = 1e-3
) -> float:
    """Fraction of masked voxels with |error| <= lam * max(std, floor) (nan when the mask is empty)."""
    scores = conformal_scores(abs_error, std, mask, std_floor)
    return float((scores <= lam).double().mean()) if scores.numel() else math.nan


class ConformalAccumulator:
    """Scores of many (large) calibration volumes, each subsampled to at most `max_per_volume` voxels.

    The subsample of volume i is drawn with a generator seeded by (seed, i), so a calibration run is reproducible
    and its memory is bounded by volumes x max_per_volume x 8 bytes. Alongside each score it keeps the
    consistency residual of the same voxel over the same floor, so that the fraction of voxels whose residual
    exceeds the calibrated bound can be measured per validation volume once lambda is known.
    """

    def __init__(self, max_per_volume: int = 100_000, std_floor: float = 1e-3, seed: int = 0) -> None:
        if max_per_volume < 1:
            raise ValueError(f"max_per_volume must be >= 1, got {max_per_volume}")
        self.max_per_volume, self.std_floor, self.seed = max_per_volume, std_floor, seed
        self.scores: list[torch.Tensor] = []
        self.residual_scores: list[torch.Tensor | None] = []
        self.residual_means: list[float] = []
        self.voxels_seen = 0

    def add(
        self,
        abs_error: torch.Tensor,
        std: torch.Tensor,
        mask: torch.Tensor | None = None,
        consistency_residual: torch.Tensor | None = None,
    ) -> None:
        """One calibration volume: |SR - HR|, TTA std and (optionally) the consistency residual, same shape."""
        scores = conformal_scores(abs_error, std, mask, self.std_floor)
        residual = None
        if consistency_residual is not None:
            residual = conformal_scores(consistency_residual, std, mask, self.std_floor)
            self.residual_means.append(float(_select(consistency_residual.abs(), mask).mean()))
        self.voxels_seen += scores.numel()
        if scores.numel() > self.max_per_volume:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + len(self.scores))
            keep = torch.randperm(scores.numel(), generator=gen)[: self.max_per_volume]
            scores = scores[keep]
            residual = None if residual is None else residual[keep]
        self.scores.append(scores)
        self.residual_scores.append(residual)

    @property
    def num_volumes(self) -> int:
        return len(self.scores)

    def all_scores(self) -> torch.Tensor:
        return torch.cat(self.scores) if self.scores else torch.zeros(0, dtype=torch.float64)

    def lambda_(self, target: float = 0.9) -> float:
        return conformal_quantile(self.all_scores(), target)

    def coverage(self, lam: float) -> float:
        """Fraction of the kept calibration scores <= lam (>= the target by construction of lambda)."""
        scores = self.all_scores()
        return float((scores <= lam).double().mean()) if scores.numel() else math.nan

    def fractions_above_bound(self, lam: float) -> list[float]:
        """Per volume with a residual: fraction of its kept voxels whose residual exceeds lam * max(std, floor)."""
        return [float((r > lam).double().mean()) for r in self.residual_scores if r is not None and r.numel()]

    def record(self, target: float, tta_passes: int, sr_output: str = "single") -> CalibrationRecord:
        lam = self.lambda_(target)
        fractions = self.fractions_above_bound(lam)
        return CalibrationRecord(
            lam=lam,
            coverage_target=target,
            coverage_reached=self.coverage(lam),
            tta_passes=tta_passes,
            std_floor=self.std_floor,
            num_voxels=int(self.all_scores().numel()),
            num_volumes=self.num_volumes,
            sr_output=sr_output,
            consistency_residual_mean=float(np.mean(self.residual_means)) if self.residual_means else None,
            consistency_residual_max=float(np.max(self.residual_means)) if self.residual_means else None,
            fraction_above_bound_max=max(fractions) if fractions else None,
        )


# ----------------------------------------------------------------------------------------------------------------
# Agreement between uncertainty and error
# ----------------------------------------------------------------------------------------------------------------


def spearman(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, max_samples: int = 200_000, seed: int = 0
) -> float:
    """Spearman rank correlation of `a` and `b` (same shape) over the masked voxels, e.g. uncertainty vs |error|.

    More than `max_samples` voxels are subsampled (the same voxels in both, fixed `seed`) to bound the sort.
    nan when fewer than two voxels or either side is constant.
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman needs tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = _select(a, mask).cpu(), _select(b, mask).cpu()
    if x.numel() > max_samples:
        keep = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(seed))[:max_samples]
        x, y = x[keep], y[keep]
    if x.numel() < 2 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return math.nan
    return float(stats.spearmanr(x.numpy(), y.numpy()).statistic)


# ----------------------------------------------------------------------------------------------------------------
# Calibration record saved with the model
# ----------------------------------------------------------------------------------------------------------------


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
    ood_fraction_threshold / ood_residual_threshold: the out-of-distribution warning's thresholds on the fraction
    of voxels above the bound and on the mean residual, fitted on shifted validation volumes (`bundle.trust.ood`; None:
    not fitted, the fixed rule of `ood_warning` applies).
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
    ood_fraction_threshold: float | None = None
    ood_residual_threshold: float | None = None

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


# ----------------------------------------------------------------------------------------------------------------
# Per-volume trust summary
# ----------------------------------------------------------------------------------------------------------------


def calibrated_uncertainty(std: torch.Tensor, calibration: CalibrationRecord) -> torch.Tensor:
    """lambda * max(std, floor): the calibrated error bound per voxel (same shape as std)."""
    return calibration.lam * std.float().clamp_min(calibration.std_floor)


def foreground_mask(volume: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Voxels brighter than `threshold` (the evaluation's rule `hr > foreground_threshold`), bool, same shape."""
    return volume > threshold


def _masked_scalar(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` over `mask` (broadcastable), as one float over the whole tensor."""
    m = mask.to(torch.bool).expand_as(values)
    return float(masked_mean(values.float().reshape(1, -1), m.reshape(1, -1))[0])


def trust_summary(
    sr_hr_grid: torch.Tensor,
    std: torch.Tensor | None,
    consistency_residual: torch.Tensor | None,
    foreground_mask: torch.Tensor | None = None,
    calibration: CalibrationRecord | None = None,
    foreground_threshold: float = 0.05,
) -> dict:
    """JSON-ready per-volume summary of how far to trust the SR output (one volume, tensors (1, C, X, Y, Z)).

    Keys: foreground_voxels; consistency_residual_mean (foreground mean |D(SR) - LR| on the HR grid);
    tta_std_mean; calibrated_uncertainty_mean (foreground mean lambda * max(std, floor)); fraction_above_bound
    (foreground voxels whose consistency residual exceeds lambda * max(std, floor)); lambda; coverage_target;
    missing (which of "uncertainty", "consistency", "calibration" were not available; their values are None);
    warning (`ood_warning`, None when nothing looks wrong). The mask defaults to SR > foreground_threshold.
    """
    mask = foreground_mask if foreground_mask is not None else sr_hr_grid > foreground_threshold
    for name, t in (("std", std), ("consistency_residual", consistency_residual)):
        if t is not None and t.shape != sr_hr_grid.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must have the SR shape {tuple(sr_hr_grid.shape)}")
    mask = mask.to(torch.bool).expand_as(sr_hr_grid)
    available = {"uncertainty": std, "consistency": consistency_residual, "calibration": calibration}
    missing = [name for name, value in available.items() if value is None]
    summary: dict = {
        "foreground_voxels": int(mask.sum()),
        "consistency_residual_mean": None,
        "tta_std_mean": None,
        "calibrated_uncertainty_mean": None,
        "fraction_above_bound": None,
        "lambda": calibration.lam if calibration is not None else None,
        "coverage_target": calibration.coverage_target if calibration is not None else None,
        "missing": missing,
    }
    if consistency_residual is not None:
        summary["consistency_residual_mean"] = _masked_scalar(consistency_residual.abs(), mask)
    if std is not None:
        summary["tta_std_mean"] = _masked_scalar(std, mask)
        if calibration is not None:
            bound = calibrated_uncertainty(std, calibration)
            summary["calibrated_uncertainty_mean"] = _masked_scalar(bound, mask)
            if consistency_residual is not None:
                above = consistency_residual.abs().float() > bound
                summary["fraction_above_bound"] = _masked_scalar(above.float(), mask)
    summary["warning"] = ood_warning(summary, calibration)
    return summary


def ood_warning(summary: dict, calibration: CalibrationRecord | None) -> str | None:
    """One line when the input looks unlike the training data, else None.

    Two tests, each used when its numbers exist:
    - the foreground mean consistency residual exceeds OOD_RESIDUAL_FACTOR (3) times the largest per-volume
      mean seen on validation: the model no longer reproduces its own input, so its degradation assumption or
      its prior does not fit this scan;
    - fraction_above_bound exceeds the allowed miscoverage 1 - coverage_target (or the largest fraction seen on
      validation, when that was higher). The residual is the error seen through the degradation, a local average
      of the signed error; where it exceeds the bound, the error itself must exceed it somewhere in that LR voxel.
      Calibration promises at most 1 - coverage_target of voxels above the bound on data like the validation
      set, so more voxels than that above it from the residual alone means the promise does not hold here.
    """
    if calibration is None:
        return None
    if calibration.ood_fraction_threshold is not None or calibration.ood_residual_threshold is not None:
        return _measured_warning(summary, calibration)
    reasons = []
    residual, largest = summary.get("consistency_residual_mean"), calibration.consistency_residual_max
    if residual is not None and largest is not None and residual > OOD_RESIDUAL_FACTOR * largest:
        reasons.append(
            f"mean consistency residual {residual:.4g} is {residual / max(largest, 1e-12):.1f}x "
            f"the largest seen on validation ({largest:.4g})"
        )
    fraction = summary.get("fraction_above_bound")
    if fraction is not None:
        limit = max(1.0 - calibration.coverage_target, calibration.fraction_above_bound_max or 0.0)
        if fraction > limit:
            reasons.append(f"{fraction:.1%} of foreground voxels exceed the calibrated error bound (limit {limit:.1%})")
    if not reasons:
        return None
    return "input looks unlike the training data: " + "; ".join(reasons) + "; treat the SR output with caution"


def _measured_warning(summary: dict, calibration: CalibrationRecord) -> str | None:
    """The rule fitted by `bundle.trust.ood.fit_ood_thresholds` on shifted validation volumes: fires when the fraction
    of foreground voxels above the bound, or the mean residual, exceeds its threshold (volumes past them had
    their coverage more than 5 points below the target)."""
    reasons = []
    fraction, f_thr = summary.get("fraction_above_bound"), calibration.ood_fraction_threshold
    if fraction is not None and f_thr is not None and fraction > f_thr:
        reasons.append(f"{fraction:.1%} of foreground voxels exceed the calibrated error bound (threshold {f_thr:.1%})")
    residual, r_thr = summary.get("consistency_residual_mean"), calibration.ood_residual_threshold
    if residual is not None and r_thr is not None and residual > r_thr:
        reasons.append(f"mean consistency residual {residual:.4g} exceeds the threshold {r_thr:.4g} (normalised units)")
    if not reasons:
        return None
    return (
        "input looks unlike the training data: "
        + "; ".join(reasons)
        + f"; the calibrated bound probably covers less than {calibration.coverage_target:.0%} of voxels here; "
        "treat the SR output with caution"
    )


# ----------------------------------------------------------------------------------------------------------------
# Calibration on validation volumes
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def calibrate_volumes(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    predict: Callable[[torch.Tensor], torch.Tensor],
    consistency: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scale: int | Sequence[int],
    passes: int = 8,
    target: float = 0.9,
    sr_output: str = "best",
    foreground_threshold: float = 0.05,
    std_floor: float = 1e-3,
    max_per_volume: int = 100_000,
    seed: int = 0,
) -> tuple[CalibrationRecord, dict]:
    """Calibrate TTA uncertainty on validation (HR, LR) pairs: HR (1, C, sX, sY, sZ) in [0, 1], LR (1, C, X, Y, Z).

    consistency: (SR, LR) -> |D(SR) - LR| on the HR grid, the consistency map inference writes
    (`bundle.data.degradation.consistency_map` with the configured operator).
    sr_output: "single", "tta_mean", or "best" (whichever has the lower foreground MSE over all volumes, which
    measures whether TTA averaging beats one pass). Returns the record and a report with the foreground PSNR of
    both outputs per volume and the Spearman correlation of std with |error| per volume.
    """
    if sr_output not in ("single", "tta_mean", "best"):
        raise ValueError(f"sr_output must be 'single', 'tta_mean' or 'best', got {sr_output!r}")
    scale3 = ensure_scale3(scale)
    accs = {k: ConformalAccumulator(max_per_volume, std_floor, seed) for k in ("single", "tta_mean")}
    sq_err = {"single": [], "tta_mean": []}
    rho = {"single": [], "tta_mean": []}
    for hr, lr in pairs:
        hr, lr = hr.float(), lr.float()
        mask = foreground_mask(hr, foreground_threshold)
        res = tta_predict(lr, predict, scale3, passes)
        for key, sr in (("single", res.single), ("tta_mean", res.mean)):
            sr = sr.to(hr.device)
            err = (sr - hr).abs()
            std = res.std.to(hr.device)
            residual = consistency(sr, lr.to(sr.device))
            accs[key].add(err, std, mask, residual)
            sq_err[key].append(_masked_scalar(err * err, mask))
            rho[key].append(spearman(std, err, mask, seed=seed))
    if not sq_err["single"]:
        raise ValueError("no calibration volumes given")
    mse = {k: float(np.mean(v)) for k, v in sq_err.items()}
    chosen = min(mse, key=mse.get) if sr_output == "best" else sr_output
    record = accs[chosen].record(target, passes, chosen)
    report = {
        "sr_output": chosen,
        "psnr_fg": {k: [10 * math.log10(1 / max(v, 1e-12)) for v in sq_err[k]] for k in sq_err},
        "mse_fg_mean": mse,
        "spearman_std_vs_error": rho[chosen],
        "voxels_seen": accs[chosen].voxels_seen,
    }
    return record, report
