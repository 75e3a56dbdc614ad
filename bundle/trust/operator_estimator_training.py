"""Training of the operator estimator of `consistency_operator: auto` (read by `bundle.trust.operator_estimate`).

`scripts/make_operator_estimator.py` is its command line (`make model` runs it):

    python scripts/make_operator_estimator.py --dataset_dir data/synth_Task01 --steps 6000 \\
        --output outputs/release_training/operator_estimator.pt --tuning_dir data/synth_tune

The training volumes (the `training` section of an MSD-layout `dataset_dir`, normalised as the generator's
training normalises them) are each degraded `draws` times per operator, as the projection models the operator
(FOV-aligned k-space truncation without a filter, a Gaussian slice profile of FWHM = the LR spacing, block average),
with the training's Rician noise and bias field; half of them as magnitudes (a scanner's images have no negative
values, so their sign must not be the cue). Each draw first smooths its HR by a Gaussian of random width (sigma up to
HR_BLUR_MAX voxels): trained on the synthetic volumes' sharp edges alone, the estimator took the k-space LR of the
smoother anatomy of a template or a real scan for block average, sure; it now says it is unsure there instead.
Each step reads `batch` crops of one random size, 4 to 32 voxels per axis, of random LR volumes (crops with anatomy
in them preferred), so the estimator sees scans from a few voxels to whole heads. Seeded: the same call makes the
same weights on the same machine. Written atomically with a record beside it (`<output>.json`: steps, seconds,
sha256, accuracy on the tuning volumes when `tuning_dir` is given). About 5-10 minutes on 2 CPU cores with the
defaults.

The `tuning_dir` volumes only report an accuracy; HR_BLUR_MAX was chosen on tuning volumes (docs/results.md, 0.8.6);
no scan of any evaluation is used.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GaussianSmooth

from bundle.core.atomic import replace_atomically, write_text_atomic
from bundle.core.choices import EVAL_DEFAULT, NOISE_MAX, OPERATORS
from bundle.core.digest import file_sha256
from bundle.core.progress import VolumeProgress
from bundle.data.datalist import iter_hr_volumes
from bundle.data.degradation import apply_degradation, draw_degradation, evaluation_lr, evaluation_operator
from bundle.trust.operator_estimate import MIN_LR_SIZE, OperatorEstimator, estimate_operator

__all__ = ["make_operator_estimator", "hr_volumes", "synthetic_lr", "crop_size", "random_crop", "tuning_accuracy"]

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # the bundle root: configs/ beside this package
OUTPUT = str(ROOT / "outputs" / "release_training" / "operator_estimator.pt")  # `publish` copies it to the release
SYNTH_DIR = str(ROOT / "data" / "synth_Task01")  # `make model`'s training volumes
MAX_CROP = 32
FOREGROUND = 0.05  # mean normalised intensity a training crop should exceed
# the largest sigma (HR voxels) of the Gaussian that smooths each draw's HR first: chosen on tuning volumes (template
# crops, data/synth_tune, the demo's training volumes; docs/results.md, 0.8.6) among 0, 0.75, 1.5 and 2.5
HR_BLUR_MAX = 2.5
# Adam's rate. At 2e-3 (before 0.8.9) the loss sat at chance (ln 3 = 1.10) for 3,000 of 6,000 steps with seed 0 and
# 5,000 with seed 1, learning only once the cosine schedule had lowered it; at 5e-4 it falls from the first few hundred
# steps with both seeds (final 0.89 and 0.92). Measured on the training loss alone (docs/results.md, 0.8.9)
LEARNING_RATE = 5e-4


def hr_volumes(dataset_dir: str, section: str) -> list[tuple[str, torch.Tensor]]:
    """(case, HR (C, X, Y, Z)) of a dataset section, loaded and normalised as the evaluation loads them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / n) for n in ("train.json", "evaluate.json")])
    parser["bundle_root"] = str(ROOT)
    parser["dataset_dir"] = dataset_dir
    parser["datalist#section"] = section
    datalist = parser.get_parsed_content("datalist", instantiate=True)
    transform = parser.get_parsed_content("evaluation#transform", instantiate=True)
    return [(case, hr[0]) for case, hr in iter_hr_volumes(transform, datalist)]


def synthetic_lr(
    volumes: list[tuple[str, torch.Tensor]], scale: int, draws: int, seed: int, hr_blur_max: float = 0.0
) -> list[tuple[torch.Tensor, int]]:
    """(LR (1, X, Y, Z), operator index) for every volume x operator x draw; half of them as magnitudes.

    `hr_blur_max` > 0: each draw first smooths the HR with a Gaussian of sigma ~ U(0, hr_blur_max) HR voxels, so
    the estimator meets HR of every sharpness (anatomy is smoother than the synthetic volumes' edges) and cannot take
    "little detail near the LR's Nyquist" for a blur operator."""
    rng = np.random.default_rng(seed)
    out = []
    progress = VolumeProgress("degrading the training volumes", len(volumes))
    for case, hr in volumes:
        for label, operator in enumerate(OPERATORS):
            for _ in range(draws):
                # each operator as the projection models it (no filter, full k-space, fwhm 1): an LR that another
                # operator made (a filtered k-space LR) must not be taken for one the projection can invert
                params = draw_degradation(rng, operator, NOISE_MAX, 0.15)
                sigma = float(rng.uniform(0.0, hr_blur_max)) if hr_blur_max > 0 else 0.0
                source = GaussianSmooth(sigma)(hr[:1]) if sigma > 0 else hr[:1]
                lr = apply_degradation(source, scale, params)[1].float()
                out.append((lr.abs() if rng.random() < 0.5 else lr, label))
        progress.step(case)
    return out


def crop_size(lr_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int]:
    """One crop size per step: MIN_LR_SIZE..MAX_CROP voxels per axis, at most the smallest volume's axis."""
    x, y, z = (int(rng.integers(min(MIN_LR_SIZE, n), min(MAX_CROP, n) + 1)) for n in lr_shape[-3:])
    return x, y, z


def random_crop(
    lr: torch.Tensor, size: tuple[int, int, int], rng: np.random.Generator, tries: int = 10
) -> torch.Tensor:
    """A crop of `size` (clipped to the volume) at a random place, preferring one with some anatomy in it (mean
    above FOREGROUND, up to `tries` draws): a crop of background says nothing about the operator."""
    crop = lr
    for _ in range(tries):
        index = []
        for n, s in zip(lr.shape[-3:], size, strict=True):
            s = min(s, n)
            start = int(rng.integers(0, n - s + 1))
            index.append(slice(start, start + s))
        crop = lr[(slice(None), *index)]
        if float(crop.mean()) > FOREGROUND:
            break
    return crop


def tuning_accuracy(estimator: OperatorEstimator, tuning_dir: str, scale: int) -> dict:
    """Whole-volume accuracy on the `test` volumes of `tuning_dir` under the evaluation's degradations."""
    rows: list[dict] = []
    for case, hr in hr_volumes(tuning_dir, "test"):
        for method in EVAL_DEFAULT:
            est = estimate_operator(evaluation_lr(hr, scale, method, case), estimator)
            rows.append({"case": case, "degradation": method, "estimate": est.operator, "probability": est.probability})
            logger.info("tuning %s %s: %s", case, method, est.describe())
    # Hamming-filtered k-space is no operator the projection can invert: reported, not counted as right or wrong
    modelled = [r for r in rows if evaluation_operator(r["degradation"]) is not None]
    right = sum(r["estimate"] == evaluation_operator(r["degradation"]) for r in modelled)
    filtered = [r["estimate"] for r in rows if r["degradation"] == "kspace_hamming"]
    return {"volumes": len(modelled), "right": right, "kspace_hamming_taken_for": filtered, "rows": rows}


def fewer_right_on_tuning(record: str | Path, published_record: str | Path) -> str | None:
    """Why an estimator trained with the record `record` (`<estimator>.json`) must not replace the published one of
    `published_record`: it names fewer of the same tuning LR right. Its training can end far from where it ended
    before (seen in 0.8.8: at chance, ln 3 = 1.10, for half its steps, then final loss 1.00 and 5 of 12 right where
    the published one had 0.92 and 7). None when it is no worse, or when either record has no tuning result."""
    try:
        new, old = (json.loads(Path(p).read_text())["tuning"] for p in (record, published_record))
        if new["volumes"] != old["volumes"] or int(new["right"]) >= int(old["right"]):
            return None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return f"it names {new['right']} of {new['volumes']} tuning LR right, the published one {old['right']}"


def make_operator_estimator(
    dataset_dir: str | list[str] | tuple[str, ...] = SYNTH_DIR,
    output: str = OUTPUT,
    steps: int = 6000,
    batch: int = 16,
    draws: int = 3,
    scale: int = 4,
    features: int = 16,
    learning_rate: float = LEARNING_RATE,
    seed: int = 0,
    tuning_dir: str | None = None,
    threads: int = 0,
    hr_blur_max: float = HR_BLUR_MAX,
) -> str:
    """Train the estimator and write it to `output` (with `<output>.json`); returns the path written.

    `dataset_dir`: one MSD-layout folder or a list of them (their `training` sections are pooled)."""
    for name, value in (("steps", steps), ("batch", batch), ("draws", draws), ("scale", scale)):
        if not (isinstance(value, int) and value >= 1):
            raise SystemExit(f"error: --{name}: expected an integer >= 1, got {value!r}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise SystemExit(f"error: --learning_rate: expected a number > 0, got {learning_rate!r}")
    if not (isinstance(hr_blur_max, (int, float)) and hr_blur_max >= 0):
        raise SystemExit(f"error: --hr_blur_max: expected a number >= 0 (HR voxels), got {hr_blur_max!r}")
    dataset_dirs = [dataset_dir] if isinstance(dataset_dir, str) else list(dataset_dir)
    for folder in dataset_dirs:
        if not Path(folder).is_dir():
            raise SystemExit(f"error: --dataset_dir: {folder} is not a folder (make it with `make model`)")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.time()
    volumes = [v for folder in dataset_dirs for v in hr_volumes(folder, "training")]
    if not volumes:
        raise SystemExit(f"error: --dataset_dir: {dataset_dirs} hold no training volumes")
    examples = synthetic_lr(volumes, scale, draws, seed, hr_blur_max)
    rng = np.random.default_rng(seed + 1)
    smallest = tuple(min(int(lr.shape[1 + a]) for lr, _ in examples) for a in range(3))
    estimator = OperatorEstimator(features)
    optimiser = torch.optim.Adam(estimator.parameters(), learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    progress = VolumeProgress("training the operator estimator", -(-steps // 100), unit="100 steps")
    running = []
    for step in range(1, steps + 1):
        picks = [examples[int(i)] for i in rng.integers(len(examples), size=batch)]
        size = crop_size(smallest, rng)  # one size per step, so the crops stack into one batch
        crops = torch.stack([random_crop(lr, size, rng) for lr, _ in picks])
        loss = F.cross_entropy(estimator(crops), torch.tensor([label for _, label in picks]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(float(loss.detach()))
        if step % 100 == 0 or step == steps:
            progress.step(f"step {step}, loss {np.mean(running[-100:]):.3f}")
    estimator.eval()
    record: dict = {
        "steps": steps,
        "batch": batch,
        "draws": draws,
        "scale": scale,
        "features": features,
        "learning_rate": learning_rate,
        "seed": seed,
        "hr_blur_max": hr_blur_max,
        "training_volumes": [case for case, _ in volumes],
        "dataset_dirs": dataset_dirs,
        "training_seconds": round(time.time() - start, 1),
        "final_loss": float(np.mean(running[-100:])),
    }
    if tuning_dir:
        record["tuning"] = tuning_accuracy(estimator, tuning_dir, scale)
    payload = {"state_dict": estimator.state_dict(), "features": features, "operators": list(OPERATORS)}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    path = replace_atomically(output, lambda tmp: torch.save(payload, tmp))
    record["sha256"] = file_sha256(path)
    write_text_atomic(Path(output).with_suffix(".json"), json.dumps(record, indent=4))
    logger.info("operator estimator written to %s (%.0f s)", path, record["training_seconds"])
    return str(path)
