"""The named choices and shared defaults every stage and the config checks use, each defined once.

Stage modules import their vocabulary from here, so that `bundle.config_check` can check every config id without
importing the stages themselves (inference must not pull in the trainer, the losses or torchvision).
"""

from __future__ import annotations

__all__ = [
    "SLICE_PROFILES",
    "METHODS",
    "OPERATORS",
    "LR_METHODS",
    "NOISE_MAX",
    "EVAL_METHODS",
    "EVAL_DEFAULT",
    "NOISY_LR_SIGMA",
    "CONSISTENCY_MODES",
    "OUTPUT_FORMATS",
    "ADVERSARIAL_KINDS",
    "VGG19_LAYERS",
    "AMP_DTYPES",
    "RESIDUAL_BASES",
    "BASELINES",
    "METHOD_ORDER",
    "SSIM_WINDOW",
    "FOREGROUND_THRESHOLD",
    "IMAGE_KEY",
    "LR_KEY",
    "PRED_KEY",
]

# LR simulation: fixed degradations, the operators the trust layer can apply and invert, and the config id
# `lr_method` (a fixed degradation, or "random" for robust training)
METHODS = ("kspace", "area", "gaussian", "trilinear")
OPERATORS = ("kspace", "area", "gaussian")
LR_METHODS = (*METHODS, "random")
# largest Rician noise sigma (a fraction of the robust maximum) of a random degradation: the default of the
# degradation transforms and the value of the config id `noise_max` in configs/train.json (tests/data checks they
# agree, so a transform built without the config draws what a configured run draws)
NOISE_MAX = 0.01
# the evaluation's and calibration's degradations (the config id `eval_lr_methods`): every fixed one, "kspace_hamming"
# (FOV-aligned k-space truncation with a Hamming filter, as scanners reconstruct), and "noisy",
# the Gaussian slice profile followed by Rician noise of NOISY_LR_SIGMA (relative to the LR's robust max; the most
# the training draws), seeded by the case name so that every run degrades a scan identically
EVAL_METHODS = (*METHODS, "kspace_hamming", "noisy")
NOISY_LR_SIGMA = NOISE_MAX
# the Python default of `eval_lr_methods` (train.json's value): every degradation the trust layer has an operator
# for, k-space with the Hamming filter scanners apply (which none models), and the noisy slice profile
EVAL_DEFAULT = ("kspace", "kspace_hamming", "area", "gaussian", "noisy")

CONSISTENCY_MODES = ("off", "map", "project")  # inference post-processing: no map, map |D(SR) - LR|, projection
OUTPUT_FORMATS = ("nifti", "dicom")
ADVERSARIAL_KINDS = ("bce", "lsgan", "ragan")
AMP_DTYPES = ("bfloat16", "float16")  # the config id `amp_dtype`, used by every autocast of a run
# the config id `residual_base`: what the generator adds its output to (no learned weights in any of them)
RESIDUAL_BASES = ("none", "trilinear", "bspline")
# per-scan adaptation: the slice profile a thick-slice scan was acquired with -> the degradation operator modelling it
SLICE_PROFILES = {"gaussian": "gaussian", "box": "area"}
# the evaluation's interpolation baselines, cubic B-spline first: the one a user would pick instead of the model,
# so every gain is headlined against it; then the order of methods in every table, figure and report
BASELINES = ("bspline", "trilinear")
METHOD_ORDER = (*BASELINES, "sr", "sr_project")


def _vgg19_layers() -> dict[str, int]:
    """torchvision's vgg19().features index of each convolution (the layer *before* its ReLU, as in ESRGAN)."""
    layers, index = {}, 0
    for block, n in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, n + 1):
            layers[f"conv{block}_{conv}"] = index
            index += 2  # conv, relu
        index += 1  # max pool
    return layers


VGG19_LAYERS: dict[str, int] = _vgg19_layers()

SSIM_WINDOW = 11  # the SSIM window (voxels per axis) of the training loss and the validation metric
# Intensity (on the [0, 1] training scale) above which a voxel is foreground: evaluation masks, calibration,
# the trust summary and the foreground-biased patch crops; the config id `foreground_threshold`
FOREGROUND_THRESHOLD = 0.05

# batch dictionary keys: the HR image (and the input at inference), its LR, the network's prediction
IMAGE_KEY = "image"
LR_KEY = "lr"
PRED_KEY = "pred"
