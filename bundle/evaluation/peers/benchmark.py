"""The thick and run steps: simulated acquisitions of every eligible scan, then each method on each, scored,
resuming where a killed run stopped."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bundle.core.atomic import write_text_atomic
from bundle.evaluation.peers import drivers
from bundle.evaluation.peers.cases import Case, Plan, load_cases
from bundle.evaluation.peers.drivers import ECLARE_FIXED_PATCHES, plan_eclare, plan_saint, plan_soupgan
from bundle.evaluation.peers.interpolation import plan_interpolation
from bundle.evaluation.peers.measure import TIMEOUT_OVER_BUDGET, run_measured
from bundle.evaluation.peers.scoring import coverage, score, to_hr_grid
from bundle.evaluation.peers.simulation import (
    FACTORS,
    PROFILES,
    crop_affine,
    crop_to_factor,
    foreground_box,
    load_nifti,
    parse_setting,
    save_nifti_atomic,
    setting_name,
    simulate_thick,
    superior_axis,
    thick_affine,
)

METHODS = ("bspline", "trilinear", "eclare", "eclare_fixed", "saint", "soupgan", "adapt", "adapt_told")
BASELINE = "bspline"  # every gain is over cubic B-spline, named first in every table; trilinear second
BUDGET_SLACK = 1.1  # "within_budget": wall time at most this times the budget
# method -> planner; "adapt" and "adapt_told" (the bundle's per-scan workflow, told nothing about the slice profile
# or told the true one) are added by scripts/benchmark_peers.py, which may import the adaptation stage (the
# evaluation stage may not)
PLANNERS: dict[str, Callable[[Case, Path, float], Plan]] = {
    "bspline": plan_interpolation("bspline"),
    "trilinear": plan_interpolation("trilinear"),
    "eclare": plan_eclare,
    "eclare_fixed": lambda case, work, budget_s: plan_eclare(case, work, budget_s, fixed=True),
    "saint": plan_saint,
    "soupgan": plan_soupgan,
}


def _acquisitions(
    factors: Sequence[float] | float, profiles: Sequence[str] | str, settings: str | Sequence[str] | None
) -> list[tuple[str, float, float | None]]:
    """(profile, factor, thickness or None) to simulate: the named `settings`, else every factor x profile."""
    if settings is not None:
        return [parse_setting(s) for s in _as_list(settings) or []]
    factors = [float(f) for f in (factors if isinstance(factors, (list, tuple)) else [factors])]  # type: ignore[arg-type]
    profiles = list(profiles) if isinstance(profiles, (list, tuple)) else str(profiles).split(",")
    for p in profiles:
        parse_setting(setting_name(p, 4))
    return [(p, f, None) for f in factors for p in profiles]


def thick(
    scans_dir: str = "data/real_scans_all",
    output_dir: str = "outputs/peers",
    factors: Sequence[float] | float = FACTORS,
    profiles: Sequence[str] = PROFILES,
    max_spacing_mm: float = 1.3,
    crop_foreground: bool = True,
    max_extent_mm: float | None = 96.0,
    settings: str | Sequence[str] | None = None,
) -> list[str]:
    """Write <output_dir>/thick/<scan>/<setting>/{hr,thick}.nii.gz + setting.json for every eligible scan.

    crop_foreground: crop each scan to its head (`foreground_box`), at most `max_extent_mm` per axis, first.
    settings: setting names separated by commas (`gaussian_t3_x5,box_x4`: see `setting_name`) to write instead of
    every factor x profile (those have the profile as wide as the slice spacing).
    """
    scans = sorted(Path(scans_dir).glob("imagesTs/*.nii.gz"))
    if not scans:
        raise SystemExit(
            f"--scans_dir {scans_dir}: no imagesTs/*.nii.gz (make it: scripts/make_real_scans.py --scans all)"
        )
    acquisitions = _acquisitions(factors, profiles, settings)
    written = []
    for path in scans:
        name = path.name[: -len(".nii.gz")]
        img = load_nifti(path)
        spacing = [float(z) for z in img.header.get_zooms()[:3]]
        if max(spacing) > max_spacing_mm:
            print(f"{name}: skipped, spacing {spacing} mm is not <= {max_spacing_mm} mm on every axis")
            continue
        arr = np.asarray(img.dataobj, dtype=np.float32)
        box = foreground_box(arr, spacing, max_extent_mm) if crop_foreground else tuple(slice(0, n) for n in arr.shape)
        arr, affine = arr[box], crop_affine(img.affine, [b.start for b in box])
        axis = superior_axis(affine)
        for profile, factor, thickness in acquisitions:
            setting = setting_name(profile, factor, thickness)
            start, length = crop_to_factor(arr.shape[axis], factor)
            index = [slice(None)] * 3
            index[axis] = slice(start, start + length)
            hr = arr[tuple(index)]
            offset = [0, 0, 0]
            offset[axis] = start
            hr_affine = crop_affine(affine, offset)
            lr = simulate_thick(hr, axis, factor, profile, thickness)
            folder = Path(output_dir) / "thick" / name / setting
            folder.mkdir(parents=True, exist_ok=True)
            save_nifti_atomic(hr, hr_affine, folder / "hr.nii.gz")
            save_nifti_atomic(lr, thick_affine(hr_affine, axis, factor), folder / "thick.nii.gz")
            meta = {
                "scan": name, "setting": setting, "axis": axis, "factor": factor, "profile": profile,
                "thickness": factor if thickness is None else thickness,  # the profile's width in thin voxels
                "hr_shape": list(hr.shape), "thick_shape": list(lr.shape),
                "axis_code": nib.aff2axcodes(hr_affine)[axis], "source": str(path),
            }  # fmt: skip
            write_text_atomic(folder / "setting.json", json.dumps(meta, indent=2))
            print(f"{name} {setting}: HR {list(hr.shape)} -> thick {list(lr.shape)} along axis {axis}")
            written.append(str(folder))
    return written


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")


def adaptation_extras(work: Path, hr_img: Any, hr: np.ndarray, sr: np.ndarray) -> dict[str, Any]:
    """What the adapting workflow wrote beside its output, for result.json (empty for the other methods).

    "coverage": the share of foreground voxels whose error lies within its calibrated 90 % bound
    (`thick_uncertainty.nii.gz`, input units, on the SR grid: brought onto the HR grid as the SR `sr` was);
    "adapt_summary": from `thick_sr.json`, the profile it modelled and where its shape and thickness came from
    (its "slice_profile" record), whether it fell back to B-spline and its held-out gain over B-spline.
    """
    extras: dict[str, Any] = {}
    bound_path, summary_path = work / "thick_uncertainty.nii.gz", work / "thick_sr.json"
    if bound_path.is_file():
        bound, _ = to_hr_grid(load_nifti(bound_path), hr_img)
        extras["coverage"] = coverage(sr, bound, hr)
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        geometry, profile = summary.get("geometry") or {}, summary.get("slice_profile") or {}
        extras["adapt_summary"] = {
            "profile": geometry.get("profile"),
            "thickness": geometry.get("thickness"),
            "profile_source": profile.get("profile_source"),
            "thickness_source": profile.get("thickness_source"),
            "fallback_to_bspline": summary.get("fallback_to_bspline"),
            "gain_over_bspline_db": summary.get("gain_over_bspline_db"),
        }
    return extras


def run_one(case: Case, method: str, results: Path, budget_s: float) -> dict[str, Any]:
    """Run `method` on `case` and score it; always returns a result (status ok / failed / unavailable)."""
    work = results / case.scan / case.setting / method
    base = {"scan": case.scan, "setting": case.setting, "method": method, "budget_s": budget_s}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        plan = PLANNERS[method](case, work, budget_s)
    except (RuntimeError, OSError, StopIteration) as err:
        return {**base, "status": "failed", "error": str(err).splitlines()[0] if str(err) else type(err).__name__}
    if plan.cmd is None:
        return {**base, "status": "unavailable", "error": plan.unavailable}
    res = run_measured(
        plan.cmd, work, f"{method} on {case.scan} {case.setting}", budget_s * TIMEOUT_OVER_BUDGET, plan.cwd, plan.env
    )
    result = {
        **base,
        **res,
        "note": plan.note,
        "command": plan.cmd if isinstance(plan.cmd, str) else " ".join(plan.cmd),
    }
    if res["rc"] != 0:
        return {**result, "status": "failed"}
    if not plan.output.is_file():
        return {**result, "status": "failed", "error": f"finished but wrote no {plan.output.name}"}
    hr_img = load_nifti(case.hr)
    hr = np.asarray(hr_img.dataobj, dtype=np.float32)
    on_hr, grid = to_hr_grid(load_nifti(plan.output), hr_img)
    save_nifti_atomic(on_hr, hr_img.affine, work / "on_hr.nii.gz")
    within = bool(res["wall_s"] <= BUDGET_SLACK * budget_s)
    extras = adaptation_extras(work, hr_img, hr, on_hr)
    return {**result, "status": "ok", "grid": grid, **score(on_hr, hr), "within_budget": within, **extras}


def run(
    output_dir: str = "outputs/peers",
    methods: str | Sequence[str] = "bspline,trilinear,eclare,saint,soupgan,adapt",
    budget_minutes: float = 10.0,
    settings: str | Sequence[str] | None = "gaussian_x4",
    scans: str | Sequence[str] | None = None,
    retry_failed: bool = False,
    eclare_estimate_profile: bool = False,
    eclare_patches: int = ECLARE_FIXED_PATCHES,
) -> list[dict]:
    """Run each method on each simulated acquisition (resuming: finished pairs are skipped); returns the results.

    settings / scans: names separated by commas ('all' or None: every one the thick step wrote).
    methods: of `PLANNERS`; "adapt" is the bundle's workflow told nothing about the slice profile (it estimates it),
    "adapt_told" the same told the true profile and thickness (both added by scripts/benchmark_peers.py).

    retry_failed: run pairs whose earlier result is a failure again (finished ones are always skipped).
    eclare_estimate_profile: let ECLARE estimate the slice profile (ESPRESO) instead of giving it the true one.
    eclare_patches: the training patches of method "eclare_fixed" (ECLARE with a set length, over budget or not).
    """
    drivers.ECLARE_ESTIMATE_PROFILE = bool(eclare_estimate_profile)
    drivers.ECLARE_FIXED_PATCHES = int(eclare_patches)
    chosen = _as_list(methods) or []
    unknown = [m for m in chosen if m not in PLANNERS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(PLANNERS)}")
    chosen = sorted(chosen, key=METHODS.index)  # baseline first
    wanted = None if settings in (None, "all") else _as_list(settings)
    for s in wanted or []:
        parse_setting(s)
    cases = load_cases(output_dir, wanted, _as_list(scans))
    if not cases:
        raise SystemExit(f"--output_dir {output_dir}: no simulated scans for settings {wanted} (run the thick step)")
    results = Path(output_dir).resolve() / "results"
    done = []
    total = len(cases) * len(chosen)
    for i, (case, method) in enumerate(((c, m) for c in cases for m in chosen), 1):
        path = results / case.scan / case.setting / method / "result.json"
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("status") == "ok" or not retry_failed:
                print(
                    f"[{i}/{total}] {method} on {case.scan} {case.setting}: done before ({previous['status']}), skipped"
                )
                done.append(previous)
                continue
        print(f"[{i}/{total}] {method} on {case.scan} {case.setting} ...", flush=True)
        result = run_one(case, method, results, budget_minutes * 60.0)
        write_text_atomic(path, json.dumps(result, indent=2))
        shown = (
            f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}"
            if result["status"] == "ok"
            else result.get("error")
        )
        print(f"[{i}/{total}] {method}: {result['status']}: {shown} ({result.get('wall_s', 0)} s)", flush=True)
        done.append(result)
    return done
