"""A miniature MSD Task01-style dataset from the real MNI152 T1 template shipped in the nilearn wheel.

    python scripts/make_demo_data.py --output_dir data/demo_Task01 --num_train 6 --num_test 2   # the command line

Each case is the template (and its grey/white-matter maps) under a random smooth deformation, a synthetic
lesion, a bias field, a contrast change and Rician noise, written as a 4-D NIfTI with Task01's four channels
(FLAIR, T1w, t1gd, T2w) plus a lesion label. Deterministic for a given seed.

`--contrast random` is domain randomisation in the manner of SynthSR (Iglesias et al., Sci. Adv. 2023) instead:
the template's tissue probability maps, deformed and perturbed, become a hard label map (background, CSF, grey,
white matter) on the template's 1 mm grid, so tissue boundaries are sharp as in an acquired scan rather than the
smooth edges of a 152-subject average; each channel gives every tissue a random intensity and texture, then a
random acquisition blur, a random voxel size (`spacing_range`, 1-2 mm by default), a bias field, a gamma change
and Rician noise. One random contrast per case (`random_channels`), each case its own anatomy; no real scan is
involved. The folder is written under a
temporary name and renamed at the end, so an interrupted run leaves nothing half-written.

Template licence: see docs/DATA_LICENSES.md (ICBM 2009a, Copyright (C) 1993-2009 Louis Collins,
McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from bundle.core.errors import DatasetError

CONTRAST_MODES = ("template", "random")
MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
# relative tissue intensities per channel: (WM, GM, CSF, edema, core, enhancing rim)
CONTRASTS = {
    "FLAIR": (0.55, 0.75, 0.08, 1.00, 0.85, 0.90),
    "T1w": (1.00, 0.62, 0.22, 0.55, 0.40, 0.60),
    "t1gd": (1.00, 0.62, 0.22, 0.55, 0.40, 1.25),
    "T2w": (0.45, 0.65, 1.00, 0.95, 0.90, 0.80),
}


def template_path(name: str = "t1") -> Path:
    """Path of an MNI152 2009a map ('t1', 'gm' or 'wm') inside the installed nilearn package."""
    import nilearn

    path = Path(nilearn.__file__).parent / "datasets" / "data" / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MNI152 template not found; install nilearn (pip install nilearn)")
    return path


def load_template(shape: tuple[int, int, int] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """T1, GM, WM and brain mask cropped to the brain and resampled to `shape` (None: kept at the template's 1 mm);
    returns maps and affine."""
    t1_img, gm_img, wm_img = (cast(nib.Nifti1Image, nib.load(template_path(n))) for n in ("t1", "gm", "wm"))
    t1 = t1_img.get_fdata(dtype=np.float32) / 255.0
    gm = gm_img.get_fdata(dtype=np.float32) / 255.0  # tissue probabilities stored as uint8
    wm = wm_img.get_fdata(dtype=np.float32) / 255.0
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.05, iterations=2)).astype(np.float32)
    nz = np.argwhere(mask > 0)
    lo, hi = np.maximum(nz.min(0) - 4, 0), np.minimum(nz.max(0) + 5, t1.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    size = tuple(int(b - a) for a, b in zip(lo, hi, strict=True)) if shape is None else shape
    zoom = [s / (b - a) for s, a, b in zip(size, lo, hi, strict=True)]
    maps = {
        name: np.clip(ndimage.zoom(vol[crop], zoom, order=1), 0, None).astype(np.float32)
        for name, vol in (("t1", t1), ("gm", gm), ("wm", wm), ("mask", mask))
    }
    spacing = np.array([(b - a) / s for s, a, b in zip(size, lo, hi, strict=True)])
    affine = np.array(t1_img.affine)
    affine[:3, :3] = affine[:3, :3] * (spacing / np.abs(np.diag(t1_img.affine)[:3]))
    affine[:3, 3] = t1_img.affine[:3, :3] @ lo + t1_img.affine[:3, 3]
    return maps, affine


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], grid: int, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0.0, amplitude, size=(grid, grid, grid))
    return ndimage.zoom(coarse, [s / grid for s in shape], order=3)[: shape[0], : shape[1], : shape[2]]


def deform(maps: dict[str, np.ndarray], rng: np.random.Generator, amplitude: float = 2.5) -> dict[str, np.ndarray]:
    """Random smooth elastic deformation plus a small global scaling, applied to every map alike."""
    shape = maps["t1"].shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [(s - 1) / 2 for s in shape]
    scale = rng.uniform(0.92, 1.08)
    coords = [c + (g - c) * scale + smooth_field(rng, shape, 4, amplitude) for g, c in zip(grid, centre, strict=True)]
    return {k: ndimage.map_coordinates(v, coords, order=1, mode="constant") for k, v in maps.items()}


def lesion(shape: tuple[int, ...], wm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Label map: edema (1) around a core (2) with an enhancing rim (3), placed in white matter."""
    candidates = np.argwhere(wm > 0.7)
    centre = candidates[rng.integers(len(candidates))]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    radii = rng.uniform(0.05, 0.1) * np.array(shape) * rng.uniform(0.8, 1.2, size=3)
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(-1))
    label = np.zeros(shape, np.uint8)
    label[r < 1.8] = 1
    label[r < 1.0] = 3
    label[r < 0.7] = 2
    return label


def tissue_probabilities(m: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(brain, CSF, grey matter, white matter) probabilities (x, y, z) in [0, 1]; CSF is the brain's remainder."""
    brain = np.clip(m["mask"], 0, 1)
    wm, gm = np.clip(m["wm"], 0, 1), np.clip(m["gm"], 0, 1)
    return brain, np.clip(brain - wm - gm, 0, 1), gm, wm


def rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of `img` plus complex Gaussian noise of `sigma` per channel: Rician noise, as MR magnitude has."""
    return np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)


def synthesise_case(maps: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 4-channel case (x, y, z, 4) and its label (x, y, z)."""
    m = deform(maps, rng)
    shape = m["t1"].shape
    label = lesion(shape, m["wm"], rng)
    brain, csf, gm, wm = tissue_probabilities(m)
    tumour = [(label == k).astype(np.float32) for k in (1, 2, 3)]
    tumour = [ndimage.gaussian_filter(t, 0.7) for t in tumour]
    healthy = np.clip(1 - sum(tumour), 0, 1)
    texture = m["t1"] / max(float(np.percentile(m["t1"][brain > 0.5], 95)), 1e-3)  # real T1 detail
    bias = np.exp(smooth_field(rng, shape, 3, 0.12))
    channels = []
    for name in MODALITIES.values():
        c_wm, c_gm, c_csf, c_ed, c_core, c_rim = CONTRASTS[name]
        tissue = c_wm * wm + c_gm * gm + c_csf * csf
        if name in ("T1w", "t1gd"):
            tissue = 0.5 * tissue + 0.5 * texture * brain
        img = healthy * tissue + (c_ed * tumour[0] + c_core * tumour[1] + c_rim * tumour[2]) * brain
        img = np.clip(img * bias, 0, None) ** rng.uniform(0.85, 1.15)
        sigma = rng.uniform(0.01, 0.025)
        img = rician(img, sigma, rng)
        channels.append((img * 1000.0).astype(np.float32))
    return np.stack(channels, -1), label


TISSUES = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}


def tissue_labels(m: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Hard label map (x, y, z) in TISSUES' codes: the most probable tissue after a smooth random perturbation of
    the probabilities (about 6 mm wavelength), which moves and folds the boundaries from case to case."""
    brain, csf, gm, wm = tissue_probabilities(m)
    grid = max(4, max(brain.shape) // 6)
    probs = [1 - brain, csf, gm, wm]
    probs = [p + smooth_field(rng, brain.shape, grid, 0.12) for p in probs]
    return np.argmax(np.stack(probs), axis=0).astype(np.uint8)


def random_contrast(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(x, y, z) float image on the labels' grid: a random mean and texture per tissue (any order of brightness:
    T1-, T2-, FLAIR-like and contrasts no sequence makes), then a random acquisition blur."""
    means = np.concatenate([[rng.uniform(0.0, 0.15)], rng.uniform(0.1, 1.0, size=len(TISSUES) - 1)])
    spread = rng.uniform(0.0, 0.06, size=len(TISSUES))
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, labels.shape).astype(np.float32), rng.uniform(0.5, 1.5))
    texture /= max(float(texture.std()), 1e-6)
    img = means[labels] + spread[labels] * texture
    return ndimage.gaussian_filter(img, rng.uniform(0.2, 0.6)).astype(np.float32)


def resample_to_spacing(img: np.ndarray, spacing: float) -> np.ndarray:
    """(x, y, z) on the 1 mm grid -> the grid of `spacing` mm, anti-aliased as an acquisition at that voxel size
    would be (Gaussian of sigma 0.4 voxel of the new grid, then linear resampling)."""
    if spacing <= 1.0 + 1e-6:
        return img
    smooth = ndimage.gaussian_filter(img, 0.4 * spacing)
    return ndimage.zoom(smooth, 1.0 / spacing, order=1, grid_mode=True, mode="grid-constant")


def synthesise_random_case(
    maps: dict[str, np.ndarray], rng: np.random.Generator, spacing_range: tuple[float, float], channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case of `--contrast random`: (x, y, z, channels) image of random contrasts, its (x, y, z) tissue labels on
    the same grid, and its voxel size per axis in mm (one size drawn from `spacing_range`, made exact per axis)."""
    m = deform(maps, rng, amplitude=4.0)
    labels = tissue_labels(m, rng)
    drawn = float(rng.uniform(*spacing_range))
    contrasts = []
    for _ in range(channels):
        img = resample_to_spacing(random_contrast(labels, rng), drawn)
        img = np.clip(img * np.exp(smooth_field(rng, img.shape, 3, 0.15)), 0, None) ** np.exp(rng.normal(0, 0.25))
        img = rician(img, rng.uniform(0.005, 0.03), rng)
        contrasts.append((img * 1000.0).astype(np.float32))
    shape = contrasts[0].shape
    spacing = np.array(labels.shape, dtype=np.float64) / np.array(shape)
    if drawn > 1.0 + 1e-6:
        labels = ndimage.zoom(labels, 1.0 / drawn, order=0, grid_mode=True, mode="grid-constant")
    return np.stack(contrasts, -1), labels, spacing


def spaced_affine(affine: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The 1 mm grid's affine for voxels of `spacing` (per axis, mm) covering the same field of view: voxel i's
    centre lies at 1 mm index i * spacing + (spacing - 1) / 2."""
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * spacing
    out[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((spacing - 1.0) / 2.0)
    return out


def publish_dataset(tmp: Path, out: Path, meta: dict) -> None:
    """Write dataset.json into the finished temporary folder, then rename it into place (nothing half-made)."""
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=4))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _check_same_request(out: Path, contrast: str, num_train: int, num_test: int, seed: int) -> None:
    """A dataset already at `out` is reused only if it is the one asked for: a folder made with other counts (an
    earlier version's `make model` made data/synth_acquired with 32 volumes, now 64) would train on other data."""
    meta = json.loads((out / "dataset.json").read_text())
    asked = {"contrast": contrast, "numTraining": num_train, "numTest": num_test, "seed": seed}
    held = {k: meta[k] for k in asked if k in meta}  # datasets written before 0.9.0 do not record their seed
    differ = [f"{k} {held[k]!r} (asked {asked[k]!r})" for k in held if held[k] != asked[k]]
    if differ:
        raise DatasetError(f"{out} holds another dataset ({', '.join(differ)}); use --overwrite to rebuild it")


def make_demo_data(
    output_dir: str = "data/demo_Task01",
    num_train: int = 6,
    num_test: int = 2,
    shape: tuple[int, int, int] = (96, 96, 64),
    seed: int = 0,
    overwrite: bool = False,
    contrast: str = "template",
    spacing_range: tuple[float, float] = (1.0, 2.0),
    random_channels: int = 1,
) -> str:
    """Write the dataset; returns its folder. Skips the work when a complete dataset is already there.

    contrast: "template" (the demo's four fixed contrasts on a `shape` grid) or "random" (SynthSR-style domain
    randomisation at a random voxel size in `spacing_range` mm per case, `random_channels` contrasts each; `shape`
    is not used: the grid is the template's 1 mm one coarsened to the drawn voxel size).
    """
    out = Path(output_dir)
    sizes = tuple(int(s) for s in shape)
    if len(sizes) != 3 or min(sizes) < 16:
        raise ValueError(f"shape must be three sizes of at least 16, got {sizes}")
    shape = (sizes[0], sizes[1], sizes[2])
    if contrast not in CONTRAST_MODES:
        raise ValueError(f"contrast must be one of {CONTRAST_MODES}, got {contrast!r}")
    spacing_range = (float(spacing_range[0]), float(spacing_range[1]))
    random_channels = int(random_channels)
    if random_channels < 1:
        raise ValueError(f"random_channels must be >= 1, got {random_channels}")
    if not 1.0 <= spacing_range[0] <= spacing_range[1]:
        raise ValueError(f"spacing_range must be (low, high) with 1 <= low <= high mm, got {spacing_range}")
    if (out / "dataset.json").is_file() and not overwrite:
        _check_same_request(out, contrast, num_train, num_test, seed)
        print(f"demo dataset already present: {out} (use --overwrite to rebuild)")
        return str(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp / sub).mkdir(parents=True)
    maps, template_affine = load_template(None if contrast == "random" else shape)
    training, test = [], []
    for case in range(num_train + num_test):
        rng = np.random.default_rng([seed, case])
        if contrast == "random":
            image, label, spacing = synthesise_random_case(maps, rng, spacing_range, random_channels)
            affine = spaced_affine(template_affine, spacing)
        else:
            (image, label), affine = synthesise_case(maps, rng), template_affine
        name = f"BRATS_{case + 1:03d}.nii.gz"
        if case < num_train:
            nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / name)
            nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
        print(f"case {case + 1}/{num_train + num_test}: {name}", file=sys.stderr)
    meta = {
        "name": "BRATS-demo",
        "description": "Demo data in the MSD Task01 BrainTumour layout, synthesised from the MNI152 2009a T1 template",
        "reference": "ICBM 2009a Nonlinear Symmetric template, McConnell Brain Imaging Centre, MNI, McGill University",
        "licence": "see docs/DATA_LICENSES.md (ICBM 2009a template notice)",
        "release": "1.0",
        "tensorImageSize": "4D",
        "modality": (
            MODALITIES if contrast == "template" else {str(c): "random contrast" for c in range(random_channels)}
        ),
        "labels": LABELS if contrast == "template" else TISSUES,
        "contrast": contrast,
        "numTraining": num_train,
        "numTest": num_test,
        "seed": seed,
        "training": training,
        "test": test,
    }
    publish_dataset(tmp, out, meta)
    size = f"shape {shape}" if contrast == "template" else f"random voxel sizes {spacing_range} mm"
    print(f"wrote {num_train} training and {num_test} test cases ({contrast} contrast, {size}) to {out}")
    return str(out)
