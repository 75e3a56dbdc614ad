"""The bundle's models the app serves, one infer task each: the fidelity model (models/model.pt, the default) and,
when the bundle holds one, the perceptual model (models/perceptual/model.pt, exported with
`scripts/export_bundle.py --perceptual_ckpt`).

Both are the same network, trained differently:
- fidelity, task `super_resolution`: trained with MSE + (1 - SSIM) only, no adversarial or perceptual term. For
  measurement and clinical reading; projected to be consistent with the LR.
- perceptual, task `super_resolution_perceptual`: the fidelity model fine-tuned with + 0.001 adversarial + 0.2
  random-slice VGG19 (ImageNet features, 10 slices per plane). Sharper texture, for research and visual review;
  it may invent plausible texture, which the consistency projection and the uncertainty map bound but do not
  remove.

Each task reads its model, calibration.json and operator_estimator.pt from its own folder (the bundle's `ckpt_dir`),
as `--ckpt_dir <bundle>/models/perceptual` does on the command line. `--conf models perceptual` (or `fidelity`, or
`fidelity,perceptual`) serves only the models named; by default every model the bundle holds.

No monailabel import here, so the choice is testable without MONAI Label installed.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Model(NamedTuple):
    task: str  # the infer task's name in MONAI Label (`/infer/<task>`)
    folder: str  # under the bundle's models/: its ckpt_dir
    description: str  # what /info/ says of it


MODELS = {
    "fidelity": Model(
        "super_resolution",
        "",
        "3D super-resolution, fidelity model (default): RRDB generator trained with MSE + (1 - SSIM), no adversarial "
        "or perceptual term; for measurement and reading; output grid `scale` times finer than the input",
    ),
    "perceptual": Model(
        "super_resolution_perceptual",
        "perceptual",
        "3D super-resolution, perceptual model: fine-tuned with + 0.001 adversarial + 0.2 random-slice VGG19; sharper "
        "texture for research and visual review; may invent plausible texture, never use it alone for diagnosis",
    ),
}


def ckpt_dir(bundle_path: str, name: str) -> str:
    """The folder of model `name` in the bundle: its model.pt, calibration.json and operator_estimator.pt."""
    folder = MODELS[name].folder
    return os.path.join(bundle_path, "models", folder) if folder else os.path.join(bundle_path, "models")


def model_file(name: str) -> str:
    """Model `name`'s weights relative to the bundle's models/ (what MONAI Label's BundleConstants.model_pytorch names)."""
    return os.path.join(MODELS[name].folder, "model.pt") if MODELS[name].folder else "model.pt"


def served_models(bundle_path: str, conf: dict[str, str]) -> list[str]:
    """The models to serve: `--conf models a,b`, else every model the bundle holds; one ValueError line for a name
    that is not a model or a model the bundle does not hold."""
    held = [n for n in MODELS if os.path.isfile(os.path.join(ckpt_dir(bundle_path, n), "model.pt"))]
    requested = [n.strip() for n in str(conf.get("models") or "").split(",") if n.strip()]
    if not requested:
        return held
    unknown = [n for n in requested if n not in MODELS]
    if unknown:
        raise ValueError(f"--conf models {','.join(requested)}: {unknown[0]!r} is not one of {', '.join(MODELS)}")
    missing = [n for n in requested if n not in held]
    if missing:
        path = os.path.join(ckpt_dir(bundle_path, missing[0]), "model.pt")
        raise ValueError(
            f"{path} not found: the bundle holds no {missing[0]} model (export it with "
            "scripts/export_bundle.py --perceptual_ckpt, or leave it out of --conf models)"
        )
    return list(dict.fromkeys(requested))


def config_overrides(bundle_path: str, name: str) -> dict[str, str]:
    """The bundle config ids that make inference read model `name`'s folder (its ckpt_path, calibration_path and
    operator_estimator_path all follow ckpt_dir); none for the fidelity model, the config's own default."""
    return {"ckpt_dir": ckpt_dir(bundle_path, name)} if MODELS[name].folder else {}
