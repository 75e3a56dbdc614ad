"""The peers, each run as a user would: ECLARE through its command line, SAINT and SOUP-GAN through small driver
scripts of their documented Python steps, each in its own virtualenv (`bundle.evaluation.peers.envs`), on CPU; and
the command line of the bundle's own per-scan workflow (`plan_adapting`: a string, so this stage imports nothing of
the adaptation stage; scripts/benchmark_peers.py wires it in with the prior it will start from)."""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
from pathlib import Path

import numpy as np

from bundle.evaluation.peers.cases import Case, Plan
from bundle.evaluation.peers.envs import PEER_ENVS, ensure_peer_env, soupgan_models
from bundle.evaluation.peers.measure import ROOT
from bundle.evaluation.peers.simulation import load_nifti

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


def eclare_patches(budget_s: float, output_voxels: int) -> int:
    """Training patches that fit the budget at the measured rate, after the size-dependent overhead (>= 1 batch)."""
    overhead = ECLARE_OVERHEAD_S_PER_MVOXEL * output_voxels / 1e6
    return max(128, int((budget_s - overhead) * ECLARE_PATCHES_PER_S) // 128 * 128)


ECLARE_PROFILE_TYPES = {"gaussian": "gaussian", "box": "boxcar"}  # our slice profiles in radifox's names


def plan_eclare(case: Case, work: Path, budget_s: float, fixed: bool = False) -> Plan:
    """ECLARE's CLI with the patch count that fits the budget and, unless ECLARE_ESTIMATE_PROFILE, the slice profile
    the simulation used (`--relative-slice-thickness` = its FWHM / box width in in-plane voxels, which is the factor
    unless the setting has a gap; the slice spacing ECLARE reads from the header). Estimating it (ESPRESO) runs 2,000
    iterations at ~1.5-2 s each on a 160^3 head on the 2 shared cores: about an hour, six times a 10-minute budget."""
    python = ensure_peer_env(PEER_ENVS["eclare"], work.parent / "venv_logs_eclare")
    voxels = int(np.prod(load_nifti(case.hr).shape[:3]))
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
        cmd += ["--relative-slice-thickness", f"{case.profile_width:g}", "--relative-slice-profile-type", profile]
        note += f"; slice profile given ({profile}, FWHM {case.profile_width:g})"
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


# the bundle's per-scan self-supervised workflow; {python} {input} {output_dir} {minutes} are filled in, and for
# "adapt_told" ADAPT_TOLD's {profile} {thickness_mm} appended
ADAPT_COMMAND = (
    "{python} -m monai.bundle run adapting --config_file \"['configs/inference.json','configs/adapt.json']\" "
    "--input_image {input} --output_dir {output_dir} --max_minutes {minutes}"
)
ADAPT_TOLD = " --slice_profile {profile} --slice_thickness {thickness_mm}"


def plan_adapting(case: Case, work: Path, budget_s: float, config: Path, told: bool, note: str = "") -> Plan:
    """The adapting workflow on `case` within the budget (a minute kept for start-up and writing), as a user runs it.

    told False ("adapt"): nothing about the slice profile, so the workflow estimates it from the scan itself.
    told True ("adapt_told"): the simulation's profile and thickness (thin voxels x the HR's slice-axis spacing,
    mm), as ECLARE is given them. `config` (configs/adapt.json) missing: unavailable on this checkout.
    Output `thick_sr.nii.gz` (<input name>_sr) with `thick_uncertainty.nii.gz` and `thick_sr.json` beside it.
    """
    out = work / "thick_sr.nii.gz"
    if not config.is_file():
        return Plan(None, out, unavailable=f"not available on this checkout (configs/{config.name} missing)")
    cmd = ADAPT_COMMAND.format(
        python=shlex.quote(sys.executable),
        input=shlex.quote(str(case.thick)),
        output_dir=shlex.quote(str(work)),
        minutes=f"{max(budget_s / 60.0 - 1, 1):g}",
    )
    if told:
        cmd += ADAPT_TOLD.format(profile=case.profile, thickness_mm=f"{round(case.thickness_mm, 4):g}")
    return Plan(cmd, out, cwd=ROOT, note=note)
