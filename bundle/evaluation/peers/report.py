"""The report step: one Markdown table and JSON of every result (and a compact table of the settings with a gap),
one PNG per scan and setting."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.core.atomic import replace_atomically, write_text_atomic
from bundle.evaluation.peers.benchmark import BASELINE, METHODS
from bundle.evaluation.peers.cases import load_cases
from bundle.evaluation.peers.scoring import intensity_range
from bundle.evaluation.peers.simulation import load_nifti, parse_setting


def collect(output_dir: str | Path) -> list[dict]:
    """Every result.json under <output_dir>/results, ordered scan, setting, method (B-spline first)."""
    rows = [json.loads(p.read_text()) for p in Path(output_dir).glob("results/*/*/*/result.json")]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["scan"], r["setting"], order.get(r["method"], 99), r["method"]))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def markdown_table(rows: list[dict]) -> str:
    """scan x setting x method: PSNR, SSIM (whole / foreground), gain over B-spline, wall time against the budget,
    peak memory, and the coverage of a calibrated error bound where the method wrote one ("-" where not)."""
    header = [
        "| scan | setting | method | PSNR dB | SSIM | PSNR fg | SSIM fg | gain vs B-spline dB | wall / budget "
        "| peak memory | coverage | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {(r["scan"], r["setting"]): r for r in rows if r["method"] == BASELINE and r.get("status") == "ok"}
    lines = []
    for r in rows:
        key = (r["scan"], r["setting"])
        if r.get("status") != "ok":
            lines.append(
                f"| {r['scan']} | {r['setting']} | {r['method']} | {r['status']}: {r.get('error', '')} |||||||||"
            )
            continue
        gain = f"{r['psnr'] - base[key]['psnr']:+.2f}" if key in base else "n/a"
        wall = _minutes(r["wall_s"])
        if r.get("budget_s"):
            over = " (over)" if r.get("within_budget") is False else ""
            wall = f"{wall} / {_minutes(r['budget_s'])}{over}"
        memory = f"{r['peak_rss_mb'] / 1024:.2f} GB" if r["peak_rss_mb"] >= 1024 else f"{r['peak_rss_mb']:.0f} MB"
        cover = f"{100 * r['coverage']:.1f} %" if r.get("coverage") is not None else "-"
        note = "; ".join(n for n in (r.get("note", ""), "" if r.get("grid") == "same grid" else r.get("grid", "")) if n)
        lines.append(
            f"| {r['scan']} | {r['setting']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_fg']:.2f} "
            f"| {r['ssim_fg']:.4f} | {gain} | {wall} | {memory} | {cover} | {note} |"
        )
    return "\n".join(header + lines) + "\n"


def gap_table(rows: list[dict]) -> str:
    """The settings with a gap (`<profile>_t<thickness>_x<factor>`) compactly: one row per scan and setting, B-spline's
    PSNR, then every other method that ran on one of them as "PSNR (gain over B-spline)"; "" when none has a gap."""
    gap = [r for r in rows if parse_setting(r["setting"])[2] is not None]
    keys = sorted({(r["scan"], r["setting"]) for r in gap})
    if not keys:
        return ""
    order = {m: i for i, m in enumerate(METHODS)}
    others = sorted({r["method"] for r in gap} - {BASELINE}, key=lambda m: (order.get(m, 99), m))
    cells = {(r["scan"], r["setting"], r["method"]): r for r in gap}
    lines = [
        "| scan | setting | slice | B-spline PSNR dB | " + " | ".join(others) + " |",
        "|---|---|---|---:|" + "---:|" * len(others),
    ]
    for scan, setting in keys:
        profile, factor, thickness = parse_setting(setting)
        base = cells.get((scan, setting, BASELINE))
        ok = base is not None and base.get("status") == "ok"
        row = [scan, setting, f"{profile} {thickness:g} every {factor:g}"]
        row.append(f"{base['psnr']:.2f}" if ok and base else (base or {}).get("status", ""))
        for method in others:
            r = cells.get((scan, setting, method))
            if r is None:
                row.append("")
            elif r.get("status") != "ok":
                row.append(r["status"])
            else:
                row.append(f"{r['psnr']:.2f} ({r['psnr'] - base['psnr']:+.2f})" if ok and base else f"{r['psnr']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    title = "Settings with a gap (slice profile narrower than the spacing; thickness and spacing in thin voxels):"
    return "\n" + title + "\n\n" + "\n".join(lines) + "\n"


def _plane(vol: np.ndarray, normal: int, axis: int, codes: Sequence[str]) -> np.ndarray:
    """The middle slice across `normal`, with the thick `axis` vertical and superior up."""
    img = np.take(vol, vol.shape[normal] // 2, axis=normal)
    rest = [a for a in range(3) if a != normal]
    if rest.index(axis) == 1:
        img = img.T  # rows = thick axis
    if codes[axis] == "S":  # row index runs superior: flip so that superior is the top row
        img = img[::-1]
    return img


def figure(output_dir: str | Path, rows: list[dict], scan: str, setting: str) -> Path | None:
    """PNG: the HR reference and every method that ran, the two planes that cross the thick axis, one column each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = next((c for c in load_cases(output_dir, [setting], [scan])), None)
    done = [r for r in rows if r["scan"] == scan and r["setting"] == setting and r.get("status") == "ok"]
    if case is None or not done:
        return None
    hr_img = load_nifti(case.hr)
    hr = np.asarray(hr_img.dataobj, dtype=np.float32)
    lo, hi = intensity_range(hr)
    codes = nib.aff2axcodes(hr_img.affine)
    volumes = [("HR reference", hr)] + [
        (
            f"{r['method']}\n{r['psnr']:.2f} dB",
            np.asarray(
                load_nifti(Path(output_dir) / "results" / scan / setting / r["method"] / "on_hr.nii.gz").dataobj
            ),
        )
        for r in done
    ]
    normals = [a for a in range(3) if a != case.axis]
    plane_name = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}
    fig, axes = plt.subplots(2, len(volumes), figsize=(2.6 * len(volumes), 5.6), squeeze=False)
    for col, (title, vol) in enumerate(volumes):
        for row, normal in enumerate(normals):
            ax = axes[row, col]
            ax.imshow(
                (_plane(vol, normal, case.axis, codes) - lo) / (hi - lo), cmap="gray", vmin=0, vmax=1, origin="upper"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(plane_name[codes[normal]], fontsize=9)
    fig.suptitle(f"{scan}, {setting} (thick axis vertical, superior up)", fontsize=10)
    fig.tight_layout()
    path = Path(output_dir) / "report" / f"{scan}_{setting}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110), keep_suffix=True)
    plt.close(fig)
    return path


def report(output_dir: str = "outputs/peers") -> str:
    """Write <output_dir>/report/{peers.md, peers.json, <scan>_<setting>.png}; returns the Markdown path."""
    rows = collect(output_dir)
    if not rows:
        raise SystemExit(f"--output_dir {output_dir}: no results yet (run the run step)")
    folder = Path(output_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    figures = [figure(output_dir, rows, s, t) for s, t in sorted({(r["scan"], r["setting"]) for r in rows})]
    md = markdown_table(rows) + gap_table(rows) + "".join(f"\n![{p.stem}]({p.name})\n" for p in figures if p)
    write_text_atomic(folder / "peers.md", md)
    write_text_atomic(folder / "peers.json", json.dumps(rows, indent=2))
    print(md)
    return str(folder / "peers.md")
