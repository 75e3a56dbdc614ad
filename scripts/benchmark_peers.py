"""Thick-slice MRI super-resolution, peers side by side: cubic B-spline, trilinear, ECLARE, SAINT, SOUP-GAN, ours.

The common clinical input is a 2-D acquisition: sharp in-plane (~1 mm), thick slices (4-6 mm). This benchmark makes
such scans from real 1 mm scans by simulation, runs every method on them as a user would (each peer through its own
command line or documented Python entry point, in its own virtualenv, on CPU), and scores each output against the
1 mm original. Steps, each runnable alone:

    python scripts/benchmark_peers.py thick  --scans_dir data/real_scans_all --output_dir outputs/peers
    python scripts/benchmark_peers.py run    --output_dir outputs/peers --methods bspline,trilinear,eclare,saint,soupgan,adapt \
        --budget_minutes 10 --settings gaussian_x4
    python scripts/benchmark_peers.py report --output_dir outputs/peers

- `thick`: every scan whose three spacings are at most `max_spacing_mm` gets, along the voxel axis nearest the
  head's superior-inferior axis (an axial 2-D acquisition), thick versions for each factor x slice profile
  (`simulate_thick`): Gaussian (FWHM = slice thickness) or box, then decimation. The HR reference is cropped so its
  length along that axis is a whole number of thick slices, and the thick image's affine puts each thick voxel's
  centre at the centre of the thin voxels it covers, as a real acquisition of that slab would.
- `run`: each method writes its output; `to_hr_grid` brings it onto the HR grid (resampling only when its affine
  or shape differs, which the result records), and `score` gives PSNR and SSIM (bundle.core.metrics, data range
  1) over the whole volume and inside the foreground, after one intensity normalisation for every method: the HR
  reference's 0.5 / 99.5 percentiles mapped to 0 / 1 (the training normalisation), the same linear map applied to
  each output, no clipping. Wall time and the peak resident memory of the whole child process tree are measured
  (`run_measured`). Results go to `<output_dir>/results/<scan>/<setting>/<method>/result.json`, written last and
  atomically: a killed run resumes, skipping finished pairs; a failed method gets a result with its reason.
- `report`: Markdown table + JSON + one PNG figure per scan and setting (the two planes that cross the thick axis).

Peers live in `.venv-peers/<name>/`, built on first use from the base interpreter. None of them gets a torch of its
own: PyPI's torch wheel for Linux is the CUDA build (several GB with its libraries), so a `.pth` file appends the
bundle's site-packages *after* the peer's own, and the peer's pinned packages (ECLARE: scipy 1.11.4, hence numpy
1.26) are installed in its own venv and win. `--system-site-packages` would not help: the bundle's torch is in
its venv, not in the base interpreter. SOUP-GAN needs TensorFlow with Keras 2 (its model is a Keras SavedModel),
so it gets tensorflow-cpu 2.15 in its venv and no torch at all.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from scipy.special import ndtr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bundle.adaptation.geometry import find_geometry  # noqa: E402
from bundle.adaptation.prior import find_prior  # noqa: E402
from bundle.core.atomic import replace_atomically, write_text_atomic  # noqa: E402
from bundle.core.bspline import bspline_resize  # noqa: E402
from bundle.core.choices import FOREGROUND_THRESHOLD, SSIM_WINDOW  # noqa: E402
from bundle.core.geometry import low_resolution_affine  # noqa: E402
from bundle.core.metrics import psnr, ssim_3d  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from make_real_scans import foreground_box  # noqa: E402

PROFILES = ("gaussian", "box")
FACTORS = (4, 5, 4.5)
METHODS = ("bspline", "trilinear", "eclare", "eclare_fixed", "saint", "soupgan", "adapt")
BASELINE = "bspline"  # every gain is over cubic B-spline, named first in every table; trilinear second
# the bundle's own per-scan self-supervised workflow; {python} {input} {output_dir} {minutes} {profile} are filled in
ADAPT_COMMAND = (
    "{python} -m monai.bundle run adapting --config_file \"['configs/inference.json','configs/adapt.json']\" "
    "--input_image {input} --output_dir {output_dir} --max_minutes {minutes} --slice_profile {profile}"
)
ADAPT_CONFIG = ROOT / "configs" / "adapt.json"
ADAPT_PRIORS = ROOT / "models" / "adapt_priors"  # `make priors`; the workflow's `warm_start: auto` looks here
# ECLARE trains on 2-D patches (batches of 128), then super-resolves slice by slice in two orientations. Measured on
# the quiet 2-core development machine (nothing else running), on the 96 x 24 x 96 thick T1 of `make peers`, 5,120
# patches: ~15 patches/s in training and 112 s of start-up and inference (2 x 96 slices at ~0.55 s), i.e. ~130 s
# per million output voxels; on the same machine shared with three other jobs the rate fell to ~2.8 patches/s.
# The patch count is set from the quiet figures so the run ends within the budget (10 minutes: ~7,200 patches).
# Its own default (1,000,000 patches) would take about 18 hours here.
ECLARE_PATCHES_PER_S = 15.0
ECLARE_OVERHEAD_S_PER_MVOXEL = 130.0
ECLARE_ESTIMATE_PROFILE = False  # True: let ESPRESO estimate the slice profile (run --eclare_estimate_profile)
ECLARE_DEFAULT_PATCHES = 1_000_000
ECLARE_FIXED_PATCHES = 2048  # method "eclare_fixed": this many patches whatever the budget (run --eclare_patches)
TIMEOUT_OVER_BUDGET = 2.0  # a method still running at this multiple of the budget is stopped and reported


# ----------------------------------------------------------------------------------------------- thick simulation


def setting_name(profile: str, factor: float) -> str:
    """'gaussian_x4', 'box_x4.5': one folder per simulated acquisition."""
    return f"{profile}_x{factor:g}"


def parse_setting(name: str) -> tuple[str, float]:
    """Inverse of `setting_name`, with one clear line for a bad name."""
    profile, _, factor = name.partition("_x")
    try:
        value = float(factor)
    except ValueError:
        value = float("nan")
    if profile not in PROFILES or not value > 1:
        raise SystemExit(f"--settings: {name!r} is not <profile>_x<factor> with profile in {PROFILES}, factor > 1")
    return profile, value


def thick_count(n_thin: int, factor: float) -> int:
    """Most thick slices m with m * factor whole and at most `n_thin` (factor 4.5: m even)."""
    m = int(math.floor(n_thin / factor + 1e-9))
    while m > 0 and abs(m * factor - round(m * factor)) > 1e-6:
        m -= 1
    if m < 2:
        raise ValueError(f"{n_thin} thin slices give fewer than two thick slices at factor {factor}")
    return m


def slice_weights(n_thin: int, factor: float, profile: str) -> np.ndarray:
    """Weights (m, n_thin) of each thin voxel in each thick slice; rows sum to 1.

    Thin voxel j spans [j, j + 1) along the axis, thick slice k spans [k f, (k + 1) f) with centre (k + 1/2) f.
    'box': the fraction of the thin voxel inside the slab, over f. 'gaussian': the slice profile is a Gaussian of
    FWHM f (sigma = f / (2 sqrt(2 ln 2))) centred on the slab, integrated over each thin voxel; the part of it
    beyond the volume's ends is dropped and the row renormalised (so a constant stays constant at the edges).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    m = thick_count(n_thin, factor)
    edges = np.arange(n_thin + 1, dtype=np.float64)  # thin voxel boundaries
    lo = np.arange(m, dtype=np.float64)[:, None] * factor
    if profile == "box":
        w = np.clip(np.minimum(edges[None, 1:], lo + factor) - np.maximum(edges[None, :-1], lo), 0, None)
    else:
        sigma = factor / (2 * math.sqrt(2 * math.log(2)))
        cdf = ndtr((edges[None, :] - (lo + factor / 2)) / sigma)
        w = cdf[:, 1:] - cdf[:, :-1]
    return w / w.sum(axis=1, keepdims=True)


def simulate_thick(hr: np.ndarray, axis: int, factor: float, profile: str) -> np.ndarray:
    """A thick-slice acquisition of `hr` (X, Y, Z) along `axis`: slice profile, then one sample per slab.

    `hr`'s length along `axis` must already be m * factor (see `crop_to_factor`); returns float32 of that shape
    with m in place of it.
    """
    n = hr.shape[axis]
    weights = slice_weights(n, factor, profile)
    if abs(weights.shape[0] * factor - n) > 1e-6:
        raise ValueError(f"length {n} along axis {axis} is not a whole number of slabs of {factor}: crop it first")
    out = np.tensordot(weights, np.moveaxis(hr.astype(np.float64), axis, 0), axes=(1, 0))
    return np.moveaxis(out, 0, axis).astype(np.float32)


def crop_to_factor(n_thin: int, factor: float) -> tuple[int, int]:
    """(start, length): the centred run of thin slices that is a whole number of slabs."""
    length = int(round(thick_count(n_thin, factor) * factor))
    return (n_thin - length) // 2, length


def thick_affine(hr_affine: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Affine of the thick grid over the same slab extent as the (cropped) HR grid: spacing x factor along `axis`,
    origin at the centre of the first slab's thin voxels (voxel index k -> thin index f k + (f - 1) / 2)."""
    scale = [1.0, 1.0, 1.0]
    scale[axis] = float(factor)
    return low_resolution_affine(torch.as_tensor(hr_affine, dtype=torch.float64), scale).numpy()


def crop_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of a crop starting at voxel `start`."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out


def superior_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs closest to the superior-inferior direction (an axial acquisition's slice axis)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    return int(np.argmax(np.abs(directions[2])))


def save_nifti_atomic(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """nibabel save to a temporary sibling, then rename: never a half-written volume."""
    img = nib.Nifti1Image(np.asarray(arr, dtype=np.float32), affine)
    replace_atomically(path, lambda tmp: nib.save(img, tmp), keep_suffix=True)


# ---------------------------------------------------------------------------------------------- grids and metrics


def to_hr_grid(
    out_img: nib.spatialimages.SpatialImage, hr_img: nib.spatialimages.SpatialImage
) -> tuple[np.ndarray, str]:
    """A method's output on the HR grid, and how it got there.

    Same shape and affine (to 1e-3 mm): taken as is. Otherwise each HR voxel centre is mapped through the two
    affines into the output's voxel space and sampled linearly (scipy map_coordinates, order 1, nearest at the
    border); the note gives the largest voxel-centre offset in mm so a reader sees how far the grids were apart.
    """
    out = np.asarray(out_img.dataobj, dtype=np.float32)
    while out.ndim > 3 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.shape == tuple(hr_img.shape[:3]) and np.allclose(out_img.affine, hr_img.affine, atol=1e-3):
        return out, "same grid"
    to_out = np.linalg.inv(out_img.affine) @ hr_img.affine
    grid = np.indices(hr_img.shape[:3], dtype=np.float64).reshape(3, -1)
    coords = to_out[:3, :3] @ grid + to_out[:3, 3:4]
    sampled = ndimage.map_coordinates(out, coords, order=1, mode="nearest").reshape(hr_img.shape[:3])
    corners = np.array([[0, 0, 0, 1], [s - 1 for s in hr_img.shape[:3]] + [1]], dtype=np.float64).T
    offset = np.abs((out_img.affine @ np.vstack([corners[:3], corners[3:]]) - hr_img.affine @ corners)[:3]).max()
    return sampled.astype(np.float32), f"resampled (linear) from {list(out.shape)}, corner offset {offset:.2f} mm"


def intensity_range(hr: np.ndarray) -> tuple[float, float]:
    """The HR reference's 0.5 / 99.5 percentiles: mapped to 0 / 1 for every method alike."""
    lo, hi = np.percentile(hr, [0.5, 99.5])
    if hi <= lo:
        raise ValueError("the HR reference is constant: nothing to score")
    return float(lo), float(hi)


def score(pred: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM over the whole volume and inside the foreground (normalised HR > FOREGROUND_THRESHOLD).

    Both volumes (X, Y, Z) go through the HR's percentile map (`intensity_range`), data range 1, SSIM window
    SSIM_WINDOW: the numbers are those of the project's evaluation.
    """
    if pred.shape != hr.shape:
        raise ValueError(f"prediction {pred.shape} is not on the HR grid {hr.shape}")
    lo, hi = intensity_range(hr)
    p = torch.from_numpy((pred.astype(np.float32) - lo) / (hi - lo))[None, None]
    t = torch.from_numpy((hr.astype(np.float32) - lo) / (hi - lo))[None, None]
    fg = t > FOREGROUND_THRESHOLD
    return {
        "psnr": float(psnr(p, t)[0]),
        "ssim": float(ssim_3d(p, t, win_size=SSIM_WINDOW)[0]),
        "psnr_fg": float(psnr(p, t, mask=fg)[0]),
        "ssim_fg": float(ssim_3d(p, t, win_size=SSIM_WINDOW, mask=fg)[0]),
    }


# ------------------------------------------------------------------------------------------ child processes


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes) for every process /proc shows."""
    table = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), rss_pages * page)
    return table


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants now."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += table.get(pid, (0, 0))[1]
        stack.extend(children.get(pid, []))
    return total


def first_error_line(stderr: str) -> str:
    """The line that says why: a Python traceback's last line, else the first non-empty line of stderr."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "no message on stderr"
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return lines[-1][:300]
    return lines[0][:300]


def run_measured(
    cmd: Sequence[str] | str,
    log_dir: Path,
    label: str,
    timeout_s: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    poll_s: float = 0.5,
    report_every_s: float = 30.0,
) -> dict[str, Any]:
    """Run `cmd`, stdout/stderr to `log_dir`, sampling the process tree's memory; a progress line every 30 s.

    Returns rc (None when stopped at `timeout_s`), wall_s, peak_rss_mb, and error (one line) when it failed.
    The child is its own process group, so stopping it at the timeout stops everything it started.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.log", log_dir / "stderr.log"
    start = time.monotonic()
    peak, last_report = 0, start
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, cwd=cwd, env=env, shell=isinstance(cmd, str), start_new_session=True
        )
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            now = time.monotonic()
            if now - start > timeout_s:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
            if now - last_report >= report_every_s:
                print(f"  {label}: {now - start:.0f} s (stops at {timeout_s:.0f} s), {peak / 2**20:.0f} MB", flush=True)
                last_report = now
            time.sleep(poll_s)
    wall = time.monotonic() - start
    timed_out = wall > timeout_s and proc.returncode != 0
    result: dict[str, Any] = {
        "rc": None if timed_out else proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
    }
    if timed_out:
        result["error"] = f"stopped after {timeout_s:.0f} s ({TIMEOUT_OVER_BUDGET:g}x the budget)"
    elif proc.returncode != 0:
        result["error"] = first_error_line(err_path.read_text(errors="replace")).replace(f"{ROOT}/", "")
    return result


# --------------------------------------------------------------------------------------------- peer environments


@dataclass(frozen=True)
class PeerEnv:
    """A peer's own virtualenv: what pip installs there, and whether it borrows the bundle's torch."""

    name: str
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()  # installed with --no-deps (their declared deps are in `requirements`)
    bundle_torch: bool = True

    def path(self) -> Path:
        return ROOT / ".venv-peers" / self.name

    def python(self) -> Path:
        return self.path() / "bin" / "python"


PEER_ENVS = {
    # ECLARE 1.0.1 declares torch>=2.5, scipy==1.11.4, radifox-utils==1.0.3: all but torch installed as pinned
    "eclare": PeerEnv(
        "eclare",
        ("nibabel", "numpy", "scipy==1.11.4", "tqdm", "radifox-utils==1.0.3", "matplotlib", "exceptiongroup", "tomli"),
        ("eclare==1.0.1",),
    ),
    # py-SAINT 1.7.0 declares no dependencies; these are what its modules import
    "saint": PeerEnv(
        "saint",
        ("numpy<2", "SimpleITK", "scipy", "imageio", "scikit-image", "tqdm", "matplotlib"),
        ("py-SAINT==1.7.0",),
    ),
    # KevinSR 0.1.20 declares tensorflow-gpu (a stub on PyPI now); its Keras SavedModel needs Keras 2 (TF <= 2.15)
    "soupgan": PeerEnv(
        "soupgan",
        ("tensorflow-cpu==2.15.1", "numpy<2", "scipy", "pydicom", "matplotlib", "pillow", "nibabel"),
        ("KevinSR==0.1.20",),
        bundle_torch=False,
    ),
}


def ensure_peer_env(env: PeerEnv, log_dir: Path) -> Path:
    """Build `env` on first use (stamp file written last); returns its python. Raises RuntimeError with one line."""
    stamp = env.path() / ".installed"
    wanted = json.dumps([env.requirements, env.no_deps, env.bundle_torch])
    if stamp.is_file() and stamp.read_text() == wanted:
        return env.python()
    print(f"building {env.path()} (first use; pip, may take minutes) ...", flush=True)
    shutil.rmtree(env.path(), ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", str(env.path())],
        [str(env.python()), "-m", "pip", "install", "-q", *env.requirements],
    ]
    if env.no_deps:
        steps.append([str(env.python()), "-m", "pip", "install", "-q", "--no-deps", *env.no_deps])
    for i, step in enumerate(steps):
        res = run_measured(step, log_dir / f"venv_step{i}", f"venv {env.name}", timeout_s=3600, report_every_s=60)
        if res["rc"] != 0:
            raise RuntimeError(f"building .venv-peers/{env.name} failed: {res.get('error')}")
    if env.bundle_torch:
        site = next(env.path().glob("lib/python*/site-packages"))
        bundle_site = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "torch").is_dir())
        (site / "zz_bundle_torch.pth").write_text(str(bundle_site) + "\n")  # appended after the peer's own
    stamp.write_text(wanted)
    return env.python()


# --------------------------------------------------------------------------------------------------- methods


@dataclass
class Case:
    """One simulated acquisition: where its files are and how it was made."""

    scan: str
    setting: str
    folder: Path  # holds hr.nii.gz, thick.nii.gz, setting.json
    axis: int
    factor: float
    profile: str
    meta: dict = field(default_factory=dict)

    @property
    def thick(self) -> Path:
        return self.folder / "thick.nii.gz"

    @property
    def hr(self) -> Path:
        return self.folder / "hr.nii.gz"


@dataclass
class Plan:
    """What a method needs to run: a command (or None when it cannot run here) and where its output will be."""

    cmd: Sequence[str] | str | None
    output: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    note: str = ""
    unavailable: str = ""


def interpolate_axis(thick: np.ndarray, axis: int, factor: float, method: str) -> np.ndarray:
    """Upsample (X, Y, Z) along `axis` by `factor` with voxel-centred sampling, as the evaluation's baselines:
    'bspline' = bundle.core.bspline.bspline_resize (scipy's zoom order 3, grid-mirror, grid_mode, to ~1e-6);
    'trilinear' = F.interpolate, align_corners False."""
    size = list(thick.shape)
    size[axis] = int(round(thick.shape[axis] * factor))
    x = torch.from_numpy(np.ascontiguousarray(thick, dtype=np.float32))[None, None]
    if method == "bspline":
        return bspline_resize(x, size)[0, 0].numpy()
    if method == "trilinear":
        return torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    raise ValueError(f"unknown interpolation {method!r}")


def interpolate(method: str, thick: str, output: str, factor: float) -> str:
    """Child-process entry: the thick image's slice axis (its largest spacing) upsampled by `factor`."""
    img = nib.load(thick)
    axis = int(np.argmax(img.header.get_zooms()[:3]))
    up = interpolate_axis(np.asarray(img.dataobj, dtype=np.float32), axis, float(factor), method)
    scale = [1.0, 1.0, 1.0]
    scale[axis] = float(factor)
    a = img.affine.copy()
    a[:3, 3] = a[:3, 3] + a[:3, :3] @ ((1.0 / np.array(scale) - 1.0) / 2.0)  # bundle.core.geometry's SR affine
    a[:3, :3] = a[:3, :3] / np.array(scale)
    save_nifti_atomic(up, a, Path(output))
    return output


def plan_interpolation(method: str) -> Callable[[Case, Path, float], Plan]:
    def plan(case: Case, work: Path, budget_s: float) -> Plan:
        out = work / "output.nii.gz"
        cmd = [sys.executable, str(Path(__file__).resolve()), "interpolate", method, str(case.thick), str(out)]
        return Plan([*cmd, f"{case.factor:g}"], out)

    return plan


def eclare_patches(budget_s: float, output_voxels: int) -> int:
    """Training patches that fit the budget at the measured rate, after the size-dependent overhead (>= 1 batch)."""
    overhead = ECLARE_OVERHEAD_S_PER_MVOXEL * output_voxels / 1e6
    return max(128, int((budget_s - overhead) * ECLARE_PATCHES_PER_S) // 128 * 128)


ECLARE_PROFILE_TYPES = {"gaussian": "gaussian", "box": "boxcar"}  # our slice profiles in radifox's names


def plan_eclare(case: Case, work: Path, budget_s: float, fixed: bool = False) -> Plan:
    """ECLARE's CLI with the patch count that fits the budget and, unless ECLARE_ESTIMATE_PROFILE, the slice profile
    the simulation used (`--relative-slice-thickness` = FWHM in in-plane voxels). Estimating it (ESPRESO) runs 2,000
    iterations at ~1.5-2 s each on a 160^3 head on the 2 shared cores: about an hour, six times a 10-minute budget."""
    python = ensure_peer_env(PEER_ENVS["eclare"], work.parent / "venv_logs_eclare")
    voxels = int(np.prod(nib.load(case.hr).shape[:3]))
    patches = ECLARE_FIXED_PATCHES if fixed else eclare_patches(budget_s, voxels)
    cli = python.parent / "run-eclare"
    cmd = [str(cli), "--in-fpath", str(case.thick), "--out-dir", str(work), "--n-patches", str(patches)]
    days = ECLARE_DEFAULT_PATCHES / ECLARE_PATCHES_PER_S / 86400
    note = f"--n-patches {patches} (its default {ECLARE_DEFAULT_PATCHES:,} would take ~{days:.1f} days here)"
    if fixed:
        note = f"--n-patches {patches}, not matched to the budget"
    if ECLARE_ESTIMATE_PROFILE:
        note += "; slice profile estimated (ESPRESO)"
    else:
        profile = ECLARE_PROFILE_TYPES[case.profile]
        cmd += ["--relative-slice-thickness", f"{case.factor:g}", "--relative-slice-profile-type", profile]
        note += f"; slice profile given ({profile}, FWHM {case.factor:g})"
    return Plan(cmd, work / "thick_eclare.nii.gz", note=note)


SAINT_DRIVER = textwrap.dedent("""
    # py-SAINT's README steps 1-4 on one volume: nii -> .pt, stage 1 (sag and cor views), combine, stage 2 fusion
    import os, sys, shutil, glob
    thick, work, scale = sys.argv[1], sys.argv[2], sys.argv[3]
    hr_dir = os.path.join(work, "in", "TEST", "HR"); os.makedirs(hr_dir, exist_ok=True)
    shutil.copy(thick, os.path.join(hr_dir, "case.nii.gz"))
    from py_SAINT.STAGE1 import nii2pickle, interpolation
    pt_dir = os.path.join(work, "stage1_input", "TEST", "HR")
    nii2pickle.nii2pt(hr_dir, pt_dir)
    for view in ("sag", "cor"):
        interpolation.get_Stage1_result(scale=scale, save=os.path.join(work, "stage1_out"),
            dir_data=os.path.join(work, "stage1_input"), n_colors=3, n_GPUs=1, rgb_range=4000, view=view, gpu="")
    from py_SAINT.STAGE1.process import cor_sag_comb_test
    cor_sag_comb_test.comb_cor_sag(files_dir=pt_dir, input_sag_cor_dir=os.path.join(work, "stage1_out", "results", "raw"),
        out_dir=os.path.join(work, "combined", "TEST"), scale=int(scale))
    from py_SAINT.STAGE2 import fuse
    fuse.get_Stage2_result(save=os.path.join(work, "stage2_out"), dir_data=os.path.join(work, "combined"), n_GPUs=1,
        rgb_range=4000, gpu="")
    print(glob.glob(os.path.join(work, "stage2_out", "**", "*"), recursive=True))
    """)


def plan_saint(case: Case, work: Path, budget_s: float) -> Plan:
    if abs(case.factor - round(case.factor)) > 1e-6:
        return Plan(
            None, work / "output.nii.gz", unavailable=f"SAINT's models take integer scales 2-6, not {case.factor:g}"
        )
    python = ensure_peer_env(PEER_ENVS["saint"], work.parent / "venv_logs_saint")
    driver = work / "saint_driver.py"
    work.mkdir(parents=True, exist_ok=True)
    driver.write_text(SAINT_DRIVER)
    cmd = [str(python), str(driver), str(case.thick), str(work), str(int(round(case.factor)))]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return Plan(cmd, work / "output.nii.gz", env=env, note="README's Python steps; no CPU option in its entry points")


SOUPGAN_DRIVER = textwrap.dedent("""
    # KevinSR's documented call, thin_slices = SOUP_GAN(thick_slices, factor, prep_type), slices on the last axis.
    # prep_type 0 (thick-to-thin) fetches its model from a file host; prep_type 1 (thin-to-thin) ships in the
    # package's sdist. SOUP_GAN looks for both model folders in the working directory and downloads any that is
    # missing, whichever it uses: the packaged one is linked there, and an empty Thick-to-thin folder stands in for
    # the unreachable one (prep_type 1 never loads it).
    import os, sys
    import numpy as np, nibabel as nib
    import KevinSR
    thick, out, factor, prep_type, models = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if not os.path.exists("Thin-to-thin"):
        os.symlink(os.path.join(models, "Thin-to-thin"), "Thin-to-thin")
    if prep_type == 1:
        os.makedirs("Thick-to-thin", exist_ok=True)
    img = nib.load(thick)
    axis = int(np.argmax(img.header.get_zooms()[:3]))
    arr = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), axis, -1)
    lo, hi = float(arr.min()), float(arr.max())
    sr = KevinSR.SOUP_GAN(arr, factor, prep_type)
    sr = sr / 10000.0 * (hi - lo) + lo  # SOUP_GAN rescales its input to [0, 10000]: back to the input's units
    # its zoom (scipy, grid_mode False) puts the first and last output slices on the first and last input slices
    m, n = arr.shape[-1], sr.shape[-1]
    a = img.affine.copy()
    a[:3, axis] = a[:3, axis] * (m - 1) / (n - 1)
    nib.save(nib.Nifti1Image(np.moveaxis(sr, -1, axis).astype(np.float32), a), out)
    """)


def soupgan_models(python: Path) -> Path:
    """The folder holding KevinSR's packaged `Thin-to-thin` Keras model, taken from its sdist on first use.

    The model sits in the sdist but not in what pip installs from it (no package data is declared), so the sdist
    is fetched with `pip download --no-deps --no-binary :all:` and the folder extracted next to the venv.
    """
    import tarfile

    folder = python.parents[1] / "KevinSR-models"
    if (folder / "Thin-to-thin" / "saved_model.pb").is_file():
        return folder
    sdist_dir = python.parents[1] / "sdist"
    cmd = [str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "KevinSR==0.1.20"]
    proc = subprocess.run([*cmd, "-d", str(sdist_dir)], capture_output=True, text=True)
    archives = sorted(sdist_dir.glob("KevinSR-0.1.20*.tar.gz")) + sorted(sdist_dir.glob("kevinsr-0.1.20*.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise RuntimeError(f"pip download KevinSR==0.1.20 failed: {first_error_line(proc.stderr)}")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archives[0]) as tf:
        members = [m for m in tf.getmembers() if "/KevinSR/Thin-to-thin/" in m.name and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name.split("/KevinSR/", 1)[1]
        tf.extractall(tmp, members=members, filter="data")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def plan_soupgan(case: Case, work: Path, budget_s: float) -> Plan:
    python = ensure_peer_env(PEER_ENVS["soupgan"], work.parent / "venv_logs_soupgan")
    models = soupgan_models(python)
    driver = work / "soupgan_driver.py"
    work.mkdir(parents=True, exist_ok=True)
    driver.write_text(SOUPGAN_DRIVER)
    out = work / "output.nii.gz"
    cmd = [str(python), str(driver), str(case.thick), str(out), f"{case.factor:g}", "1", str(models)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    note = "packaged thin-to-thin model (prep_type 1): thick-to-thin's host is unreachable"
    return Plan(cmd, out, cwd=work, env=env, note=note)


def plan_adapt(case: Case, work: Path, budget_s: float) -> Plan:
    out = work / "thick_sr.nii.gz"
    if not ADAPT_CONFIG.is_file():
        return Plan(None, out, unavailable="not available on this checkout (configs/adapt.json missing)")
    cmd = ADAPT_COMMAND.format(
        python=shlex.quote(sys.executable),
        input=shlex.quote(str(case.thick)),
        output_dir=shlex.quote(str(work)),
        minutes=f"{max(budget_s / 60.0 - 1, 1):g}",
        profile=case.profile,  # the simulated acquisition's profile, as ECLARE is given it
    )
    # the prior the workflow's `warm_start: auto` takes: of the profile and the integer factor it upsamples by
    prior = find_prior(ADAPT_PRIORS, find_geometry([1.0, 1.0, case.factor], profile=case.profile))
    note = f"warm start: {prior.relative_to(ROOT)}" if prior else "from scratch (no prior: `make priors`)"
    return Plan(cmd, out, cwd=ROOT, note=note)


PLANNERS: dict[str, Callable[[Case, Path, float], Plan]] = {
    "bspline": plan_interpolation("bspline"),
    "trilinear": plan_interpolation("trilinear"),
    "eclare": plan_eclare,
    "eclare_fixed": lambda case, work, budget_s: plan_eclare(case, work, budget_s, fixed=True),
    "saint": plan_saint,
    "soupgan": plan_soupgan,
    "adapt": plan_adapt,
}


# ----------------------------------------------------------------------------------------------------- steps


def thick(
    scans_dir: str = "data/real_scans_all",
    output_dir: str = "outputs/peers",
    factors: Sequence[float] = FACTORS,
    profiles: Sequence[str] = PROFILES,
    max_spacing_mm: float = 1.3,
    crop_foreground: bool = True,
    max_extent_mm: float | None = 96.0,
) -> list[str]:
    """Write <output_dir>/thick/<scan>/<setting>/{hr,thick}.nii.gz + setting.json for every eligible scan.

    crop_foreground: crop each scan to its head (`foreground_box`), at most `max_extent_mm` per axis, first.
    """
    scans = sorted(Path(scans_dir).glob("imagesTs/*.nii.gz"))
    if not scans:
        raise SystemExit(
            f"--scans_dir {scans_dir}: no imagesTs/*.nii.gz (make it: scripts/make_real_scans.py --scans all)"
        )
    factors = [float(f) for f in (factors if isinstance(factors, (list, tuple)) else [factors])]
    profiles = list(profiles) if isinstance(profiles, (list, tuple)) else str(profiles).split(",")
    for p in profiles:
        parse_setting(setting_name(p, 4))
    written = []
    for path in scans:
        name = path.name[: -len(".nii.gz")]
        img = nib.load(path)
        spacing = [float(z) for z in img.header.get_zooms()[:3]]
        if max(spacing) > max_spacing_mm:
            print(f"{name}: skipped, spacing {spacing} mm is not <= {max_spacing_mm} mm on every axis")
            continue
        arr = np.asarray(img.dataobj, dtype=np.float32)
        box = foreground_box(arr, spacing, max_extent_mm) if crop_foreground else tuple(slice(0, n) for n in arr.shape)
        arr, affine = arr[box], crop_affine(img.affine, [b.start for b in box])
        axis = superior_axis(affine)
        for factor in factors:
            for profile in profiles:
                setting = setting_name(profile, factor)
                start, length = crop_to_factor(arr.shape[axis], factor)
                index = [slice(None)] * 3
                index[axis] = slice(start, start + length)
                hr = arr[tuple(index)]
                offset = [0, 0, 0]
                offset[axis] = start
                hr_affine = crop_affine(affine, offset)
                lr = simulate_thick(hr, axis, factor, profile)
                folder = Path(output_dir) / "thick" / name / setting
                folder.mkdir(parents=True, exist_ok=True)
                save_nifti_atomic(hr, hr_affine, folder / "hr.nii.gz")
                save_nifti_atomic(lr, thick_affine(hr_affine, axis, factor), folder / "thick.nii.gz")
                meta = {
                    "scan": name, "setting": setting, "axis": axis, "factor": factor, "profile": profile,
                    "hr_shape": list(hr.shape), "thick_shape": list(lr.shape),
                    "axis_code": nib.aff2axcodes(hr_affine)[axis], "source": str(path),
                }  # fmt: skip
                write_text_atomic(folder / "setting.json", json.dumps(meta, indent=2))
                print(f"{name} {setting}: HR {list(hr.shape)} -> thick {list(lr.shape)} along axis {axis}")
                written.append(str(folder))
    return written


def load_cases(
    output_dir: str | Path, settings: Sequence[str] | None = None, scans: Sequence[str] | None = None
) -> list[Case]:
    """The simulated acquisitions under <output_dir>/thick, optionally only some settings / scans."""
    cases = []
    for meta_path in sorted(Path(output_dir).glob("thick/*/*/setting.json")):
        meta = json.loads(meta_path.read_text())
        if settings and meta["setting"] not in settings:
            continue
        if scans and meta["scan"] not in scans:
            continue
        case = Case(
            meta["scan"],
            meta["setting"],
            meta_path.parent.resolve(),
            meta["axis"],
            meta["factor"],
            meta["profile"],
            meta,
        )
        cases.append(case)
    return cases


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")


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
    hr_img = nib.load(case.hr)
    hr = np.asarray(hr_img.dataobj, dtype=np.float32)
    on_hr, grid = to_hr_grid(nib.load(plan.output), hr_img)
    save_nifti_atomic(on_hr, hr_img.affine, work / "on_hr.nii.gz")
    return {**result, "status": "ok", "grid": grid, **score(on_hr, hr)}


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

    retry_failed: run pairs whose earlier result is a failure again (finished ones are always skipped).
    eclare_estimate_profile: let ECLARE estimate the slice profile (ESPRESO) instead of giving it the true one.
    eclare_patches: the training patches of method "eclare_fixed" (ECLARE with a set length, over budget or not).
    """
    global ECLARE_ESTIMATE_PROFILE, ECLARE_FIXED_PATCHES
    ECLARE_ESTIMATE_PROFILE = bool(eclare_estimate_profile)
    ECLARE_FIXED_PATCHES = int(eclare_patches)
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


# ---------------------------------------------------------------------------------------------------- report


def collect(output_dir: str | Path) -> list[dict]:
    """Every result.json under <output_dir>/results, ordered scan, setting, method (B-spline first)."""
    rows = [json.loads(p.read_text()) for p in Path(output_dir).glob("results/*/*/*/result.json")]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["scan"], r["setting"], order.get(r["method"], 99), r["method"]))


def markdown_table(rows: list[dict]) -> str:
    """scan x setting x method: PSNR, SSIM (whole / foreground), gain over B-spline, wall time, peak memory."""
    header = [
        "| scan | setting | method | PSNR dB | SSIM | PSNR fg | SSIM fg | gain vs B-spline dB | wall | peak memory | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {(r["scan"], r["setting"]): r for r in rows if r["method"] == BASELINE and r.get("status") == "ok"}
    lines = []
    for r in rows:
        key = (r["scan"], r["setting"])
        if r.get("status") != "ok":
            lines.append(
                f"| {r['scan']} | {r['setting']} | {r['method']} | {r['status']}: {r.get('error', '')} |||||||"
            )
            continue
        gain = f"{r['psnr'] - base[key]['psnr']:+.2f}" if key in base else "n/a"
        wall = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] >= 60 else f"{r['wall_s']:.0f} s"
        memory = f"{r['peak_rss_mb'] / 1024:.2f} GB" if r["peak_rss_mb"] >= 1024 else f"{r['peak_rss_mb']:.0f} MB"
        note = "; ".join(n for n in (r.get("note", ""), "" if r.get("grid") == "same grid" else r.get("grid", "")) if n)
        lines.append(
            f"| {r['scan']} | {r['setting']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_fg']:.2f} "
            f"| {r['ssim_fg']:.4f} | {gain} | {wall} | {memory} | {note} |"
        )
    return "\n".join(header + lines) + "\n"


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
    hr_img = nib.load(case.hr)
    hr = np.asarray(hr_img.dataobj, dtype=np.float32)
    lo, hi = intensity_range(hr)
    codes = nib.aff2axcodes(hr_img.affine)
    volumes = [("HR reference", hr)] + [
        (
            f"{r['method']}\n{r['psnr']:.2f} dB",
            np.asarray(nib.load(Path(output_dir) / "results" / scan / setting / r["method"] / "on_hr.nii.gz").dataobj),
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
    md = markdown_table(rows) + "".join(f"\n![{p.stem}]({p.name})\n" for p in figures if p)
    write_text_atomic(folder / "peers.md", md)
    write_text_atomic(folder / "peers.json", json.dumps(rows, indent=2))
    print(md)
    return str(folder / "peers.md")


def _quiet(step: Callable[..., Any]) -> Callable[..., None]:
    """The step for the command line: its progress is printed as it goes, so fire need not print what it returns."""

    @functools.wraps(step)
    def call(*args: Any, **kwargs: Any) -> None:
        step(*args, **kwargs)

    return call


if __name__ == "__main__":
    fire.Fire(
        {"thick": _quiet(thick), "run": _quiet(run), "report": _quiet(report), "interpolate": _quiet(interpolate)}
    )
