"""The reference study's evaluation protocol, per degradation: HR test volume -> LR (each method) -> SR, against baselines.

A real scan's degradation is unknown, so every volume is degraded several ways (`lr_methods`: k-space
truncation, block average, Gaussian slice profile by default) and each method is scored on each: the network
("sr"), trilinear and cubic B-spline upsampling of the same LR. Metrics: MSE, PSNR, SSIM (3D, data range 1) and
LPIPS (slice-wise, three planes) over the whole volume and inside the foreground (HR above a threshold). With
`uncertainty` passes the SR rows also report the calibrated coverage (fraction of foreground voxels whose error
is within the calibrated bound) and how well the uncertainty ranks the error (Spearman). Writes per-case CSV,
summary JSON and Markdown, and figures.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from scipy import ndimage
from tqdm import tqdm

from bundle.core.atomic import write_text_atomic
from bundle.core.choices import FOREGROUND_THRESHOLD, OPERATORS
from bundle.core.geometry import ensure_scale3
from bundle.core.metrics import masked_mean, psnr_from_mse, squared_error, ssim_from_map, ssim_map_3d
from bundle.core.progress import ProgressInferer, VolumeProgress
from bundle.data.datalist import transform_or_error
from bundle.data.degradation import degrade, project
from bundle.evaluation.lpips_metric import VolumeLPIPS, load_lpips
from bundle.inference.generator import load_generator
from bundle.trust.conformal import coverage, spearman
from bundle.trust.record import CalibrationRecord, calibrated_uncertainty, load_calibration
from bundle.trust.tta import tta_predict

__all__ = ["SREvaluation", "upsample_baseline", "BASELINES"]

logger = logging.getLogger(__name__)
BASELINES = ("trilinear", "bspline")
METRICS = ("mse", "psnr", "ssim", "lpips", "mse_fg", "psnr_fg", "ssim_fg", "coverage", "spearman")
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "lpips": False}


def upsample_baseline(lr: torch.Tensor, scale: Sequence[int], method: str) -> torch.Tensor:
    """Upsample (1, 1, x, y, z) by `scale` with voxel-centred sampling: 'trilinear' or cubic 'bspline'."""
    size = [n * s for n, s in zip(lr.shape[2:], scale, strict=True)]
    if method == "trilinear":
        return F.interpolate(lr.float(), size=size, mode="trilinear", align_corners=False)
    if method == "bspline":
        arr = lr[0, 0].float().cpu().numpy()
        up = ndimage.zoom(arr, scale, order=3, mode="grid-mirror", grid_mode=True)
        return torch.from_numpy(np.ascontiguousarray(up))[None, None].to(lr.device)
    raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}")


class SREvaluation:
    """Runs the protocol over `datalist` (items giving "image" = the normalised, padded HR after `transform`).

    Args:
        datalist: items for `transform`, e.g. the MSD "test" section.
        transform: loading, normalisation and padding (the training HR transforms).
        lr_methods: the degradations each volume is evaluated under (`bundle.data.degradation.METHODS`).
        uncertainty: TTA passes for the SR (0 = one pass, no uncertainty columns).
        calibration_path: the model's calibration file (coverage is reported when it exists).
        projection: also score "sr_project", the SR made consistent with its LR by range-null-space projection
            with the true degradation as operator (what `consistency: project` does at best).
        network / inferer / device: the generator and how to run it on a whole LR volume.
        output_dir: where per_case.csv, summary.json, summary.md and figures/ go.
        ckpt_path: generator weights to load (plain state dict or {"model": ...}); None = use as is.
        lpips_weights: "auto" (torchvision's AlexNet file in the torch hub cache), a file path, or None to skip.
        foreground_threshold: HR intensity above which a voxel counts as foreground.
        num_figures: how many cases get a figure.
    """

    def __init__(
        self,
        datalist: list[dict],
        transform: Callable[[dict], dict],
        network: torch.nn.Module,
        inferer: Inferer,
        output_dir: str,
        scale: int | Sequence[int] = 4,
        device: str | torch.device = "cpu",
        ckpt_path: str | None = None,
        baselines: Sequence[str] = BASELINES,
        lpips_weights: str | None = "auto",
        lpips_slices_per_plane: int | None = None,
        foreground_threshold: float = FOREGROUND_THRESHOLD,
        num_figures: int = 2,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        lr_methods: Sequence[str] = OPERATORS,
        uncertainty: int = 0,
        calibration_path: str | None = None,
        projection: bool = True,
        ood_shifts: Sequence[str] = (),
        consistency_operator: str | None = None,
    ) -> None:
        if not datalist:
            raise ValueError("evaluation datalist is empty")
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        self.datalist, self.transform = datalist, transform
        self.network, self.output_dir = network, Path(output_dir)
        self.inferer = ProgressInferer(inferer, max(int(uncertainty), 1), desc="evaluating")  # windows, with an ETA
        self.scale = ensure_scale3(scale)
        self.device = torch.device(device)
        self.ckpt_path = ckpt_path
        self.baselines = tuple(baselines)
        self.lpips_weights = lpips_weights
        self.lpips_slices_per_plane = lpips_slices_per_plane
        self.foreground_threshold = foreground_threshold
        self.num_figures = num_figures
        self.amp = amp and self.device.type == "cuda"
        self.amp_dtype = getattr(torch, amp_dtype)  # the run's `amp_dtype`, as training and inference autocast
        self.lr_methods = tuple(lr_methods)
        if not self.lr_methods:
            raise ValueError("eval_lr_methods is empty: name at least one degradation")
        self.uncertainty = int(uncertainty)
        self.calibration_path = calibration_path
        self.projection = projection
        self.ood_shifts = tuple(ood_shifts)
        self.consistency_operator = consistency_operator

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        ctx = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp else torch.autocast("cpu", enabled=False)
        with ctx:
            return self.inferer(lr.to(self.device), self.network).float()

    def score(self, pred: torch.Tensor, hr: torch.Tensor, lpips_fn: VolumeLPIPS | None) -> dict[str, Any]:
        """Every metric from one squared-error map and one SSIM map (full volumes are large).

        A non-finite prediction gets no metrics and a `missing` reason instead (shown in the tables).
        """
        pred = pred.to(hr.device)
        bad = int((~torch.isfinite(pred)).sum())
        if bad:
            return {"missing": f"{bad} non-finite voxel(s) in the output (broken model weights?)"}
        mask = hr > self.foreground_threshold
        err, smap = squared_error(pred, hr), ssim_map_3d(pred, hr)
        mse_all, mse_fg = masked_mean(err), masked_mean(err, mask)
        return {
            "mse": float(mse_all),
            "psnr": float(psnr_from_mse(mse_all)),
            "ssim": float(ssim_from_map(smap)),
            "mse_fg": float(mse_fg),
            "psnr_fg": float(psnr_from_mse(mse_fg)),
            "ssim_fg": float(ssim_from_map(smap, mask=mask)),
            "lpips": lpips_fn(pred, hr) if lpips_fn is not None else math.nan,
        }

    def _uncertainty_columns(
        self, pred: torch.Tensor, std: torch.Tensor, hr: torch.Tensor, calibration: CalibrationRecord | None
    ) -> dict[str, float]:
        """Calibrated coverage and the Spearman rank correlation of uncertainty with |error| (foreground)."""
        mask = hr > self.foreground_threshold
        err = (pred.to(hr.device) - hr).abs()
        std = std.to(hr.device)
        cols = {"spearman": spearman(std, err, mask)}
        if calibration is not None:
            cols["coverage"] = coverage(err, std, calibration.lam, mask, calibration.std_floor)
        return cols

    def run(self) -> dict:
        from bundle.evaluation.figures import comparison_figure, uncertainty_figure  # matplotlib only when reporting

        if self.ckpt_path is not None:
            load_generator(self.network, self.ckpt_path, self.device)
        self.network.to(self.device)
        calibration = load_calibration(self.calibration_path) if self.calibration_path and self.uncertainty else None
        if self.uncertainty and calibration is None:
            logger.warning("no calibration at %s: coverage is not reported", self.calibration_path)
        lpips_model, lpips_reason = (None, "disabled") if self.lpips_weights is None else load_lpips(self.lpips_weights)
        lpips_fn = VolumeLPIPS(lpips_model.to(self.device), self.lpips_slices_per_plane) if lpips_model else None
        if lpips_fn is None:
            logger.warning("LPIPS skipped and reported as missing: %s", lpips_reason)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "figures").mkdir(exist_ok=True)
        rows, figures = [], []
        for i, item in enumerate(tqdm(self.datalist, desc="evaluating", unit="volume")):
            hr = torch.as_tensor(transform_or_error(self.transform, item, i)["image"]).float()
            case = Path(str(item["image"])).name.split(".")[0]
            for degradation in self.lr_methods:
                lr = degrade(hr, self.scale, degradation)[None]
                preds = {method: upsample_baseline(lr, self.scale, method) for method in self.baselines}
                std = None
                if self.uncertainty:
                    res = tta_predict(lr, self.super_resolve, self.scale, self.uncertainty)
                    sr_output = calibration.sr_output if calibration is not None else "single"
                    preds["sr"], std = (res.single if sr_output == "single" else res.mean).cpu(), res.std.cpu()
                else:
                    preds["sr"] = self.super_resolve(lr).cpu()
                if self.projection and degradation in OPERATORS and torch.isfinite(preds["sr"]).all():
                    preds["sr_project"] = project(preds["sr"], lr, self.scale, degradation)
                for method, pred in preds.items():
                    row: dict[str, Any] = {"case": case, "degradation": degradation, "method": method}
                    row.update(self.score(pred, hr[None], lpips_fn))
                    if method == "sr" and std is not None and "missing" not in row:
                        row.update(self._uncertainty_columns(pred, std, hr[None], calibration))
                    rows.append(row)
                if i < self.num_figures:
                    path = self.output_dir / "figures" / f"{case}_{degradation}.png"
                    scores = {r["method"]: r for r in rows if r["case"] == case and r["degradation"] == degradation}
                    title = f"{case}, LR by {degradation}"
                    comparison_figure(lr, preds, hr[None], path, scale=self.scale, title=title, scores=scores)
                    figures.append(str(path))
                    if std is not None:
                        path = self.output_dir / "figures" / f"{case}_{degradation}_uncertainty.png"
                        shown = std if calibration is None else calibrated_uncertainty(std, calibration)
                        label = "uncertainty (TTA std)" if calibration is None else "calibrated bound (lambda x std)"
                        uncertainty_figure(preds["sr"], hr[None], shown, path, label)
                        figures.append(str(path))
        summary = self._summarise(rows, lpips_reason if lpips_fn is None else None, figures)
        if self.ood_shifts and self.uncertainty and calibration is not None:
            summary["ood"] = self._ood_study(calibration)
        self._write(rows, summary)
        return summary

    def _ood_study(self, calibration: CalibrationRecord) -> dict:
        """How the calibrated out-of-distribution warning does on these held-out volumes, each under every
        shift of `ood_shifts` and degradation: fire rates on volumes whose coverage fell more than 5 points below
        the target and on the others (`bundle.trust.ood.warning_rates`); per-volume rows in ood_volumes.csv."""
        from bundle.data.degradation import consistency_map
        from bundle.trust.ood import VolumeTrust, measure_volume, shifted_pairs, warning_fires, warning_rates

        operator = self.consistency_operator or calibration.consistency_operator or "area"
        items = []
        for i, item in enumerate(self.datalist):
            hr = torch.as_tensor(transform_or_error(self.transform, item, i)["image"]).float()[None]
            items.append((Path(str(item["image"])).name.split(".")[0], hr))
        progress = VolumeProgress("out-of-distribution study", len(items) * len(self.ood_shifts) * len(self.lr_methods))
        rows = []
        for case, shift, method, hr, lr in shifted_pairs(items, self.ood_shifts, self.lr_methods, self.scale):
            cov, above, residual = measure_volume(
                hr,
                lr,
                self.super_resolve,
                lambda sr, x: consistency_map(sr, x, self.scale, operator),
                calibration,
                self.scale,
                self.uncertainty,
                self.foreground_threshold,
            )
            rows.append(VolumeTrust(case, shift, method, cov, above, residual))
            progress.step(f"{case} {shift} {method}: coverage {cov:.1%}")
        table = io.StringIO(newline="")
        fields = ["case", "shift", "degradation", "coverage", "fraction_above_bound", "residual_mean", "warning"]
        writer = csv.DictWriter(table, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            fired = warning_fires(r.fraction_above_bound, r.residual_mean, calibration)
            writer.writerow({**{f: getattr(r, f) for f in fields[:-1]}, "warning": fired})
        write_text_atomic(self.output_dir / "ood_volumes.csv", table.getvalue())
        rates = warning_rates(rows, calibration)
        rates["shifts"] = list(self.ood_shifts)
        rates["thresholds"] = {
            "fraction_above_bound": calibration.ood_fraction_threshold,
            "residual_mean": calibration.ood_residual_threshold,
        }
        return rates

    @staticmethod
    def _table(rows: list[dict]) -> dict:
        """{method: {metric: {mean, sd, n}}} over `rows`; a method whose rows all lack a metric has no entry."""
        table: dict[str, dict[str, Any]] = {}
        for method in dict.fromkeys(r["method"] for r in rows):
            table[method] = {}
            for metric in METRICS:
                values = [r[metric] for r in rows if r["method"] == method and not math.isnan(r.get(metric, math.nan))]
                if values:
                    sd = statistics.stdev(values) if len(values) > 1 else 0.0
                    table[method][metric] = {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}
            reasons = sorted({r["missing"] for r in rows if r["method"] == method and r.get("missing")})
            if reasons:
                table[method]["missing"] = "; ".join(reasons)
        return table

    def _summarise(self, rows: list[dict], lpips_missing: str | None, figures: list[str]) -> dict:
        degradations = {d: self._table([r for r in rows if r["degradation"] == d]) for d in self.lr_methods}
        return {
            "cases": len({r["case"] for r in rows}),
            "degradations": degradations,
            "methods": self._table(rows),  # pooled over every degradation
            "lpips_missing_reason": lpips_missing,
            "uncertainty_passes": self.uncertainty,
            "figures": figures,
        }

    def _write(self, rows: list[dict], summary: dict) -> None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=["case", "degradation", "method", *METRICS, "missing"], restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.output_dir / "per_case.csv", table.getvalue())
        write_text_atomic(self.output_dir / "summary.json", json.dumps(summary, indent=4))
        write_text_atomic(self.output_dir / "summary.md", markdown_table(summary))
        logger.info("evaluation written to %s", self.output_dir)


def _method_table(methods: dict, cols: list[str]) -> list[str]:
    """Markdown rows (mean ± sd) of one table, the best value per column in bold; "missing" where no value."""

    def best(col: str) -> str | None:
        key = col.split("_")[0]
        vals = {m: v[col]["mean"] for m, v in methods.items() if col in v}
        if not vals or key not in HIGHER_IS_BETTER:
            return None
        return (max if HIGHER_IS_BETTER[key] else min)(vals, key=lambda m: vals[m])

    winners = {c: best(c) for c in cols}
    lines = [
        "| method | " + " | ".join(c.upper().replace("_FG", " (fg)") for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for m, v in methods.items():
        cells = []
        for c in cols:
            if c not in v:
                cells.append("missing" if c not in ("coverage", "spearman") or m == "sr" else "")
                continue
            digits = 6 if c.startswith("mse") else 4
            text = f"{v[c]['mean']:.{digits}f} ± {v[c]['sd']:.{digits}f}"
            cells.append(f"**{text}**" if winners[c] == m else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def gain_table(summary: dict) -> list[str]:
    """SR minus trilinear, per degradation: the number that says whether the model beats interpolation."""
    lines = ["| degradation | PSNR gain over trilinear (dB) | SSIM gain | PSNR gain (fg) |", "|---|---|---|---|"]
    for degradation, methods in summary["degradations"].items():
        sr, tri = methods.get("sr", {}), methods.get("trilinear", {})
        cells = []
        for col in ("psnr", "ssim", "psnr_fg"):
            if col in sr and col in tri:
                digits = 2 if col.startswith("psnr") else 4
                cells.append(f"{sr[col]['mean'] - tri[col]['mean']:+.{digits}f}")
            else:
                cells.append("missing")
        lines.append(f"| {degradation} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(summary: dict) -> str:
    """One table per degradation (mean ± sd per method) and the SR gain over trilinear for each."""
    cols = ["mse", "psnr", "ssim", "lpips", "psnr_fg", "ssim_fg"]
    if summary.get("uncertainty_passes"):
        cols += ["coverage", "spearman"]
    lines = [f"Evaluation on {summary['cases']} volume(s): mean ± sd (fg = inside the foreground mask).", ""]
    lines += gain_table(summary)
    for degradation, methods in summary["degradations"].items():
        lines += ["", f"LR made by **{degradation}**:", ""] + _method_table(methods, cols)
    missing = {
        m: v["missing"] for table in summary["degradations"].values() for m, v in table.items() if "missing" in v
    }
    for method, reason in missing.items():
        lines += ["", f"{method} missing: {reason}."]
    ood = summary.get("ood")
    if ood:
        lines += [
            "",
            f"Out-of-distribution warning on these held-out volumes (shifts {', '.join(ood['shifts'])}): fired on "
            f"{ood['fired_on_low_coverage']} of {ood['low_coverage_volumes']} whose calibrated coverage fell more "
            f"than {ood['margin']:.0%} below the target, and on {ood['fired_on_in_distribution']} of "
            f"{ood['in_distribution_volumes']} others.",
        ]
    if summary.get("lpips_missing_reason"):
        lines += ["", f"LPIPS missing: {summary['lpips_missing_reason']}."]
    if summary.get("uncertainty_passes"):
        lines += [
            "",
            f"Uncertainty from {summary['uncertainty_passes']} test-time augmentations: COVERAGE = fraction of "
            "foreground voxels with |SR - HR| within the calibrated bound; SPEARMAN = rank correlation of the "
            "uncertainty with |SR - HR| in the foreground.",
        ]
    return "\n".join(lines) + "\n"
