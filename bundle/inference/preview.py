"""A tri-planar preview PNG beside each SR output: input | SR | uncertainty (or consistency), with colour bars.

A user would rather look than open a viewer: `<name>_preview.png` shows the middle axial, coronal and sagittal
slices of the input, the SR and its trust map, all in RAS display orientation (left of the image = the subject's
left: L/R, P/A, I/S letters on the edges), physical aspect ratios, a 10 mm scale bar, and colour bars in the
input's intensity units. Volumes are channel-first MetaTensors (C, X, Y, Z) whose affines are in RAS world space.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from bundle.core.atomic import replace_atomically
from bundle.data.orientation import _reorient
from bundle.data.transforms import INTENSITY_RANGE_KEY

__all__ = ["PREVIEW_SUFFIX", "write_preview", "planes", "annotate_plane"]

PREVIEW_SUFFIX = "_preview.png"
# the preview's size: PREVIEW_DPI dots per inch, at least PREVIEW_MIN_WIDTH_IN inches wide (1300 px), every text
# at least PREVIEW_FONT points (~17 px at 100 dpi: readable without zooming)
PREVIEW_DPI, PREVIEW_MIN_WIDTH_IN, PREVIEW_COLUMN_IN, PREVIEW_FONT = 100, 13.0, 4.6, 12
# (name, axis cut, horizontal axis, vertical axis, letters at left/right/bottom/top) in RAS arrays
PLANES = (
    ("axial", 2, 0, 1, ("R", "L", "P", "A")),
    ("coronal", 1, 0, 2, ("R", "L", "I", "S")),
    ("sagittal", 0, 1, 2, ("P", "A", "I", "S")),
)


def planes(volume: torch.Tensor) -> list[tuple[str, np.ndarray, float, tuple[str, ...], float]]:
    """The middle slice per plane of the first channel, reoriented to RAS: (plane, 2-D array ready for
    `imshow(origin="lower")` with the subject's right on the display's left (radiological convention, as
    scanners show it), aspect ratio, edge letters, horizontal spacing in mm)."""
    ras = _reorient(volume, "RAS") if isinstance(volume, MetaTensor) else volume
    arr = torch.as_tensor(ras)[0].detach().float().cpu().numpy()
    affine = np.asarray(torch.as_tensor(getattr(ras, "affine", torch.eye(4)), dtype=torch.float64))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = []
    for name, cut, h, v, letters in PLANES:
        index = [slice(None)] * 3
        index[cut] = arr.shape[cut] // 2
        sl = arr[tuple(index)]  # axes (h, v) in increasing order
        if h > v:
            sl = sl.T
        image = sl.T  # rows = vertical axis
        if name != "sagittal":
            image = image[:, ::-1]  # radiological: subject's right on the display's left
        out.append(
            (name, np.ascontiguousarray(image), float(spacing[v] / spacing[h]), tuple(letters), float(spacing[h]))
        )
    return out


def _scale_bar(ax, width_px: int, spacing_mm: float, length_mm: float = 10.0, fontsize: float = 6) -> None:
    pixels = length_mm / max(spacing_mm, 1e-6)
    if pixels > 0.8 * width_px:
        return
    x0 = 0.05 * width_px
    ax.plot([x0, x0 + pixels], [2, 2], color="yellow", linewidth=2)
    ax.text(x0, 3, f"{length_mm:g} mm", color="yellow", fontsize=fontsize, va="bottom")


def annotate_plane(ax, letters: tuple[str, ...], width_px: int, spacing_mm: float, fontsize: float = 7) -> None:
    """Orientation letters on the edges of one `planes()` slice (left, right, bottom, top) and a 10 mm scale bar
    (`width_px`: the image's width in pixels, `spacing_mm`: its horizontal pixel spacing; `fontsize` in points,
    the bar's label one point smaller). Shared with the evaluation's figures, so every figure of a volume reads
    the same way."""
    left, right, bottom, top = letters
    for text, x, y, ha, va in ((left, 0.0, 0.5, "left", "center"), (right, 1.0, 0.5, "right", "center")):
        ax.text(x, y, text, transform=ax.transAxes, color="cyan", fontsize=fontsize, ha=ha, va=va)
    ax.text(0.5, 1.0, top, transform=ax.transAxes, color="cyan", fontsize=fontsize, ha="center", va="top")
    ax.text(0.5, 0.0, bottom, transform=ax.transAxes, color="cyan", fontsize=fontsize, ha="center", va="bottom")
    _scale_bar(ax, width_px, spacing_mm, fontsize=fontsize - 1)


def write_preview(
    path: str | os.PathLike,
    image: MetaTensor,
    sr: MetaTensor,
    trust_map: MetaTensor | None,
    trust_label: str = "uncertainty",
    title: str = "",
    units: str = "input units",
) -> Path:
    """Write the tri-planar preview (3 planes x [input, SR, trust map]) as a PNG, atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranges = getattr(image, "meta", {}).get(INTENSITY_RANGE_KEY)
    if ranges:  # the network's normalised input, shown in the input's own units like the SR
        (low, high), scaled = ranges[0], image[:1] * (float(ranges[0][1]) - float(ranges[0][0]))
        shown = scaled + float(low)
    else:
        shown = image
    columns = [("input", shown, "gray"), ("SR", sr, "gray")]
    if trust_map is not None:
        columns.append((trust_label, trust_map, "magma"))
    width = max(PREVIEW_MIN_WIDTH_IN, PREVIEW_COLUMN_IN * len(columns))
    fig, axes = plt.subplots(3, len(columns), figsize=(width, 0.93 * width), squeeze=False)
    font = PREVIEW_FONT
    for c, (label, volume, cmap) in enumerate(columns):
        slices = planes(volume)
        values = np.concatenate([s[1].ravel() for s in slices])
        low, high = np.percentile(values, [0.5, 99.5]) if cmap == "gray" else (0.0, np.percentile(values, 99.5))
        for r, (plane, arr, aspect, letters, spacing) in enumerate(slices):
            ax = axes[r][c]
            shown = ax.imshow(arr, cmap=cmap, origin="lower", aspect=aspect, vmin=low, vmax=max(high, low + 1e-6))
            ax.set_xticks([])
            ax.set_yticks([])
            annotate_plane(ax, letters, arr.shape[1], spacing, fontsize=font + 1)
            if r == 0:
                ax.set_title(label, fontsize=font + 3)
            if c == 0:
                ax.set_ylabel(plane, fontsize=font + 2)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=font)
            bar.ax.yaxis.get_offset_text().set_fontsize(font)
            if r == 2:
                bar.set_label(units, fontsize=font)
    fig.suptitle(title, fontsize=font + 3)
    fig.tight_layout()
    target = Path(path)
    replace_atomically(target, lambda tmp: fig.savefig(tmp, dpi=PREVIEW_DPI, format="png"), keep_suffix=True)
    plt.close(fig)
    return target
