"""Check the config ids a user sets before anything is built: one line naming the id and what it expects.

`check_overrides` comes first: MONAI evaluates a config value that starts with "$" (Python), resolves one that
starts with "@" (a reference) or "%" (a macro) and instantiates a mapping with "_target_", command-line values
included. A command-line value of that kind that is not the config's own value at that id stops the run in one
line naming the id, before any value is evaluated (docs/SECURITY.md).

MONAI's bundle runner passes command-line values through Fire, so `--max_epochs abc` arrives as the string
"abc", `--amp False` as a bool, `--amp false` as the string "false" and `--lr_patch_size "[1,1,1]"` as a list.
A wrong value would otherwise fail deep inside a network, a transform or the first iteration, wrapped by the
runner in a long "Failed to instantiate" traceback. `check_ids` runs first in a config's `initialize` list
(the runner evaluates `initialize` before `run`, so before any dataset, network or engine exists) and stops
with a `ConfigError`: `error: config id max_epochs: expected an integer >= 1, got 'abc'`, exit status 1.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import torch

from bundle.adaptation.fit import FitSettings
from bundle.core.choices import (
    ADVERSARIAL_KINDS,
    AMP_DTYPES,
    CONSISTENCY_MODES,
    EVAL_METHODS,
    LR_METHODS,
    OPERATORS,
    OUTPUT_FORMATS,
    RESIDUAL_BASES,
    SLICE_PROFILES,
    SSIM_WINDOW,
    VGG19_LAYERS,
)
from bundle.core.errors import CheckpointError, ConfigError
from bundle.core.geometry import ensure_scale3
from bundle.trust.ood import SHIFTS
from bundle.trust.tta import tta_augmentations
from bundle.trust.units import NONNEGATIVE_MODES

__all__ = ["CHECKS", "SSIM_WINDOW", "check_ids", "check_overrides", "check_override_ids", "min_hr_patch", "unknown_id"]

Check = tuple[str, Callable[[Any], bool]]  # (what the id expects, in words; test of a value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(minimum: int) -> Check:
    return f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum


def _number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True) -> Check:
    """A finite number in the interval; e.g. _number(0, 1) is [0, 1)."""
    if high == math.inf:
        what = f"a number {'>' if low_open else '>='} {low}"
    else:
        what = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def test(v: Any) -> bool:
        above = _is_number(v) and (v > low if low_open else v >= low)
        return above and (v < high if high_open else v <= high)

    return what, test


def _one_of(choices: Any) -> Check:
    return "one of " + ", ".join(repr(c) for c in choices), lambda v: isinstance(v, str) and v in choices


def _triple(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(n) and n >= 1 for n in v)


def _slices(v: Any) -> bool:
    return v == "all" or (_is_int(v) and v >= 0)


def _schedule(v: Any) -> bool:
    return isinstance(v, Mapping) and all(
        str(k).isdigit() and int(k) >= 1 and _slices(s) for k, s in v.items()  # JSON keys are strings
    )


def _path(v: Any) -> bool:
    return isinstance(v, (str, os.PathLike)) and str(v) != ""


def _weights_file(*names: Any) -> Check:
    named = ", ".join(repr(n) for n in names)
    return f"{named} or an existing weights file", lambda v: v in names or (_path(v) and os.path.isfile(v))


def _device(v: Any) -> bool:
    try:
        return isinstance(v, (str, torch.device)) and torch.device(v) is not None
    except RuntimeError:
        return False


ADAPT_FIT_FIELDS = tuple(FitSettings.__dataclass_fields__)

BOOL: Check = ("true or false (True or False on the command line)", lambda v: isinstance(v, bool))
TRIPLE: Check = ("a list of 3 integers >= 1", _triple)
PATH: Check = ("a file or folder path", _path)
SIZE: Check = ("an integer >= 1 or a list of 3 integers >= 1", lambda v: (_is_int(v) and v >= 1) or _triple(v))

CHECKS: dict[str, Check] = {
    # where things are
    "bundle_root": PATH,
    "dataset_dir": PATH,
    "stage1_dataset_dir": PATH,
    "input_dir": PATH,
    "dicom_series": (
        "null (every series), a SeriesNumber (an integer >= 0) or a SeriesInstanceUID",
        lambda v: v is None or (_is_int(v) and v >= 0) or (isinstance(v, (str, float)) and str(v).strip() != ""),
    ),
    "output_dir": PATH,
    "ckpt_dir": PATH,
    "ckpt_path": PATH,
    "calibration_path": PATH,
    "metadata_file": PATH,
    "device": ("a torch device such as 'cpu' or 'cuda:0'", _device),
    # data and degradation
    "seed": _int(0),
    "modality_channel": ("'all' or an integer >= 0", lambda v: v == "all" or (_is_int(v) and v >= 0)),
    "scale": SIZE,
    "lr_method": _one_of(LR_METHODS),
    "noise_max": _number(0),
    "bias_max": _number(0),
    "intensity_percentiles": (
        "[lower, upper] percentiles with 0 <= lower < upper <= 100",
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)) and 0 <= v[0] < v[1] <= 100,
    ),
    "min_input_size": SIZE,
    "lr_patch_size": TRIPLE,
    "patches_per_volume": _int(1),
    "foreground_prob": _number(0, 1, high_open=False),
    "num_val": _int(1),
    "num_workers": _int(0),
    "cache_rate": _number(0, 1, high_open=False),
    # networks and losses
    "num_blocks": _int(1),
    "features": _int(1),
    "growth": _int(1),
    "residual_base": _one_of(RESIDUAL_BASES),
    "d_features": _int(1),
    "d_stages": _int(1),
    "slices_per_plane": ("'all' or an integer >= 0 (0 = no perceptual term)", _slices),
    "slice_schedule": ("a mapping {first epoch >= 1: 'all' or an integer >= 0}", _schedule),
    "perceptual_layer": _one_of(tuple(VGG19_LAYERS)),
    "vgg_weights": _weights_file("imagenet", "torchvision", "random"),
    "perceptual_weight": _number(0),
    "ssim_weight": _number(0),
    "adversarial_weight": _number(0),
    "adversarial_loss": _one_of(ADVERSARIAL_KINDS),
    "adversarial_start_iteration": _int(0),
    # training
    "max_epochs": _int(1),
    "learning_rate": _number(0, low_open=True),
    "d_learning_rate": _number(0, low_open=True),
    "lr_decay_start_epoch": ("an integer >= 0, or null (no decay)", lambda v: v is None or (_is_int(v) and v >= 0)),
    "lr_decay_final_fraction": _number(0, 1, low_open=True, high_open=False),
    "val_interval": _int(1),
    "ckpt_interval": _int(1),
    "log_interval": _int(0),
    "resume": BOOL,
    "resume_also_accepts": (
        "a mapping {run record key: a value an earlier stage's checkpoint may hold}",
        lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    ),
    "amp": BOOL,
    "amp_dtype": _one_of(AMP_DTYPES),
    "channels_last": BOOL,
    # inference, evaluation and calibration
    "sliding_window": BOOL,
    "roi_size": TRIPLE,
    "overlap": _number(0, 1),
    "consistency": _one_of(CONSISTENCY_MODES),
    "consistency_operator": _one_of(("auto", *OPERATORS)),
    "operator_estimator_path": ("a file path (used when consistency_operator is auto)", _path),
    "uncertainty": ("an integer >= 0 (0 = off, else test-time augmentation passes)", lambda v: _is_int(v) and v >= 0),
    "output_format": _one_of(OUTPUT_FORMATS),
    "nonnegative": _one_of(NONNEGATIVE_MODES),
    "eval_lr_methods": (
        "a non-empty list of " + ", ".join(repr(m) for m in EVAL_METHODS),
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(m in EVAL_METHODS for m in v),
    ),
    "coverage_target": _number(0, 1, low_open=True),
    "ood_shifts": (
        "a list of " + ", ".join(repr(m) for m in SHIFTS),
        lambda v: isinstance(v, (list, tuple)) and all(m in SHIFTS for m in v),
    ),
    "lpips_weights": (
        "'auto' or 'alex' (AlexNet), 'vgg' (VGG16), null (no LPIPS) or an existing AlexNet weights file",
        lambda v: v in ("auto", "alex", "vgg", None) or (_path(v) and os.path.isfile(v)),
    ),
    "lpips_slices_per_plane": ("null or an integer >= 1", lambda v: v is None or (_is_int(v) and v >= 1)),
    "num_figures": _int(0),
    "foreground_threshold": _number(0, 1),
    # per-scan adaptation (configs/adapt.json)
    "input_image": ("a scan file or a folder of DICOM series (dicom_series picks one)", _path),
    "max_minutes": _number(0, low_open=True),
    "slice_profile": _one_of(("auto", *SLICE_PROFILES)),
    "slice_thickness": ("null or a thickness in mm > 0", lambda v: v is None or (_is_number(v) and v > 0)),
    "warm_start": (
        "'auto', null or an existing checkpoint file",
        lambda v: v is None or v == "auto" or (_path(v) and os.path.isfile(v)),
    ),
    "adapt_priors_dir": ("a folder path (the priors `make priors` writes)", _path),
    "held_out_fraction": _number(0, 1, low_open=True),
    "predict_rotations": _int(0),
    "overwrite": BOOL,
    "adapt_network": (
        "a mapping of RRDBNet3D settings (features, growth, num_blocks, residual_base)",
        lambda v: isinstance(v, Mapping) and set(v) <= {"features", "growth", "num_blocks", "residual_base"},
    ),
    "adapt_fit": (
        "a mapping of per-scan training settings (" + ", ".join(ADAPT_FIT_FIELDS) + ")",
        lambda v: isinstance(v, Mapping) and set(v) <= set(ADAPT_FIT_FIELDS),
    ),
    "adapt_vgg_weights": _weights_file("imagenet", "torchvision", "random"),
}


def min_hr_patch(d_stages: int | None = None, perceptual_layer: str | None = None) -> dict[str, int]:
    """Smallest HR patch side per axis that each training loss accepts, keyed by what imposes it.

    The SSIM window of `ContentLoss`; 2**d_stages for `Discriminator3D` (one halving per stage); and
    2**(block - 1) for the VGG19 layer conv<block>_<n> of the perceptual loss (a 2x2 pool before each block).
    """
    need = {"SSIM window": SSIM_WINDOW}
    if d_stages is not None:
        need["discriminator 2**d_stages"] = 2**d_stages
    if perceptual_layer is not None:
        need[f"VGG layer {perceptual_layer}"] = 2 ** (int(perceptual_layer[4:].split("_")[0]) - 1)
    return need


def _fail(name: str, problem: str) -> ConfigError:
    return ConfigError(f"config id {name}: {problem}")


def _check_patch(values: Mapping[str, Any]) -> None:
    """lr_patch_size x scale must give HR patches that every training loss can take."""
    scale, lr_patch = ensure_scale3(values["scale"]), values["lr_patch_size"]
    perceptual = values.get("slices_per_plane", 0) != 0 and "perceptual_layer" in values
    need = min_hr_patch(values.get("d_stages"), values["perceptual_layer"] if perceptual else None)
    hr = [n * s for n, s in zip(lr_patch, scale, strict=True)]
    side = max(need.values())
    if min(hr) < side:
        least = [max(n, math.ceil(side / s)) for n, s in zip(lr_patch, scale, strict=True)]
        reasons = ", ".join(f"{k}: {v}" for k, v in need.items())
        raise _fail(
            "lr_patch_size",
            f"{list(lr_patch)} x scale {list(scale)} gives HR patches {hr}, but every axis needs at least {side} "
            f"voxels ({reasons}); use lr_patch_size {least} or larger",
        )


def _check_estimator(values: Mapping[str, Any]) -> None:
    """The operator estimator that consistency_operator "auto" will use loads (weights only), checked at start: a
    damaged file is one line now, not a failure after the network pass. A missing one is allowed (a warning)."""
    path = values.get("operator_estimator_path")
    if values.get("consistency_operator") != "auto" or values.get("consistency") == "off" or not path:
        return
    if not os.path.isfile(path):
        return
    from bundle.trust.operator_estimate import load_operator_estimator

    try:
        load_operator_estimator(path, "cpu")
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{' '.join(str(err).split())}; replace it (`make model` makes one), remove it, or set "
            "--consistency_operator to kspace, area or gaussian"
        ) from None


def _check_across(values: Mapping[str, Any]) -> None:
    """Checks that involve more than one id, each made when all its ids are given."""
    _check_estimator(values)
    if "lr_patch_size" in values and "scale" in values:
        _check_patch(values)
    slices = values.get("slices_per_plane")
    if slices not in (None, 0) and values.get("perceptual_weight", 1) <= 0:
        raise _fail(
            "perceptual_weight",
            f"is {values['perceptual_weight']} while slices_per_plane is {slices!r}; "
            "set slices_per_plane 0 to turn the perceptual term off",
        )
    switched = [k for k, s in values.get("slice_schedule", {}).items() if (s == 0) != (slices == 0)]
    if slices is not None and switched:
        raise _fail(
            "slice_schedule",
            f"epoch {switched[0]} turns the perceptual term {'on' if slices == 0 else 'off'}, which only "
            "slices_per_plane may do (a schedule changes the number of slices, not 0 <-> non-zero)",
        )
    if values.get("modality_channel") == "all" and "input_dir" not in values:  # a training-side config
        raise _fail(
            "modality_channel",
            "'all' is for inference only (each channel super-resolved by the single-channel model); training, "
            "calibration and evaluation need one channel index",
        )
    start = values.get("lr_decay_start_epoch")
    if start is not None and "max_epochs" in values and start >= values["max_epochs"]:
        raise _fail(
            "lr_decay_start_epoch",
            f"is {start}, not before max_epochs {values['max_epochs']}: the decay would never start (null: no decay)",
        )
    passes = values.get("uncertainty")
    if "coverage_target" in values and passes == 0:
        raise _fail("uncertainty", "calibration needs test-time augmentation passes: expected an integer >= 1, got 0")
    if passes and "scale" in values:
        try:
            tta_augmentations(values["scale"], passes)
        except ValueError as err:
            raise _fail("uncertainty", str(err)) from None


def check_ids(**values: Any) -> None:
    """Check config ids (passed as `id=value`) against `CHECKS`; raise `ConfigError` naming the first bad one.

    Used first in a config's `initialize` list:
    `{"_target_": "bundle.config_check.check_ids", "max_epochs": "@max_epochs", ...}`. An id without an entry in
    `CHECKS` is a mistake in the config, not in the user's values, and raises TypeError.
    """
    unknown = sorted(set(values) - set(CHECKS))
    if unknown:
        raise TypeError(f"check_ids: no check for config id(s) {unknown}; add them to bundle.config_check.CHECKS")
    check_override_ids()
    for name, value in values.items():
        what, test = CHECKS[name]
        if not test(value):
            raise _fail(name, f"expected {what}, got {value!r}")
    _check_across(values)


def _code_in(value: Any, inside: bool = False) -> str | None:
    """Why MONAI would evaluate, resolve or instantiate a command-line value (a few words), or None."""
    if isinstance(value, str):
        what = f"holds {value!r}, which" if inside else "it"
        if value.startswith(("$", "@")):
            return f"{what} starts with {value[0]!r}: {'Python to run' if value[0] == '$' else 'a reference'}"
        return f"{what} holds '%': a macro" if "%" in value else None
    if isinstance(value, Mapping):
        if "_target_" in value:
            return f"it names a '_target_' ({value['_target_']!r}) to call"
        return next((found for v in value.values() if (found := _code_in(v, True)) is not None), None)
    if isinstance(value, (list, tuple)):
        return next((found for v in value if (found := _code_in(v, True)) is not None), None)
    return None


def _command_line() -> tuple[Any, dict[str, Any]] | None:
    """(config_file, override pairs) of the `python -m monai.bundle run ...` (or `create_workflow(...)`) that is
    building this config: read from MONAI's `create_workflow` on the call stack; None when there is none (a
    ConfigParser used directly, from Python, has no command line)."""
    from monai.bundle import scripts
    from monai.bundle.workflows import ConfigWorkflow

    workflow_args = set(inspect.signature(ConfigWorkflow.__init__).parameters) | {"args_file", "workflow_name"}
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is scripts.create_workflow.__code__:
            pairs = frame.f_locals.get("_args")
            if not isinstance(pairs, Mapping):  # MONAI changed create_workflow: say so rather than pass silently
                warnings.warn(
                    "config_check: the command-line overrides could not be read from monai.bundle's create_workflow "
                    "(MONAI changed it?); command-line values are not checked (docs/SECURITY.md)",
                    stacklevel=2,
                )
                return None
            overrides = {k: v for k, v in pairs.items() if k not in workflow_args}
            return frame.f_locals.get("config_file"), overrides
        frame = frame.f_back
    return None


def check_overrides() -> None:
    """Refuse command-line override values that MONAI would run or resolve: a string starting with "$" or "@" or
    holding "%", or a mapping with "_target_" (anywhere inside the value), or an id ending in "_target_", unless
    the value is the config's own at that id. One `ConfigError` line naming the id.

    Used as the `_requires_` of the configs' `config_check` entry, so it runs before any id that `check_ids` reads
    is evaluated. An override of `initialize` or `bundle_root` is evaluated before it (they come first): see
    docs/SECURITY.md.
    """
    found = _command_line()
    if found is None:
        return
    config_file, overrides = found
    own = _own_config(config_file)
    for key, value in overrides.items():
        name = str(key).lstrip("+")
        why = "it names a callable to call" if name.split("#")[-1] == "_target_" else _code_in(value)
        if why is None or (name in own and own[name] == value):
            continue
        raise _fail(
            name,
            f"the command-line value {value!r} would be evaluated by MONAI ({why}); refused: give a plain value, "
            "or put the expression in a config file you trust (docs/SECURITY.md)",
        )


def _own_config(config_file: Any) -> Any:
    """The config files of the command line, parsed without the command line's values."""
    from monai.bundle import ConfigParser

    own = ConfigParser()
    if config_file is not None:
        own.read_config(config_file)
    return own


def unknown_id(own: Any, name: str) -> str | None:
    """None when `name` (an id, `a#b` for nested ones) is in the parsed config `own`; else the problem in words,
    naming the closest id (difflib) among those at the same level."""
    name = name.lstrip("+")
    if name in own or name.startswith("_meta_"):
        return None
    parts = name.split("#")
    depth = len(parts) - 1
    while depth > 0 and "#".join(parts[:depth]) not in own:
        depth -= 1
    parent = "#".join(parts[:depth])
    level = own[parent] if depth else own.get()
    if isinstance(level, Mapping):
        keys = [str(k) for k in level]
    else:
        keys = [str(i) for i in range(len(level))] if isinstance(level, list) else []
    known = ["#".join([*parts[:depth], k]) for k in keys if not k.startswith("_")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "see docs/usage.md for the ids"
    where = f"{parent} has no {parts[depth]!r}" if depth else "no such id in the config files"
    return f"unknown id: {where}; {hint} (a misspelt id would otherwise be ignored)"


def check_override_ids() -> None:
    """Refuse a command-line id that the config files do not define (`--uncertianty 8` would otherwise add an id
    nothing reads and run without uncertainty): one `ConfigError` line naming the closest id.

    Called by `check_ids`, so by every workflow whose config checks its ids (training,
    calibrating, evaluating, inference, adapting). Nothing is checked outside `python -m monai.bundle run` or
    `create_workflow` (a config built from Python has no command line).
    """
    found = _command_line()
    if found is None:
        return
    config_file, overrides = found
    if not overrides:
        return
    own = _own_config(config_file)
    for key in overrides:
        problem = unknown_id(own, str(key))
        if problem is not None:
            raise _fail(str(key).lstrip("+"), problem)
