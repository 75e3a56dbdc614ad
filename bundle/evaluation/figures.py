"""Figures for people: method comparison across the three planes with a zoomed inset and error maps,
and training curves from the epoch CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.data import MetaTensor  # noqa: E402

from bundle.core.atomic import replace_atomically  # noqa: E402
from bundle.core.choices import METHOD_ORDER  # noqa: E402
from bundle.inference.preview import annotate_plane, planes  # noqa: E402

__all__ = [
    "comparison_figure",
    "uncertainty_figure",
    "training_curves",
    "best_validation",
    "gain_figure",
    "WorstCaseFigure",
    "WORST_CASE_FIGURE",
]

PLANES = (("XY", 2), ("XZ", 1), ("YZ", 0))  # plane name, axis held fixed in (x, y, z)


def _central(vol: np.ndarray, axis: int) -> np.ndarray:
    return np.take(vol, vol.shape[axis] // 2, axis=axis).T  # rows = second axis, for imshow(origin="lower")


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"), keep_suffix=True)
    plt.close(fig)


def _panel(ax, img: np.ndarray, cmap: str, vmax: float, title: str | None, aspect: float = 1.0):
    """One central slice in an axis without ticks (`aspect`: pixel height / width); returns the image for a colour
    bar."""
    shown = ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax, origin="lower", aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return shown


def _oriented_planes(vol: np.ndarray, affine: torch.Tensor | None) -> list[tuple]:
    """The three central slices of one (X, Y, Z) volume as `bundle.inference.preview.planes` gives them (RAS display
    orientation, radiological left/right, physical aspect, edge letters, mm per pixel) when its affine is known;
    without one, the voxel axes as they are (plane names XY/XZ/YZ, square pixels, no letters: none would be true)."""
    if affine is None:
        return [(name, _central(vol, axis), 1.0, None, None) for name, axis in PLANES]
    return planes(MetaTensor(torch.as_tensor(vol)[None], affine=torch.as_tensor(affine, dtype=torch.float64)))


# panel titles of the evaluation's method ids (`bundle.core.choices.METHOD_ORDER`)
DISPLAY_NAMES = {"bspline": "cubic B-spline", "trilinear": "trilinear", "sr": "SR", "sr_project": "projected SR"}


def _score_label(method: str, scores: dict[str, dict] | None) -> str:
    """A method's panel title: its name, PSNR and SSIM, and for the SR and projected SR their gain over cubic
    B-spline (PSNR dB / SSIM) when both scores are known."""
    name = DISPLAY_NAMES.get(method, method)
    own = (scores or {}).get(method, {})
    if "psnr" not in own:
        return name
    label = f"{name}\nPSNR {own['psnr']:.2f} dB\nSSIM {own.get('ssim', float('nan')):.3f}"
    base = (scores or {}).get("bspline", {})
    if method in ("sr", "sr_project") and "psnr" in base and "ssim" in own and "ssim" in base:
        label += f"\n{own['psnr'] - base['psnr']:+.2f} dB / {own['ssim'] - base['ssim']:+.3f}\nvs B-spline"
    return label


def _lines(labels: dict[str, str]) -> int:
    """The most lines any panel title has (the figure grows by that much, so titles never reach the suptitle)."""
    return max((label.count("\n") + 1 for label in labels.values()), default=1)


def comparison_figure(
    lr: torch.Tensor,
    preds: dict[str, torch.Tensor],
    hr: torch.Tensor,
    path: str | Path,
    scale: Sequence[int],
    title: str = "",
    scores: dict[str, dict] | None = None,
) -> Path:
    """Rows: axial, coronal, sagittal central slices. Columns: LR (nearest) | cubic B-spline | trilinear | SR |
    projected SR | HR | |cubic B-spline - HR| | |SR - HR| (the methods `preds` has, always in that order: B-spline is
    the baseline the SR is judged against). All volumes (1, 1, X, Y, Z) on the HR grid except `lr`
    (1, 1, X/sx, Y/sy, Z/sz). Without a B-spline prediction the second error map is trilinear's.

    When `hr` is a MetaTensor its affine places every panel in RAS display orientation with orientation letters
    on the edges and a 10 mm scale bar (the per-scan preview's drawing, `bundle.inference.preview`). A zoomed
    inset of the centre of each panel shows fine detail. `title` (case and degradation) heads the figure;
    `scores` ({method: {"psnr": dB, "ssim": ...}}, the evaluation's rows) labels each method's panel, and the SR
    panels with their gain over cubic B-spline; colour bars give the intensity and error scales (normalised
    intensity: 0 to 1 = the robust range of HR).
    """
    order = [m for m in METHOD_ORDER if m in preds] + [m for m in preds if m not in METHOD_ORDER]
    affine = getattr(hr, "affine", None)
    hr_np = hr[0, 0].detach().cpu().numpy()
    lr_np = np.kron(lr[0, 0].detach().cpu().numpy(), np.ones(tuple(scale)))  # nearest upsampling for display
    panels = {"LR": lr_np, **{DISPLAY_NAMES.get(k, k): preds[k][0, 0].detach().cpu().numpy() for k in order}}
    panels["HR"] = hr_np
    reference = "bspline" if "bspline" in preds else "trilinear"
    errors = {
        f"|{DISPLAY_NAMES[k]} - HR|": np.abs(panels[DISPLAY_NAMES[k]] - hr_np) for k in (reference, "sr") if k in preds
    }
    labels = {DISPLAY_NAMES.get(k, k): _score_label(k, scores) for k in order}
    err_max = max(float(e.max()) for e in errors.values()) if errors else 1.0
    columns = list(panels.items()) + list(errors.items())
    n_img, n_err = len(panels), len(errors)
    # explicit layout: a column per panel, a narrow colour-bar column after the images and after the error maps,
    # row heights from each plane's physical aspect (no fixed figure height that leaves gaps between rows);
    # constrained layout keeps the multi-line titles, the colour bars and the suptitle from overlapping
    rows = [img.shape[0] * aspect / img.shape[1] for _, img, aspect, _, _ in _oriented_planes(hr_np, affine)]
    panel_w, bar_w = 2.3, 0.08
    width_ratios = [1.0] * n_img + [bar_w] + ([1.0] * n_err + [bar_w] if n_err else [])
    fig = plt.figure(
        figsize=(panel_w * sum(width_ratios) + 0.8, panel_w * sum(rows) + 1.2 + 0.15 * max(_lines(labels), 1)),
        layout="constrained",
    )
    grid = fig.add_gridspec(3, len(width_ratios), width_ratios=width_ratios, height_ratios=rows)
    shown = {}
    for col, (name, vol) in enumerate(columns):
        is_err = col >= n_img
        gcol = col + 1 if is_err else col  # skip the images' colour-bar column
        for row, (plane, img, aspect, letters, spacing) in enumerate(_oriented_planes(vol, affine)):
            ax = fig.add_subplot(grid[row, gcol])
            label = labels.get(name, name)
            cmap, vmax = ("magma", err_max) if is_err else ("gray", 1)
            shown[is_err] = _panel(ax, img, cmap, vmax, label if row == 0 else None, aspect)
            if letters is not None:
                annotate_plane(ax, letters, img.shape[1], spacing)
            if col == 0:
                ax.set_ylabel(plane)
            if not is_err:
                h, w = img.shape
                inset = ax.inset_axes((0.6, 0.6, 0.4, 0.4))
                ch, cw = h // 2, w // 2
                dh, dw = max(h // 8, 2), max(w // 8, 2)
                zoom = img[ch - dh : ch + dh, cw - dw : cw + dw]
                inset.imshow(zoom, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
                inset.set_xticks([])
                inset.set_yticks([])
                for spine in inset.spines.values():
                    spine.set_edgecolor("yellow")
    fig.colorbar(shown[False], cax=fig.add_subplot(grid[:, n_img]), label="intensity (normalised)")
    if True in shown:
        fig.colorbar(shown[True], cax=fig.add_subplot(grid[:, -1]), label="|error| (normalised)")
    head = f"{title}: " if title else ""
    where = "radiological view (subject's right on the left), 10 mm bar" if affine is not None else "voxel axes"
    fig.suptitle(
        f"{head}LR | cubic B-spline | trilinear | SR | HR, central slices\n({where}; inset: 4x zoom of the centre; "
        "error maps at right)"
    )
    path = Path(path)
    _save(fig, path)
    return path


WORST_CASE_FIGURE = "worst_case.png"  # in the evaluation's figures/ folder


class WorstCaseFigure:
    """The comparison figure of the evaluation's worst case: the scan x degradation with the lowest SR PSNR gain
    over cubic B-spline (the summary's `worst_case["psnr"]`), which the first `num_figures` cases rarely include.

    The evaluation offers every scan x degradation as it is scored (`offer`); only the lowest gain so far is kept
    (its volumes on the CPU: one case's worth of memory), and `write` draws it once the summary names the worst
    case, `figures/worst_case.png`, titled with the gain. Nothing is drawn where no SR and B-spline PSNR exist.
    """

    def __init__(self) -> None:
        self.kept: dict | None = None

    def offer(self, case: str, degradation: str, scores: dict, lr, preds: dict, hr) -> None:
        sr, base = scores.get("sr", {}), scores.get("bspline", {})
        if "psnr" not in sr or "psnr" not in base:
            return
        gain = float(sr["psnr"]) - float(base["psnr"])
        if self.kept is None or gain < self.kept["gain"]:
            cpu = {k: v.detach().cpu() for k, v in preds.items()}
            self.kept = {"case": case, "degradation": degradation, "gain": gain, "scores": dict(scores),
                         "lr": lr.detach().cpu(), "preds": cpu, "hr": hr.detach().cpu()}  # fmt: skip

    def write(self, folder: str | Path, worst_case: dict | None, scale: Sequence[int]) -> Path | None:
        """figures/worst_case.png for the summary's worst case (`worst_case`, the summary's "worst_case"), or None
        where it has none or it is not the case kept (then nothing was offered for it)."""
        named = (worst_case or {}).get("psnr")
        kept = self.kept
        if not named or kept is None or (named["case"], named["degradation"]) != (kept["case"], kept["degradation"]):
            return None
        title = (
            f"worst case: {kept['case']}, LR by {kept['degradation']} "
            f"(SR {named['gain']:+.2f} dB PSNR over cubic B-spline, the lowest of every scan x degradation)"
        )
        return comparison_figure(
            kept["lr"], kept["preds"], kept["hr"], Path(folder) / WORST_CASE_FIGURE, scale, title, kept["scores"]
        )


def uncertainty_figure(
    sr: torch.Tensor, hr: torch.Tensor, std: torch.Tensor, path: str | Path, label: str = "uncertainty (TTA std)"
) -> Path:
    """Rows: XY, XZ, YZ central slices. Columns: SR | HR | |SR - HR| | uncertainty (`label`), all (1, 1, X, Y, Z).

    Error and uncertainty share one colour scale per figure, so where they agree is visible at a glance.
    """
    vols = {"SR": sr[0, 0].cpu().numpy(), "HR": hr[0, 0].cpu().numpy()}
    maps = {"|SR - HR|": np.abs(vols["SR"] - vols["HR"]), label: std[0, 0].cpu().numpy()}
    vmax = max(float(np.percentile(m, 99.5)) for m in maps.values()) or 1.0
    # the comparison figure's layout: row heights from the slices' shapes, a colour-bar column, constrained layout
    rows = [_central(vols["HR"], axis).shape[0] / _central(vols["HR"], axis).shape[1] for _, axis in PLANES]
    width_ratios = [1.0, 1.0, 1.0, 1.0, 0.08]
    fig = plt.figure(figsize=(2.3 * sum(width_ratios) + 0.8, 2.3 * sum(rows) + 1.0), layout="constrained")
    grid = fig.add_gridspec(3, len(width_ratios), width_ratios=width_ratios, height_ratios=rows)
    for row, (plane, axis) in enumerate(PLANES):
        for col, (name, vol) in enumerate(list(vols.items()) + list(maps.items())):
            ax = fig.add_subplot(grid[row, col])
            is_map = name not in vols
            title = name if row == 0 else None
            shown = _panel(ax, _central(vol, axis), "magma" if is_map else "gray", vmax if is_map else 1, title)
            if col == 0:
                ax.set_ylabel(plane)
    fig.colorbar(shown, cax=fig.add_subplot(grid[:, -1]), label="|error|, bound (normalised intensity)")
    fig.suptitle("Where the output may be wrong: error against HR, and the uncertainty the model reports without HR")
    path = Path(path)
    _save(fig, path)
    return path


def best_validation(rows: list[dict], higher_is_better: bool = True) -> tuple[str, list[int], list[float], int] | None:
    """The validation column of the epoch CSV rows (the first `val_*` column), its validated epochs and values, and
    the best epoch (the first one at the best value, as the best-model saver keeps the first); None without one."""
    key = next((k for k in rows[0] if k.startswith("val_")), None) if rows else None
    if key is None:
        return None
    points = [(int(r["epoch"]), float(r[key])) for r in rows if str(r.get(key) or "").strip()]
    if not points:
        return None
    epochs, values = [e for e, _ in points], [v for _, v in points]
    pick = max if higher_is_better else min
    best = epochs[values.index(pick(values))]
    return key, epochs, values, best


def training_curves(csv_path: str | Path, path: str | Path, higher_is_better: bool = True) -> Path:
    """Loss terms, the validation metric with its best epoch marked, and throughput per epoch, from the
    EpochTimingHandler CSV (a `val_*` column holds the validation evaluator's key metric on validated epochs).

    `higher_is_better`: how the validation metric ranks (PSNR: True). The best epoch is the one whose model
    `model.pt` holds; a dashed line marks it on the loss plot too.
    """
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no epochs recorded")
    epochs = [int(r["epoch"]) for r in rows]
    terms = [k for k in rows[0] if k.startswith("train_") and rows[0][k] not in ("", None)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k in terms:
        values = [float(r[k]) for r in rows]
        if max(values) > 0:
            axes[0].plot(epochs, values, marker="o", label=k.removeprefix("train_"))
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_title("training loss terms (epoch means)")
    axes[0].legend(fontsize=8)
    validation = best_validation(rows, higher_is_better)
    if validation is None:
        axes[1].text(0.5, 0.5, "no validation column in the CSV", ha="center", va="center", transform=axes[1].transAxes)
        axes[1].set_title("validation")
    else:
        key, val_epochs, values, best = validation
        best_value = values[val_epochs.index(best)]
        unit = " (dB)" if "psnr" in key else ""
        axes[1].plot(val_epochs, values, marker="s", color="tab:green", label=key)
        axes[1].plot([best], [best_value], marker="*", markersize=16, color="tab:red", linestyle="none",
                     label=f"best: epoch {best}, {best_value:.4g}")  # fmt: skip
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel(f"{key}{unit}")
        axes[1].set_title(f"validation {key.removeprefix('val_')} (best epoch marked)")
        axes[1].legend(fontsize=8)
        axes[0].axvline(best, color="tab:red", linestyle="--", linewidth=1)
    axes[2].plot(epochs, [float(r["patches_per_second"]) for r in rows], marker="o")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("patches per second")
    path = Path(path)
    _save(fig, path)
    return path


def gain_figure(summaries: dict[str, dict], path: str | Path, title: str = "SR - cubic B-spline") -> Path:
    """Bars of the delivered SR's PSNR and SSIM gain over cubic B-spline per scan x degradation, one colour per
    labelled evaluation summary (e.g. two versions of the model on the same scans), with the goal's lines; the
    scans x degradations of the first summary, in its order."""
    labels = list(summaries)
    cells = [(e["case"], e["degradation"]) for e in summaries[labels[0]].get("per_scan", [])]
    if not cells:
        raise ValueError("gain_figure: the first summary has no per-scan table")
    key = "sr_gain_over_bspline"
    goal = summaries[labels[0]].get("worst_case", {}).get("goal", {"psnr": 0.5, "ssim": 0.0})
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.5 * len(cells) * len(labels) + 2), 7.5), sharex=True)
    width = 0.8 / len(labels)
    x = np.arange(len(cells))
    for k, label in enumerate(labels):
        table = {(e["case"], e["degradation"]): e.get(key, {}) for e in summaries[label].get("per_scan", [])}
        for ax, metric in zip(axes, ("psnr", "ssim"), strict=True):
            values = [table.get(c, {}).get(metric, np.nan) for c in cells]
            ax.bar(x + (k - (len(labels) - 1) / 2) * width, values, width, label=label)
    for ax, metric, unit in zip(axes, ("psnr", "ssim"), ("dB", ""), strict=True):
        ax.axhline(goal.get(metric, 0.0), color="black", linestyle="--", linewidth=1, label=f"goal ({metric})")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel(f"{metric.upper()} gain {unit}".strip())
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(title, fontsize=11)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([f"{c}\n{d}" for c, d in cells], rotation=60, ha="right", fontsize=7)
    out = Path(path)
    _save(fig, out)
    return out
