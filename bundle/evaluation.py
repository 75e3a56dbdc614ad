"""The seed's evaluation protocol: HR test volume -> simulated LR -> SR, scored against HR and baselines.

Methods compared on the same volumes: the network ("sr"), trilinear and cubic B-spline upsampling of the LR.
Metrics: MSE, PSNR, SSIM (3D, data range 1) and LPIPS (slice-wise, three planes) over the whole volume and
inside the foreground (HR above a threshold). Writes per-case CSV, summary JSON and Markdown, and figures.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from scipy import ndimage
from tqdm import tqdm

from bundle.geometry import ensure_scale3
from bundle.lpips_metric import VolumeLPIPS, load_lpips
from bundle.metrics import masked_mean, psnr_from_mse, squared_error, ssim_from_map, ssim_map_3d

__all__ = ["SREvaluation", "upsample_baseline", "BASELINES"]

logger = logging.getLogger(__name__)
BASELINES = ("trilinear", "bspline")
METRICS = ("mse", "psnr", "ssim", "lpips", "mse_fg", "psnr_fg", "ssim_fg")
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class SREvaluation:
    """Runs the protocol over `datalist` (items already giving "image" = HR and "lr" after `transform`).

    Args:
        datalist: items for `transform`, e.g. the MSD "test" section.
        transform: loading, normalisation, padding and LR simulation (the training volume transforms).
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
        foreground_threshold: float = 0.05,
        num_figures: int = 2,
        amp: bool = False,
    ) -> None:
        if not datalist:
            raise ValueError("evaluation datalist is empty")
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        self.datalist, self.transform = datalist, transform
        self.network, self.inferer = network, inferer
        self.output_dir = Path(output_dir)
        self.scale = ensure_scale3(scale)
        self.device = torch.device(device)
        self.ckpt_path = ckpt_path
        self.baselines = tuple(baselines)
        self.lpips_weights = lpips_weights
        self.lpips_slices_per_plane = lpips_slices_per_plane
        self.foreground_threshold = foreground_threshold
        self.num_figures = num_figures
        self.amp = amp and self.device.type == "cuda"

    def _load_weights(self) -> None:
        if self.ckpt_path is None:
            return
        if not Path(self.ckpt_path).is_file():
            raise FileNotFoundError(
                f"{self.ckpt_path}: generator checkpoint not found (train first, or pass ckpt_path)"
            )
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        if "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        self.network.load_state_dict(state)

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else torch.autocast("cpu", enabled=False)
        with ctx:
            return self.inferer(lr.to(self.device), self.network).float()

    def score(self, pred: torch.Tensor, hr: torch.Tensor, lpips_fn: VolumeLPIPS | None) -> dict[str, float]:
        """Every metric from one squared-error map and one SSIM map (full volumes are large)."""
        pred = pred.to(hr.device)
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

    def run(self) -> dict:
        from bundle.report import comparison_figure  # matplotlib only when reporting

        self._load_weights()
        self.network.to(self.device)
        lpips_model, lpips_reason = (None, "disabled") if self.lpips_weights is None else load_lpips(self.lpips_weights)
        lpips_fn = VolumeLPIPS(lpips_model.to(self.device), self.lpips_slices_per_plane) if lpips_model else None
        if lpips_fn is None:
            logger.warning("LPIPS skipped and reported as missing: %s", lpips_reason)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "figures").mkdir(exist_ok=True)
        rows, figures = [], []
        for i, item in enumerate(tqdm(self.datalist, desc="evaluating", unit="volume")):
            data = self.transform(dict(item))
            hr = torch.as_tensor(data["image"])[None].float()
            lr = torch.as_tensor(data["lr"])[None].float()
            case = Path(str(item["image"])).name.split(".")[0]
            preds = {method: upsample_baseline(lr, self.scale, method) for method in self.baselines}
            preds["sr"] = self.super_resolve(lr).cpu()
            for method, pred in preds.items():
                rows.append({"case": case, "method": method, **self.score(pred, hr, lpips_fn)})
            if i < self.num_figures:
                path = self.output_dir / "figures" / f"{case}.png"
                comparison_figure(lr, preds, hr, path, scale=self.scale)
                figures.append(str(path))
        summary = self._summarise(rows, lpips_reason if lpips_fn is None else None, figures)
        self._write(rows, summary)
        return summary

    def _summarise(self, rows: list[dict], lpips_missing: str | None, figures: list[str]) -> dict:
        methods = list(dict.fromkeys(r["method"] for r in rows))
        table = {}
        for method in methods:
            table[method] = {}
            for metric in METRICS:
                values = [r[metric] for r in rows if r["method"] == method and not math.isnan(r[metric])]
                if values:
                    sd = statistics.stdev(values) if len(values) > 1 else 0.0
                    table[method][metric] = {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}
        return {
            "cases": len({r["case"] for r in rows}),
            "methods": table,
            "lpips_missing_reason": lpips_missing,
            "figures": figures,
        }

    def _write(self, rows: list[dict], summary: dict) -> None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=["case", "method", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
        _write_atomic(self.output_dir / "per_case.csv", table.getvalue())
        _write_atomic(self.output_dir / "summary.json", json.dumps(summary, indent=4))
        _write_atomic(self.output_dir / "summary.md", markdown_table(summary))
        logger.info("evaluation written to %s", self.output_dir)


def markdown_table(summary: dict) -> str:
    """Mean ± sd per method, the best value per column in bold."""
    cols = ["mse", "psnr", "ssim", "lpips", "psnr_fg", "ssim_fg"]
    methods = summary["methods"]

    def best(col: str) -> str | None:
        key = col.split("_")[0]
        vals = {m: v[col]["mean"] for m, v in methods.items() if col in v}
        if not vals:
            return None
        return (max if HIGHER_IS_BETTER[key] else min)(vals, key=vals.get)

    winners = {c: best(c) for c in cols}
    lines = [
        f"Evaluation on {summary['cases']} volume(s): mean ± sd (fg = inside the foreground mask).",
        "",
        "| method | " + " | ".join(c.upper().replace("_FG", " (fg)") for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for m, v in methods.items():
        cells = []
        for c in cols:
            if c not in v:
                cells.append("missing")
                continue
            digits = 6 if c.startswith("mse") else 4
            text = f"{v[c]['mean']:.{digits}f} ± {v[c]['sd']:.{digits}f}"
            cells.append(f"**{text}**" if winners[c] == m else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary.get("lpips_missing_reason"):
        lines += ["", f"LPIPS missing: {summary['lpips_missing_reason']}."]
    return "\n".join(lines) + "\n"
