"""The exported bundle's model card (docs/README.md) and large_files.yml."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bundle.core.errors import DatasetError
from bundle.evaluation.protocol import markdown_table

__all__ = ["FIDELITY_ONLY", "large_files_yaml", "model_card", "perceptual_card", "uncertainty_note"]

ROOT = Path(__file__).resolve().parents[2]
PERCEPTUAL_DIR = "models/perceptual"  # where an exported bundle holds the perceptual model, as `install` puts it


def shown(path: Path) -> str:
    """A path as the user would write it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _network_summary(config: dict) -> str:
    """network_def's arguments with top-level `@id` references replaced by their values."""
    args = []
    for k, v in config.get("network_def", {}).items():
        if k.startswith("_"):
            continue
        if isinstance(v, str) and v.startswith("@") and v[1:] in config:
            v = config[v[1:]]
        args.append(f"{k}={json.dumps(v)}")
    return ", ".join(args)


def model_card(readme: str, config: dict, overlays: Sequence[Path], hashes: dict[str, str], results: Path | None):
    """The repository's model card plus what this export is: version, overlays, network, hashes, results."""
    names = ", ".join(shown(p) for p in overlays) or "none"
    lines = [
        readme.rstrip(),
        "",
        "## This exported model",
        f"- Overlays folded into configs/inference.json and configs/train.json: {names}.",
        f"- Generator: `{config.get('network_def', {}).get('_target_', '?')}({_network_summary(config)})`.",
    ]
    lines += [f"- `{path}` sha256 `{digest}`." for path, digest in hashes.items()]
    if results is not None:
        if not results.is_file():
            raise DatasetError(f"{results}: results file not found")
        if results.suffix == ".json":
            table = markdown_table(json.loads(results.read_text()))
        else:
            table = results.read_text()
        lines += ["", "## Measured results of this model", "", table.rstrip()]
    return "\n".join(lines) + "\n"


FIDELITY_ONLY = (
    "\n## One model: fidelity\n\nThis bundle holds the fidelity model only (`models/model.pt`): it was exported "
    "without a perceptual model (`scripts/export_bundle.py --perceptual_ckpt`), so `models/perceptual` is absent and "
    "MONAI Label serves `super_resolution` alone.\n"
)


def perceptual_card(hashes: dict[str, str], has_calibration: bool) -> str:
    """The model card's section on the perceptual model this export holds beside the fidelity one, and how to
    choose it."""
    held = [f"- `{path}` sha256 `{digest}`." for path, digest in hashes.items() if path.startswith(PERCEPTUAL_DIR)]
    calibration = (
        "its own uncertainty calibration (`models/perceptual/calibration.json`)"
        if has_calibration
        else "no uncertainty calibration of its own yet (calibrate it with `--ckpt_dir <bundle>/models/perceptual` "
        "before asking for uncertainty maps)"
    )
    lines = [
        "",
        "## Two models: fidelity (default) and perceptual",
        "",
        "This bundle holds two generators of the same network, trained differently:",
        "- **Fidelity** (`models/model.pt`, the default of every command and of MONAI Label's `super_resolution`): "
        "trained with MSE + (1 - SSIM) only, no adversarial or perceptual term. Use it for measurement and clinical "
        "reading; projected to be consistent with the LR input.",
        "- **Perceptual** (`models/perceptual/model.pt`): the fidelity model fine-tuned with + 0.001 adversarial + "
        "0.2 random-slice VGG19 (ImageNet features, 10 slices per plane per step). Sharper texture, preferred by "
        "readers and by LPIPS: for research and visual review.",
        "",
        "Choose the perceptual model with `--ckpt_dir <bundle>/models/perceptual` (its model, calibration and "
        "operator estimator are read from that folder), e.g. "
        "`python -m monai.bundle run inference --config_file <bundle>/configs/inference.json "
        "--bundle_root <bundle> --ckpt_dir <bundle>/models/perceptual --input_dir ...`; MONAI Label serves it as "
        f"`super_resolution_perceptual`. It has {calibration}.",
        "",
        "**Risk of GAN detail.** The perceptual model may invent plausible texture that is not in the patient. The "
        "consistency projection (the output, degraded again, gives back the input) and the uncertainty map bound "
        "it, but they do not remove it: what the LR input cannot see stays invented. Never use the perceptual "
        "output alone for diagnosis; read it against the fidelity output and the LR.",
        *held,
    ]
    return "\n".join(lines) + "\n"


def uncertainty_note(passes: int) -> str:
    """The model card's line on what the uncertainty maps cost, for the exported default of 0 passes."""
    return (
        "\n## Uncertainty maps cost extra network passes\n\n"
        "`configs/inference.json` runs one network pass per volume (`uncertainty: 0`): the SR, its consistency map "
        "and the trust summary. `--uncertainty N` adds the calibrated uncertainty map from N test-time "
        f"augmentations, N network passes in all (the calibration beside the model is for N = {passes or 8}): "
        "N times the time of one pass. MONAI Label runs them only when a request sets `uncertainty`.\n"
    )


def large_files_yaml(hashes: dict[str, str]) -> str:
    """large_files.yml for model-zoo CI: each file with its sha256; the url is the publisher's to fill in."""
    lines = [
        "# Files the model zoo hosts outside the repository. The publisher uploads each file and fills in its",
        "# url; until then model-zoo CI's `-m min` (which runs without the files) fails on the empty url, and",
        "# `-m full` with the files present checks them against hash_val.",
        "large_files:",
    ]
    for path, digest in hashes.items():
        lines += [
            f"  - path: {json.dumps(path)}",
            '    url: ""',
            f"    hash_val: {json.dumps(digest)}",
            '    hash_type: "sha256"',
        ]
    return "\n".join(lines) + "\n"
