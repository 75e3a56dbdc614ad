"""The reference study's evaluation protocol, per degradation: HR test volume -> LR (each method) -> SR, against baselines.

A real scan's degradation is unknown, so every volume is degraded several ways (`lr_methods`: k-space
truncation, block average, Gaussian slice profile, and that profile with Rician noise by default) and each method
is scored on each: cubic B-spline and trilinear upsampling of the same LR and the network ("sr"). Cubic B-spline
comes first everywhere: it is the interpolation a user would pick instead of the model (one line of ITK or
scipy), so the headline is the SR's gain over it (PSNR and SSIM), per degradation and at the worst case over
every scan x degradation. Metrics: MSE, PSNR, SSIM (3D, data range 1) and LPIPS (slice-wise, three planes) over
the whole volume and inside the foreground (HR above a threshold). Every output is compared with the HR in world
coordinates (through both affines, `bundle.evaluation.alignment`: the SR grid is the one inference writes, from the
LR's affine; here the LR's affine comes from the HR's, so the two grids agree and the comparison is voxel for voxel,
which the geometry tests hold), and each output gets its best-matching uniform shift: the geometry line, which must be
0 (within a quarter voxel) for every SR for the goal to hold. With `uncertainty` passes the SR rows also
report the calibrated coverage (fraction of foreground voxels whose error is within the calibrated bound) and how
well the uncertainty ranks the error (Spearman). Writes per-case CSV, summary JSON and Markdown (gains, worst
case, a per-scan x degradation table, per-degradation tables), and figures.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from tqdm import tqdm

from bundle.core.atomic import write_text_atomic
from bundle.core.bspline import bspline_resize
from bundle.core.choices import BASELINES, METHOD_ORDER
from bundle.core.geometry import low_resolution_affine, super_resolution_affine
from bundle.core.metrics import masked_mean, psnr_from_mse, squared_error, ssim_from_map, ssim_map_3d
from bundle.core.progress import VolumeProgress
from bundle.data.datalist import iter_hr_volumes
from bundle.data.degradation import check_evaluation_methods, evaluation_lr, evaluation_operator
from bundle.evaluation.alignment import SHIFT_TOLERANCE, best_shift, on_reference_grid
from bundle.evaluation.lpips_metric import VolumeLPIPS, load_lpips
from bundle.trust.conformal import coverage, spearman
from bundle.trust.consistency import ConsistencyStep, consistent_output
from bundle.trust.record import CalibrationRecord, calibrated_uncertainty, load_calibration
from bundle.trust.runner import ModelRunner

__all__ = [
    "SREvaluation",
    "Scoring",
    "summarise_rows",
    "write_evaluation",
    "upsample_baseline",
    "BASELINES",
    "METHOD_ORDER",
    "GOAL_PSNR_GAIN_DB",
    "GOAL_SSIM_GAIN",
    "gain_table",
    "per_scan_table",
    "worst_case_line",
    "markdown_table",
]

logger = logging.getLogger(__name__)
HEADLINE_BASELINE = "bspline"
# the project's quality goal, judged at the worst scan x degradation: SR at least this much above cubic B-spline
GOAL_PSNR_GAIN_DB = 0.5
GOAL_SSIM_GAIN = 0.0  # SSIM not below cubic B-spline's anywhere
GAIN_METRICS = ("psnr", "ssim", "psnr_fg", "ssim_fg")
METRICS = ("mse", "psnr", "ssim", "lpips", "mse_fg", "psnr_fg", "ssim_fg", "coverage", "spearman")
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "lpips": False}


def upsample_baseline(lr: torch.Tensor, scale: Sequence[int], method: str) -> torch.Tensor:
    """Upsample (1, 1, x, y, z) by `scale` with voxel-centred sampling: 'trilinear' or cubic 'bspline'."""
    size = [n * s for n, s in zip(lr.shape[2:], scale, strict=True)]
    if method == "trilinear":
        return F.interpolate(lr.float(), size=size, mode="trilinear", align_corners=False)
    if method == "bspline":  # scipy's zoom(order=3, mode="grid-mirror", grid_mode=True), as the network's base
        return bspline_resize((lr.as_tensor() if isinstance(lr, MetaTensor) else lr).float(), size)
    raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}")


@dataclass(frozen=True)
class Scoring:
    """What the evaluation scores besides the SR, and how it reports (the `scoring` component of evaluate.json).

    Args:
        baselines: the upsamplers scored beside the SR (`BASELINES`), kept in that order: cubic B-spline first.
        lpips_weights: "auto"/"alex" (ImageNet AlexNet from `make weights`, else torchvision's file in the torch hub
            cache), "vgg" (VGG16), an AlexNet file path, or None to skip.
        lpips_slices_per_plane: at most this many evenly spaced slices per plane for LPIPS (None: every slice).
        foreground_threshold: HR intensity above which a voxel counts as foreground.
        num_figures: how many cases get a figure.
        projection: also score "sr_project", the SR made consistent with its LR as the consistency step does
            (`consistent_output`) with the true degradation's operator (what `consistency: project` does at best).
    """

    baselines: Sequence[str]
    lpips_weights: str | None
    lpips_slices_per_plane: int | None
    foreground_threshold: float
    num_figures: int
    projection: bool

    def __post_init__(self) -> None:
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        # B-spline first whatever order the config names
        object.__setattr__(self, "baselines", tuple(m for m in BASELINES if m in self.baselines))


class SREvaluation:
    """Runs the protocol over `datalist` (items giving "image" = the normalised, padded HR after `transform`).

    Args:
        datalist: items for `transform`, e.g. the MSD "test" section.
        transform: loading, normalisation and padding (the training HR transforms).
        model_runner: the generator as inference runs it (`bundle.trust.runner.ModelRunner`: weights, device,
            inferer, autocast, and its `uncertainty` TTA passes: 0 = one pass, no uncertainty columns).
        consistency_step: inference's data-consistency step (`bundle.trust.consistency.ConsistencyStep`), applied to
            the "sr" row so that it scores what inference writes: with "project" and operator "auto", the SR
            projected as `bundle.trust.consistency.auto_weights` says (k-space truncation and the blur the output
            names, each by its share and where it explains the output). The rows record the
            operator and whether it was projected or mixed; "sr_project" projects the network's SR, not this output.
        scoring: baselines, LPIPS, foreground, figures and the true-operator projection (`Scoring`).
        output_dir: where per_case.csv, summary.json, summary.md and figures/ go.
        eval_lr_methods: the degradations each volume is evaluated under (`EVAL_METHODS`: "noisy" is the Gaussian
            slice profile plus Rician noise, `bundle.data.degradation.evaluation_lr`).
        calibration_path: the model's calibration file (coverage is reported when it exists).
        ood_shifts: distribution shifts of the out-of-distribution study (with uncertainty and a calibration).
    """

    def __init__(
        self,
        datalist: list[dict],
        transform: Callable[[dict], dict],
        model_runner: ModelRunner,
        consistency_step: ConsistencyStep,
        scoring: Scoring,
        output_dir: str,
        eval_lr_methods: Sequence[str],
        calibration_path: str | None,
        ood_shifts: Sequence[str],
    ) -> None:
        if not datalist:
            raise ValueError("evaluation datalist is empty")
        self.datalist, self.transform = datalist, transform
        self.runner, self.consistency, self.scoring = model_runner, consistency_step, scoring
        self.output_dir = Path(output_dir)
        self.scale = model_runner.scale
        self.uncertainty = model_runner.uncertainty
        self.lr_methods = check_evaluation_methods(eval_lr_methods)
        self.calibration_path = calibration_path
        self.ood_shifts = tuple(ood_shifts)
        self.super_resolve = model_runner.predictor("evaluating")  # windows, with an ETA

    def score(self, pred: torch.Tensor, hr: torch.Tensor, lpips_fn: VolumeLPIPS | None) -> dict[str, Any]:
        """Every metric from one squared-error map and one SSIM map (full volumes are large).

        A non-finite prediction gets no metrics and a `missing` reason instead (shown in the tables).
        """
        pred = pred.to(hr.device)
        bad = int((~torch.isfinite(pred)).sum())
        if bad:
            return {"missing": f"{bad} non-finite voxel(s) in the output (broken model weights?)"}
        mask = hr > self.scoring.foreground_threshold
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
        mask = hr > self.scoring.foreground_threshold
        err = (pred.to(hr.device) - hr).abs()
        std = std.to(hr.device)
        cols = {"spearman": spearman(std, err, mask)}
        if calibration is not None:
            cols["coverage"] = coverage(err, std, calibration.lam, mask, calibration.std_floor)
        return cols

    def run(self) -> dict:
        from bundle.evaluation.figures import (  # matplotlib only when reporting
            WorstCaseFigure,
            comparison_figure,
            uncertainty_figure,
        )

        self.runner.load()
        calibration = load_calibration(self.calibration_path) if self.calibration_path and self.uncertainty else None
        if self.uncertainty and calibration is None:
            logger.warning("no calibration at %s: coverage is not reported", self.calibration_path)
        weights, slices = self.scoring.lpips_weights, self.scoring.lpips_slices_per_plane
        lpips_model, lpips_reason = (None, "disabled") if weights is None else load_lpips(weights)
        lpips_fn = VolumeLPIPS(lpips_model.to(self.runner.device), slices) if lpips_model else None
        if lpips_fn is None:
            logger.warning("LPIPS skipped and reported as missing: %s", lpips_reason)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "figures").mkdir(exist_ok=True)
        rows, figures = [], []
        lpips_small: str | None = None  # why a volume had no LPIPS (its slices too small for the backbone)
        worst_figure = WorstCaseFigure()  # the lowest SR gain over cubic B-spline, drawn once the summary names it
        volumes = iter_hr_volumes(self.transform, self.datalist)  # (case, HR (1, C, X, Y, Z)), one at a time
        for i, (case, hr) in enumerate(tqdm(volumes, total=len(self.datalist), desc="evaluating", unit="volume")):
            hr_affine = hr.affine if isinstance(hr, MetaTensor) else torch.eye(4, dtype=torch.float64)
            # the grid every output is written on: the SR grid of the LR's affine (the HR's, when the two agree)
            sr_affine = super_resolution_affine(low_resolution_affine(hr_affine, self.scale), self.scale)
            hr = hr.as_tensor() if isinstance(hr, MetaTensor) else hr
            small = lpips_fn.too_small(hr) if lpips_fn is not None else None
            lpips_small = small or lpips_small
            volume_lpips = None if small else lpips_fn  # one check per volume, not per scored output
            for degradation in self.lr_methods:
                lr = evaluation_lr(hr[0], self.scale, degradation, case)[None]
                preds = {method: upsample_baseline(lr, self.scale, method) for method in self.scoring.baselines}
                std = None
                if self.uncertainty:
                    res = self.runner.tta(lr, self.super_resolve)
                    sr_output = calibration.sr_output if calibration is not None else "single"
                    preds["sr"], std = (res.single if sr_output == "single" else res.mean).cpu(), res.std.cpu()
                else:
                    preds["sr"] = self.super_resolve(lr).cpu()
                network_sr = preds["sr"]  # before the consistency step: the true-operator projection starts here
                step = self.consistency(network_sr, lr) if torch.isfinite(network_sr).all() else None
                if step is not None:
                    preds["sr"] = step.output.cpu()
                operator = evaluation_operator(degradation)
                if self.scoring.projection and operator is not None and torch.isfinite(network_sr).all():
                    preds["sr_project"] = consistent_output(network_sr, lr, self.scale, operator)
                for method, pred in preds.items():
                    row: dict[str, Any] = {"case": case, "degradation": degradation, "method": method}
                    pred = on_reference_grid(pred, sr_affine, hr_affine, tuple(hr.shape))
                    row.update(self.score(pred, hr, volume_lpips))
                    if "missing" not in row:  # every method's, the SR's judged (cubic B-spline's shows the floor)
                        row["shift"] = list(best_shift(pred, hr, margin=2 * max(self.scale)))
                    if method == "sr" and std is not None and "missing" not in row:
                        row.update(self._uncertainty_columns(pred, std, hr, calibration))
                    if method == "sr" and step is not None:
                        row.update(operator=step.operator, projected=step.projected, mixed=step.mixed)
                    rows.append(row)
                if i < self.scoring.num_figures:
                    path = self.output_dir / "figures" / f"{case}_{degradation}.png"
                    scores = {r["method"]: r for r in rows if r["case"] == case and r["degradation"] == degradation}
                    title = f"{case}, LR by {degradation}"
                    comparison_figure(lr, preds, hr, path, scale=self.scale, title=title, scores=scores)
                    figures.append(str(path))
                    if std is not None:
                        path = self.output_dir / "figures" / f"{case}_{degradation}_uncertainty.png"
                        shown = std if calibration is None else calibrated_uncertainty(std, calibration)
                        label = "uncertainty (TTA std)" if calibration is None else "calibrated bound (lambda x std)"
                        uncertainty_figure(preds["sr"], hr, shown, path, label)
                        figures.append(str(path))
                scored = {r["method"]: r for r in rows if r["case"] == case and r["degradation"] == degradation}
                worst_figure.offer(case, degradation, scored, lr, preds, hr)
        if lpips_fn is not None and not any(math.isfinite(r.get("lpips", math.nan)) for r in rows):
            lpips_fn, lpips_reason = None, lpips_small or lpips_reason
        summary = self._summarise(rows, lpips_reason if lpips_fn is None else None, figures)
        worst_path = worst_figure.write(self.output_dir / "figures", summary.get("worst_case"), self.scale)
        if worst_path is not None:
            summary["figures"].append(str(worst_path))
        if self.ood_shifts and self.uncertainty and calibration is not None:
            summary["ood"] = self._ood_study(calibration)
        self._write(rows, summary)
        return summary

    def _ood_study(self, calibration: CalibrationRecord) -> dict:
        """How the calibrated out-of-distribution warning does on these held-out volumes, each under every
        shift of `ood_shifts` and degradation: fire rates on volumes whose coverage fell more than 5 points below
        the target and on the others (`bundle.trust.ood.warning_rates`); per-volume rows in ood_volumes.csv."""
        from bundle.trust.ood import VolumeTrust, measure_volume, shifted_pairs, warning_fires, warning_rates

        items = iter_hr_volumes(self.transform, self.datalist)  # one volume in memory at a time
        total = len(self.datalist) * len(self.ood_shifts) * len(self.lr_methods)
        progress = VolumeProgress("out-of-distribution study", total)
        rows = []
        for case, shift, method, hr, lr in shifted_pairs(items, self.ood_shifts, self.lr_methods, self.scale):
            cov, above, residual = measure_volume(
                hr,
                lr,
                self.super_resolve,
                self.consistency.output_and_residual,
                calibration,
                self.scale,
                self.uncertainty,
                self.scoring.foreground_threshold,
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
        """{method: {metric: {mean, sd, n}}} over `rows` in `METHOD_ORDER`; a method whose rows all lack a metric
        has no entry."""
        table: dict[str, dict[str, Any]] = {}
        for method in _ordered(r["method"] for r in rows):
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
        return summarise_rows(rows, self.lr_methods, self.uncertainty, lpips_missing, figures)

    def _write(self, rows: list[dict], summary: dict) -> None:
        write_evaluation(self.output_dir, rows, summary)


def summarise_rows(
    rows: list[dict],
    lr_methods: Sequence[str],
    uncertainty: int = 0,
    lpips_missing: str | None = None,
    figures: Sequence[str] = (),
) -> dict:
    """The evaluation's summary (summary.json) of its per-scan x degradation x method score rows."""
    degradations = {d: SREvaluation._table([r for r in rows if r["degradation"] == d]) for d in lr_methods}
    per_scan = per_scan_rows(rows)
    return {
        "cases": len({r["case"] for r in rows}),
        "degradations": degradations,
        "methods": SREvaluation._table(rows),  # pooled over every degradation
        "gains": gains(degradations),
        "per_scan": per_scan,
        "worst_case": worst_case(per_scan),
        "lpips_missing_reason": lpips_missing,
        "uncertainty_passes": uncertainty,
        "figures": list(figures),
    }


def write_evaluation(output_dir: Path, rows: list[dict], summary: dict) -> None:
    """per_case.csv (the rows with their gain columns), summary.json and summary.md in `output_dir`."""
    table = io.StringIO(newline="")
    fields = ["case", "degradation", "method", *METRICS, *GAIN_COLUMNS, *SHIFT_COLUMNS]
    fields += ["operator", "projected", "mixed", "missing"]
    writer = csv.DictWriter(table, fieldnames=fields, restval="")
    writer.writeheader()
    for r in _with_gain_columns(rows):
        shift = r.pop("shift", None)
        writer.writerow({**r, **(dict(zip(SHIFT_COLUMNS, shift, strict=True)) if shift else {})})
    write_text_atomic(output_dir / "per_case.csv", table.getvalue())
    write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=4))
    write_text_atomic(output_dir / "summary.md", markdown_table(summary))
    logger.info("evaluation written to %s", output_dir)


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


def _ordered(methods: Iterable[str]) -> list[str]:
    """`methods` once each, those of `METHOD_ORDER` in that order (cubic B-spline first), any others after."""
    unique = list(dict.fromkeys(methods))
    return [m for m in METHOD_ORDER if m in unique] + [m for m in unique if m not in METHOD_ORDER]


# per-case CSV: the SR's and projected SR's gains on their own row, over cubic B-spline first, then trilinear
GAIN_COLUMNS = [f"{metric}_gain_over_{base}" for base in BASELINES for metric in ("psnr", "ssim")]
SHIFT_COLUMNS = ["best_shift_x", "best_shift_y", "best_shift_z"]  # voxels, `bundle.evaluation.alignment.best_shift`


def _with_gain_columns(rows: list[dict]) -> list[dict]:
    """`rows` with GAIN_COLUMNS filled on the sr and sr_project rows (that row minus the baseline's row of the same
    case and degradation), left empty where either side has no value."""
    by_key = {(r["case"], r["degradation"], r["method"]): r for r in rows}
    out = []
    for r in rows:
        r = dict(r)
        if r["method"] in ("sr", "sr_project"):
            for base in BASELINES:
                b = by_key.get((r["case"], r["degradation"], base), {})
                for metric in ("psnr", "ssim"):
                    if metric in r and metric in b:
                        r[f"{metric}_gain_over_{base}"] = r[metric] - b[metric]
        out.append(r)
    return out


def gains(degradations: dict) -> dict:
    """{degradation: {"sr" | "sr_project": {baseline: {metric: mean gain}}}}: the method's mean minus the
    baseline's mean (the mean of the per-volume gains when both were scored on the same volumes), for psnr, ssim,
    psnr_fg and ssim_fg; a pair without both values is left out. Baselines in `BASELINES` order (B-spline first)."""
    out: dict[str, dict] = {}
    for degradation, methods in degradations.items():
        out[degradation] = {}
        for method in ("sr", "sr_project"):
            if method not in methods:
                continue
            per_base = {}
            for base in BASELINES:
                if base not in methods:
                    continue
                cols = {
                    c: methods[method][c]["mean"] - methods[base][c]["mean"]
                    for c in GAIN_METRICS
                    if c in methods[method] and c in methods[base]
                }
                if cols:
                    per_base[base] = cols
            out[degradation][method] = per_base
    return out


def per_scan_rows(rows: list[dict]) -> list[dict]:
    """One entry per scan x degradation (evaluation order): PSNR and SSIM of every method ({"psnr": {method: dB},
    "ssim": {method: value}}, methods in `METHOD_ORDER`) and the SR's and projected SR's gains over cubic B-spline
    ({"sr_gain_over_bspline": {"psnr": dB, "ssim": value}}; absent where either side is missing, e.g. a
    non-finite SR). `missing` lists the methods that have no score there."""
    out = []
    for case, degradation in dict.fromkeys((r["case"], r["degradation"]) for r in rows):
        here = {r["method"]: r for r in rows if r["case"] == case and r["degradation"] == degradation}
        entry: dict[str, Any] = {"case": case, "degradation": degradation}
        for metric in ("psnr", "ssim"):
            entry[metric] = {m: here[m][metric] for m in _ordered(here) if metric in here[m]}
        base = here.get(HEADLINE_BASELINE, {})
        for method in ("sr", "sr_project"):
            pred = here.get(method, {})
            gain = {
                metric: pred[metric] - base[metric] for metric in ("psnr", "ssim") if metric in pred and metric in base
            }
            if gain:
                entry[f"{method}_gain_over_{HEADLINE_BASELINE}"] = gain
        if "shift" in here.get("sr", {}):
            entry["sr_best_shift"] = here["sr"]["shift"]
        if "operator" in here.get("sr", {}):  # what the consistency step did to the SR row
            entry["sr_consistency"] = {k: here["sr"].get(k, False) for k in ("operator", "projected", "mixed")}
        missing = [m for m in _ordered(here) if "psnr" not in here[m]]
        if missing:
            entry["missing"] = missing
        out.append(entry)
    return out


def worst_case(per_scan: list[dict]) -> dict:
    """The minimum over scans x degradations of the SR's gain over cubic B-spline, PSNR and SSIM separately, with
    where it happened, and whether the quality goal (`GOAL_PSNR_GAIN_DB`, `GOAL_SSIM_GAIN`) holds everywhere.

    A scan x degradation without an SR gain (its SR or B-spline missing) cannot meet the goal: it is listed under
    "unscored" and `goal_met` is False. Returns {"psnr": {"gain", "case", "degradation"} | None, "ssim": ...,
    "scans": n, "unscored": [...], "goal": {"psnr": dB, "ssim": value}, "goal_met": bool}.
    """
    key = f"sr_gain_over_{HEADLINE_BASELINE}"
    scored = [e for e in per_scan if key in e]
    unscored = [f"{e['case']} {e['degradation']}" for e in per_scan if key not in e]
    out: dict[str, Any] = {"baseline": HEADLINE_BASELINE, "scans": len({e["case"] for e in per_scan})}
    for metric in ("psnr", "ssim"):
        have = [e for e in scored if metric in e[key]]
        worst = min(have, key=lambda e: e[key][metric]) if have else None
        out[metric] = None if worst is None else {
            "gain": worst[key][metric], "case": worst["case"], "degradation": worst["degradation"]
        }  # fmt: skip
    out["unscored"] = unscored
    out["geometry"] = geometry_line(per_scan)
    out["goal"] = {"psnr": GOAL_PSNR_GAIN_DB, "ssim": GOAL_SSIM_GAIN, "shift": SHIFT_TOLERANCE}
    out["goal_met"] = (
        not unscored
        and out["psnr"] is not None
        and out["ssim"] is not None
        and out["psnr"]["gain"] >= GOAL_PSNR_GAIN_DB
        and out["ssim"]["gain"] >= GOAL_SSIM_GAIN
        and out["geometry"]["aligned"]
    )
    return out


def geometry_line(per_scan: list[dict]) -> dict:
    """The largest best shift of any SR over scans x degradations (voxels, any axis) and where, and whether every
    SR sits where its affine says (all within SHIFT_TOLERANCE); an evaluation without shifts counts as aligned."""
    shifted = [e for e in per_scan if "sr_best_shift" in e]
    if not shifted:
        return {"largest_shift": None, "aligned": True}
    worst = max(shifted, key=lambda e: max(abs(t) for t in e["sr_best_shift"]))
    largest = max(abs(t) for t in worst["sr_best_shift"])
    return {
        "largest_shift": largest,
        "shift": worst["sr_best_shift"],
        "case": worst["case"],
        "degradation": worst["degradation"],
        "aligned": largest <= SHIFT_TOLERANCE,
    }


def worst_case_line(summary: dict) -> str:
    """The headline in one line: the worst SR gain over cubic B-spline over every scan x degradation, against the
    goal. A summary written before the per-scan table existed says so instead."""
    wc = summary.get("worst_case")
    if not wc:
        return "Worst case: not in this summary (written by an older evaluation; run the evaluation again)."
    if wc["psnr"] is None or wc["ssim"] is None:
        return (
            f"Worst case: no SR gain over cubic B-spline could be scored ({', '.join(wc['unscored']) or 'no scans'})."
        )
    p, s = wc["psnr"], wc["ssim"]
    goal = wc["goal"]
    verdict = "meets" if wc["goal_met"] else "does NOT meet"
    n_degradations = len({e["degradation"] for e in summary.get("per_scan", [])})
    text = (
        f"Worst case over {wc['scans']} scan(s) x {n_degradations} degradation(s): "
        f"SR {p['gain']:+.2f} dB PSNR over cubic B-spline ({p['case']}, {p['degradation']}), "
        f"SSIM {s['gain']:+.4f} ({s['case']}, {s['degradation']}); {verdict} the goal "
        f"(>= {goal['psnr']:+.1f} dB PSNR and SSIM >= B-spline's everywhere)"
    )
    geometry = wc.get("geometry") or {}
    if geometry.get("largest_shift") is not None:
        where = "" if geometry["aligned"] else f" ({geometry['case']}, {geometry['degradation']})"
        text += (
            f"; geometry: every SR's best shift within {SHIFT_TOLERANCE} voxel"
            if geometry["aligned"]
            else f"; geometry: an SR is displaced by {geometry['shift']} voxels{where}, more than {SHIFT_TOLERANCE}"
        )
        text += f" (largest {geometry['largest_shift']:.2f})" if geometry["aligned"] else ""
    if wc["unscored"]:
        text += f"; not scored: {', '.join(wc['unscored'])}"
    return text + "."


def _gain_cell(gains_of: dict, base: str, col: str) -> str:
    if col not in gains_of.get(base, {}):
        return "missing"
    digits = 2 if col.startswith("psnr") else 4
    return f"{gains_of[base][col]:+.{digits}f}"


def gain_table(summary: dict) -> list[str]:
    """Per degradation, the SR's gain over cubic B-spline (PSNR and SSIM: the headline), then over trilinear, the
    projected SR's over cubic B-spline and the SR's over B-spline inside the foreground. Mean over the volumes;
    from the summary's tables, so a summary written before "gains" existed gets the same table."""
    table = gains(summary["degradations"])
    lines = [
        "| degradation | **SR - cubic B-spline, PSNR (dB)** | **SR - cubic B-spline, SSIM** | SR - trilinear, PSNR (dB) "
        "| SR - trilinear, SSIM | projected SR - cubic B-spline, PSNR (dB) | projected SR - cubic B-spline, SSIM "
        "| SR - cubic B-spline, PSNR (fg) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for degradation in summary["degradations"]:
        sr, proj = table[degradation].get("sr", {}), table[degradation].get("sr_project")
        cells = [_gain_cell(sr, "bspline", "psnr"), _gain_cell(sr, "bspline", "ssim")]
        cells += [_gain_cell(sr, "trilinear", "psnr"), _gain_cell(sr, "trilinear", "ssim")]
        if proj is None:  # projection off, or no operator for this degradation
            cells += ["", ""]
        else:
            cells += [_gain_cell(proj, "bspline", "psnr"), _gain_cell(proj, "bspline", "ssim")]
        cells.append(_gain_cell(sr, "bspline", "psnr_fg"))
        lines.append(f"| {degradation} | " + " | ".join(cells) + " |")
    return lines


def per_scan_table(summary: dict) -> list[str]:
    """Markdown: one row per scan x degradation, PSNR / SSIM of cubic B-spline, trilinear, SR and projected SR,
    and SR - cubic B-spline (PSNR / SSIM), then the operator the SR was projected with when it went through a
    consistency step; [] for a summary without a per-scan section."""
    per_scan = summary.get("per_scan") or []
    if not per_scan:
        return []
    names = {
        "bspline": "cubic B-spline",
        "trilinear": "trilinear",
        "sr": "SR",
        "sr_project": "SR projected, true operator",
    }
    methods = _ordered(m for e in per_scan for m in e["psnr"])
    key = f"sr_gain_over_{HEADLINE_BASELINE}"
    stepped = any("sr_consistency" in e for e in per_scan)  # the SR row went through a consistency step
    lines = [
        "| scan | degradation | "
        + " | ".join(names.get(m, m) for m in methods)
        + " | **SR - cubic B-spline** | SR best shift (voxels) |"
        + (" SR projected with |" if stepped else ""),
        "|---" * (len(methods) + 4 + stepped) + "|",
    ]
    for e in per_scan:
        cells = []
        for m in methods:
            if m in e["psnr"]:
                cells.append(f"{e['psnr'][m]:.2f} / {e['ssim'][m]:.3f}" if m in e["ssim"] else f"{e['psnr'][m]:.2f}")
            else:
                cells.append("missing" if m in e.get("missing", []) else "")
        gain = e.get(key)
        cells.append(f"**{gain['psnr']:+.2f} / {gain['ssim']:+.4f}**" if gain and "ssim" in gain else "missing")
        shift = e.get("sr_best_shift")
        cells.append(", ".join(f"{t:+.2f}" for t in shift) if shift else "")
        if stepped:
            step = e.get("sr_consistency") or {}
            if step.get("projected"):
                cells.append(step.get("operator", ""))
            else:
                cells.append(
                    "mixture (most probable: " + step.get("operator", "") + ")"
                    if step.get("mixed")
                    else "not projected"
                )
        lines.append(f"| {e['case']} | {e['degradation']} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(summary: dict) -> str:
    """The SR's gain over cubic B-spline (and trilinear) per degradation, the worst case over every scan x
    degradation, the per-scan table, then one table per degradation (mean ± sd per method, B-spline first)."""
    cols = ["mse", "psnr", "ssim", "lpips", "psnr_fg", "ssim_fg"]
    if summary.get("uncertainty_passes"):
        cols += ["coverage", "spearman"]
    lines = [f"Evaluation on {summary['cases']} volume(s): mean ± sd (fg = inside the foreground mask).", ""]
    lines += ["Gain over cubic B-spline (the headline) and over trilinear, mean over the volumes:", ""]
    lines += gain_table(summary)
    lines += ["", f"**{worst_case_line(summary)}**"]
    scans = per_scan_table(summary)
    if scans:
        lines += ["", "Per scan and degradation, PSNR (dB) / SSIM:", ""] + scans
    for degradation, methods in summary["degradations"].items():
        methods = {m: methods[m] for m in _ordered(methods)}
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
