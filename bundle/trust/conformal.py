"""Split conformal prediction: the raw TTA spread made into an error bound with a coverage guarantee.

On validation volumes with known HR (Angelopoulos & Bates 2021; Angelopoulos et al. 2022, image-to-image
regression), lambda is the finite-sample quantile of |error| / max(std, floor), so that |error| <= lambda *
max(std, floor) holds for the target fraction of foreground voxels. The guarantee is marginal over voxels of
volumes exchangeable with the calibration volumes (voxels inside one volume are correlated, so it is approximate
per volume); a scan unlike the training data breaks it, which the trust summary's warning looks for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy import stats

from bundle.core.choices import FOREGROUND_THRESHOLD
from bundle.core.geometry import ensure_scale3
from bundle.trust.record import CalibrationRecord
from bundle.trust.summary import foreground_mask, masked_scalar
from bundle.trust.tta import tta_predict


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
        self.sum_squared_error, self.sum_squared_std = 0.0, 0.0  # over every voxel added (`error_variance_ratio`)

    def add(
        self,
        abs_error: torch.Tensor,
        std: torch.Tensor,
        mask: torch.Tensor | None = None,
        consistency_residual: torch.Tensor | None = None,
    ) -> None:
        """One calibration volume: |SR - HR|, TTA std and (optionally) the consistency residual, same shape."""
        scores = conformal_scores(abs_error, std, mask, self.std_floor)
        self.sum_squared_error += float(_select(abs_error.double(), mask).square().sum())
        self.sum_squared_std += float(_select(std.double().clamp_min(self.std_floor), mask).square().sum())
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

    def error_variance_ratio(self) -> float:
        """Mean squared error over mean squared (floored) TTA std, over every voxel added (not subsampled): how
        much squared error one unit of TTA variance means on these volumes (`CalibrationRecord`)."""
        return self.sum_squared_error / self.sum_squared_std if self.sum_squared_std > 0 else math.nan

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


@torch.no_grad()
def calibrate_volumes(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    predict: Callable[[torch.Tensor], torch.Tensor],
    consistency: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    scale: int | Sequence[int],
    passes: int = 8,
    target: float = 0.9,
    sr_output: str = "best",
    foreground_threshold: float = FOREGROUND_THRESHOLD,
    std_floor: float = 1e-3,
    max_per_volume: int = 100_000,
    seed: int = 0,
) -> tuple[CalibrationRecord, dict]:
    """Calibrate TTA uncertainty on validation (HR, LR) pairs: HR (1, C, sX, sY, sZ) in [0, 1], LR (1, C, X, Y, Z).

    consistency: (SR, LR) -> (what inference writes from the SR, |D(SR) - LR| on the HR grid), inference's
    consistency step in one run (`bundle.trust.consistency.ConsistencyStep.output_and_residual`): the bound is
    calibrated on the errors of the first, the out-of-distribution numbers are of the second.
    sr_output: "single", "tta_mean", or "best" (whichever has the lower foreground MSE over all volumes, which
    measures whether TTA averaging beats one pass). Returns the record and a report with the foreground PSNR of
    both outputs per volume and the Spearman correlation of std with |error| per volume.
    """
    if sr_output not in ("single", "tta_mean", "best"):
        raise ValueError(f"sr_output must be 'single', 'tta_mean' or 'best', got {sr_output!r}")
    scale3 = ensure_scale3(scale)
    accs = {k: ConformalAccumulator(max_per_volume, std_floor, seed) for k in ("single", "tta_mean")}
    sq_err: dict[str, list[float]] = {"single": [], "tta_mean": []}
    rho: dict[str, list[float]] = {"single": [], "tta_mean": []}
    for hr, lr in pairs:
        hr, lr = hr.float(), lr.float()
        mask = foreground_mask(hr, foreground_threshold)
        res = tta_predict(lr, predict, scale3, passes)
        for key, sr in (("single", res.single), ("tta_mean", res.mean)):
            sr, residual = consistency(sr.to(hr.device), lr.to(hr.device))
            sr = sr.to(hr.device)
            err = (sr - hr).abs()
            std = res.std.to(hr.device)
            accs[key].add(err, std, mask, residual)
            sq_err[key].append(masked_scalar(err * err, mask))
            rho[key].append(spearman(std, err, mask, seed=seed))
    if not sq_err["single"]:
        raise ValueError("no calibration volumes given")
    mse = {k: float(np.mean(v)) for k, v in sq_err.items()}
    chosen = min(mse, key=lambda k: mse[k]) if sr_output == "best" else sr_output
    record = accs[chosen].record(target, passes, chosen)
    report = {
        "sr_output": chosen,
        "psnr_fg": {k: [10 * math.log10(1 / max(v, 1e-12)) for v in sq_err[k]] for k in sq_err},
        "mse_fg_mean": mse,
        "spearman_std_vs_error": rho[chosen],
        "voxels_seen": accs[chosen].voxels_seen,
    }
    return record, report
