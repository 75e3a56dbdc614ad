"""Export a trained generator as a standalone bundle folder that model-zoo CI and MONAI Label accept.

    python scripts/export_bundle.py --ckpt models/model.pt --overlays "['configs/demo.json']" \
        --name mri_sr_demo --version 0.1.1 --results outputs/eval/summary.json \
        --perceptual_ckpt models/perceptual/model.pt                   # optional: the perceptual model beside it

writes dist/<name>/ with:
    configs/inference.json   inference.json + the overlays, so that it alone builds the trained network
    configs/train.json       train.json + the overlays (the ids MONAI's check_properties needs added if missing)
    configs/metadata.json    version set or bumped, a changelog entry
    configs/logging.conf, LICENSE, bundle/ (the code the configs reach by `_target_`), docs/ (model card + results)
    models/model.pt          the generator's state dict
    models/model.ts          TorchScript, made by `python -m monai.bundle ckpt_export` from the files above
    models/perceptual/       with --perceptual_ckpt: the perceptual model (same network, trained with the adversarial
                             and random-slice VGG19 terms) with its calibration and operator estimator; inference
                             takes it with `--ckpt_dir <bundle>/models/perceptual`, MONAI Label serves it as a
                             second task
    large_files.yml          sha256 of the model files (and the operator estimator); the url is left to the publisher
    monailabel/              the MONAI Label app (docs/monailabel), serving the folder it sits in

Why a merge: model-zoo CI and MONAI Label read configs/inference.json alone, without overlays, so a model
trained with an overlay (e.g. the demo's small generator) only loads once the overlay is folded in. An overlay
id is applied to a base config only where the base has that id (or its parent, for a nested id): training-only
ids of an overlay do not leak into inference.json. `bundle_root` stays relative (".").

The folder is built in a temporary sibling and renamed into place at the end; nothing half-written is left.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser
from monai.bundle.properties import InferProperties, TrainProperties
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import MERGE_KEY, merge_kv
from monai.utils import BundlePropertyConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.core.atomic import replace_dir_atomically  # noqa: E402
from bundle.core.digest import file_sha256  # noqa: E402
from bundle.core.errors import CheckpointError, ConfigError, DatasetError, OutputError  # noqa: E402
from bundle.evaluation.protocol import markdown_table  # noqa: E402
from bundle.inference.generator import read_generator_state  # noqa: E402

__all__ = ["add_property_ids", "export", "load_weights", "merge_config", "perceptual_card", "shape_mismatch"]

BASE_CONFIGS = ("inference.json", "train.json", "metadata.json")
APP_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "bin", "logs", "model", ".venv*")
logger = logging.getLogger(__name__)
CODE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
PERCEPTUAL_DIR = "models/perceptual"  # where an exported bundle holds the perceptual model, as `install` puts it


def merge_config(base: Path, overlays: Sequence[Path]) -> tuple[dict, list[str]]:
    """The raw config of `base` with each overlay applied in order, through monai.bundle.ConfigParser.

    Returns (config, skipped): `skipped` lists "overlay.json:id" for overlay ids that `base` does not have
    (neither the id nor, for a nested id such as "train#sampler", its parent), and any `bundle_root` or
    `dataset_dir` (where a bundle and its data live is the user's, not the training run's).
    """
    parser = ConfigParser()
    parser.read_config(str(base))
    skipped = []
    for overlay in overlays:
        for key, value in ConfigParser.load_config_file(str(overlay)).items():
            target = key[len(MERGE_KEY) :] if key.startswith(MERGE_KEY) else key
            parent, _ = ReferenceResolver.split_id(target, last=True)
            known = target in parser or (parent != "" and parent in parser)
            if target in ("bundle_root", "dataset_dir") or not known:  # where the bundle and its data live
                skipped.append(f"{overlay.name}:{key}")
                continue
            merge_kv(parser, key, copy.deepcopy(value))
    parser.resolve_macro_and_relative_ids()
    config = parser.get()
    config.pop(ConfigParser.meta_key, None)
    return config, skipped


def _flatten_list_sum(parser: ConfigParser, id_: str) -> bool:
    """Turn `"$@a + @b"` (lists of raw component dicts) at `id_` into the literal concatenated list.

    MONAI's check_properties iterates `train#handlers` looking for a ValidationHandler dict, and fails with a
    TypeError on an expression. The literal list builds the same handlers.
    """
    value = parser.get(id_)
    if not isinstance(value, str) or not value.startswith("$"):
        return False
    parts = [p.strip() for p in value[1:].split("+")]
    if not all(re.fullmatch(r"@[\w#:]+", p) for p in parts):
        return False
    lists = [parser.get(p[1:]) for p in parts]
    if not all(isinstance(x, list) and all(isinstance(h, dict) for h in x) for x in lists):
        return False
    parser[id_] = [copy.deepcopy(h) for x in lists for h in x]
    return True


def add_property_ids(config: dict, workflow_type: str) -> list[str]:
    """Add, only where missing, the ids `create_workflow(workflow_type=...).check_properties()` needs.

    - inference: `dataset_dir` (required); it takes `input_dir`'s value and `input_dir` becomes "@dataset_dir",
      so overriding either id keeps working.
    - train: `train#inferer` (required; a SimpleInferer, which is what the trainer uses by default), and
      `train#handlers` as a literal list (MONAI looks for the ValidationHandler in it).
    - both: an optional property written inline where MONAI expects a reference (e.g. the evaluator's
      `key_val_metric` dict) moves to its property id (`validate#key_metric`) and is referenced from there.
    Returns one line per change (empty when the configs already satisfy MONAI).
    """
    parser = ConfigParser(config=config)  # edits `config` in place
    changes: list[str] = []
    if workflow_type == "inference":
        props = InferProperties
        if "dataset_dir" not in parser:
            if "input_dir" in parser:
                items = list(config.items())
                config.clear()
                for k, v in items:
                    if k == "input_dir":
                        config["dataset_dir"] = v
                        v = "@dataset_dir"
                    config[k] = v
                changes.append("inference: added dataset_dir (input_dir's value); input_dir = @dataset_dir")
            else:
                config["dataset_dir"] = "$@bundle_root + '/data'"
                changes.append("inference: added dataset_dir = <bundle_root>/data")
    elif workflow_type == "train":
        props = TrainProperties
        if isinstance(config.get("train"), dict) and "train#inferer" not in parser:
            config["train"]["inferer"] = {"_target_": "SimpleInferer"}
            changes.append("train: added train#inferer = SimpleInferer")
        if _flatten_list_sum(parser, "train#handlers"):
            changes.append("train: train#handlers written as a literal list")
    else:
        raise ConfigError(f"workflow_type must be 'inference' or 'train', got {workflow_type!r}")
    for name, prop in props.items():
        if name in ("evaluator", "val_interval"):  # MONAI checks these through the ValidationHandler's args
            continue
        pid, ref = prop.get(BundlePropertyConfig.ID), prop.get(BundlePropertyConfig.REF_ID)
        if ref is None or pid in parser or ref not in parser or isinstance(parser[ref], str):
            continue
        pid_hash = ReferenceResolver.normalize_id(pid).replace(ReferenceResolver.sep, "#")
        ref_hash = ReferenceResolver.normalize_id(ref).replace(ReferenceResolver.sep, "#")
        parser.set(parser[ref], pid_hash)
        parser[ref_hash] = f"@{pid_hash}"
        changes.append(f"{workflow_type}: {ref_hash} moved to {pid_hash} and referenced as @{pid_hash}")
    return changes


def load_weights(path: Path, flag: str = "--ckpt") -> dict[str, torch.Tensor]:
    """The generator's state dict from `path`, as inference reads it (`bundle.inference.generator.read_generator_state`:
    plain, or nested under "model" or "network"; non-finite weights refused). Its advice names this script's
    flag (`--ckpt`, or `--perceptual_ckpt`)."""
    try:
        return read_generator_state(path)
    except CheckpointError as err:
        raise CheckpointError(err.message.replace("--ckpt_path", flag)) from None


def build_network(config: dict, bundle_root: Path, device: str = "cpu") -> torch.nn.Module:
    """Instantiate `network_def` of a raw config with random weights.

    device="meta" gives the parameter names and shapes without allocating or initialising them (a tenth of
    the time for the full generator), which is all the checkpoint checks need.
    """
    parser = ConfigParser(config=copy.deepcopy(config))
    parser["bundle_root"] = str(bundle_root)
    if "network_def" not in parser:
        raise ConfigError("network_def: not in the config")
    with torch.device(device):
        return parser.get_parsed_content("network_def")


def shape_mismatch(state: dict[str, torch.Tensor], network: torch.nn.Module) -> str | None:
    """None when `state` has exactly the network's keys and shapes, else a short summary of the difference."""
    want = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    other = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if not (missing or extra or other):
        return None
    parts = [f"{len(missing)} key(s) missing", f"{len(extra)} unexpected", f"{len(other)} with another shape"]
    if other:
        parts.append(f"e.g. {other[0]}: checkpoint {got[other[0]]}, network {want[other[0]]}")
    elif missing:
        parts.append(f"e.g. missing {missing[0]}")
    else:
        parts.append(f"e.g. unexpected {extra[0]}")
    return ", ".join(parts)


def _fitting_overlays(state: dict[str, torch.Tensor], configs_dir: Path) -> list[Path] | None:
    """The overlay (none, or one file of `configs_dir`) under which inference.json builds `state`'s network."""
    base = configs_dir / "inference.json"
    candidates = [[]] + [[p] for p in sorted(configs_dir.glob("*.json")) if p.name not in BASE_CONFIGS]
    for overlays in candidates:
        try:
            network = build_network(merge_config(base, overlays)[0], configs_dir.parent, device="meta")
        except Exception:  # an overlay that does not build is simply not the one
            continue
        if shape_mismatch(state, network) is None:
            return overlays
    return None


def _version(current: str, version: str | None) -> str:
    if version is None:
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", current)
        if not m:
            raise ConfigError(f"configs/metadata.json: version {current!r} is not X.Y.Z; pass --version")
        return f"{m[1]}.{m[2]}.{int(m[3]) + 1}"
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(version)):
        raise ConfigError(f"--version must be X.Y.Z, got {version!r}")
    return str(version)


def export_metadata(meta: dict, version: str | None, changelog: str | None, default_entry: str) -> dict:
    """metadata.json with `version` set (or the patch number bumped) and its changelog entry first."""
    meta = copy.deepcopy(meta)
    new = _version(str(meta.get("version", "")), version)
    old = dict(meta.get("changelog", {}))
    entry = changelog or old.get(new) or default_entry
    old.pop(new, None)
    meta["version"] = new
    meta["changelog"] = {new: entry, **old}
    return meta


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


SYS_PATH_EXPRESSION = (
    "$None if os.path.abspath(@bundle_root) in sys.path else sys.path.insert(0, os.path.abspath(@bundle_root))"
)


def describe_network(description: str, config: dict) -> str:
    """metadata.json's description with the generator's size as exported (num_blocks, features, growth), where
    the repository's text gives the full-size default."""

    def value(key: str) -> Any:
        v = config.get("network_def", {}).get(key)
        return config.get(v[1:], v) if isinstance(v, str) and v.startswith("@") else v

    size = f"{value('num_blocks')} residual-in-residual dense blocks, {value('features')} features, growth {value('growth')}"
    return re.sub(r"\d+ residual-in-residual dense blocks(, \d+ features, growth \d+)?", size, description, count=1)


def uncertainty_note(passes: int) -> str:
    """The model card's line on what the uncertainty maps cost, for the exported default of 0 passes."""
    return (
        "\n## Uncertainty maps cost extra network passes\n\n"
        "`configs/inference.json` runs one network pass per volume (`uncertainty: 0`): the SR, its consistency map "
        "and the trust summary. `--uncertainty N` adds the calibrated uncertainty map from N test-time "
        f"augmentations, N network passes in all (the calibration beside the model is for N = {passes or 8}): "
        "N times the time of one pass. MONAI Label runs them only when a request sets `uncertainty`.\n"
    )


def _shown(path: Path) -> str:
    """A path as the user would write it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def model_card(readme: str, config: dict, overlays: Sequence[Path], hashes: dict[str, str], results: Path | None):
    """The repository's model card plus what this export is: version, overlays, network, hashes, results."""
    names = ", ".join(_shown(p) for p in overlays) or "none"
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


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def run_ckpt_export(bundle_dir: Path, timeout: int = 600) -> None:
    """models/model.ts through MONAI's bundle CLI, from the exported inference.json and model.pt only.

    PYTHONPATH is the exported folder alone, so the copied `bundle/` package is the code that is checked.
    """
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(bundle_dir / "models" / "model.ts"),
        "--ckpt_file", str(bundle_dir / "models" / "model.pt"),
        "--meta_file", str(bundle_dir / "configs" / "metadata.json"),
        "--config_file", str(bundle_dir / "configs" / "inference.json"),
        "--bundle_root", str(bundle_dir),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(bundle_dir))
    proc = subprocess.run(cmd, cwd=bundle_dir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not (bundle_dir / "models" / "model.ts").is_file():
        lines = [s for s in proc.stderr.strip().splitlines() if s.strip()] or ["no output"]
        raise OutputError(f"configs/inference.json: ckpt_export to models/model.ts failed: {lines[-1]}")


def _as_paths(overlays: str | Sequence[str] | None, root: Path) -> list[Path]:
    """Overlay paths from fire's list/tuple or a comma-separated string, relative to the repository root."""
    if overlays is None or overlays == "":
        return []
    items = overlays.split(",") if isinstance(overlays, str) else list(overlays)
    paths = []
    for item in items:
        p = Path(str(item).strip())
        p = p if p.is_absolute() or p.exists() else root / p
        if not p.is_file():
            raise ConfigError(f"{item}: overlay not found")
        paths.append(p)
    return paths


def export(
    ckpt: str = "models/model.pt",
    overlays: str | Sequence[str] | None = None,
    name: str = "mri_sr_rrdb_gan",
    version: str | None = None,
    output_dir: str = "dist",
    results: str | None = None,
    changelog: str | None = None,
    overwrite: bool = False,
    source_root: str | None = None,
    perceptual_ckpt: str | None = None,
) -> Path:
    """Write `<output_dir>/<name>/`, a standalone bundle of `ckpt` (see the module docstring); returns its path.

    Args:
        ckpt: the trained generator (a state dict; nested under "model" or "network" is accepted).
        overlays: config overlays the model was trained with, e.g. ['configs/demo.json'].
        name: the bundle's folder name (letters, digits, '_', '-', '.').
        version: X.Y.Z for metadata.json; default: the repository's version with the patch number bumped.
        output_dir: where the bundle folder goes.
        results: an evaluation summary.md or summary.json, appended to the model card.
        changelog: the changelog text for `version`.
        overwrite: replace an existing `<output_dir>/<name>`.
        source_root: the repository to export from (default: this one).
        perceptual_ckpt: the perceptual model (the same network, trained with the adversarial and perceptual
            terms), exported as models/perceptual/model.pt with the calibration.json and operator_estimator.pt
            found beside it (else the fidelity model's estimator: the release models share one).
    """
    root = Path(source_root).resolve() if source_root else ROOT
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only")
    dest = Path(output_dir).resolve() / str(name)  # ckpt_export runs in a subprocess with its own working directory
    if dest.exists() and not overwrite:
        raise OutputError(f"{dest}: already exists; pass --overwrite True to replace it")
    overlay_paths = _as_paths(overlays, root)
    inference, train, notes = exported_configs(root / "configs", overlay_paths)
    passes = inference.get("uncertainty", 0)
    inference["uncertainty"] = 0  # uncertainty passes only when asked: each costs one more network pass
    ckpt_path = Path(ckpt)
    state = load_weights(ckpt_path)
    check_fit(state, inference, train, root, ckpt_path, overlay_paths)
    perceptual_path = Path(perceptual_ckpt) if perceptual_ckpt else None
    perceptual = None
    if perceptual_path is not None:
        perceptual = load_weights(perceptual_path, "--perceptual_ckpt")
        check_fit(perceptual, inference, train, root, perceptual_path, overlay_paths)
    results_path = Path(results) if results else None
    if results_path is not None and not results_path.is_file():
        raise DatasetError(f"{results_path}: results file not found")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    entry = f"exported {ckpt_path.name} with overlays: {', '.join(p.name for p in overlay_paths) or 'none'}"
    if perceptual_path is not None:
        entry += f"; the perceptual model {perceptual_path.name} in {PERCEPTUAL_DIR}"
    meta = export_metadata(meta, version, changelog, entry)
    meta["description"] = describe_network(meta.get("description", ""), inference)

    def fill(folder: Path) -> None:
        configs = {"inference.json": inference, "train.json": train, "metadata.json": meta}
        write_bundle_files(folder, root, state, configs, ckpt_path)
        if perceptual is not None and perceptual_path is not None:
            write_perceptual(folder, perceptual, perceptual_path, ckpt_path)
        models = [
            n
            for n in (
                "model.pt",
                "model.ts",
                "operator_estimator.pt",
                "perceptual/model.pt",
                "perceptual/operator_estimator.pt",
            )
            if (folder / "models" / n).is_file()
        ]
        hashes = {f"models/{n}": file_sha256(folder / "models" / n) for n in models}
        _write_text(folder / "large_files.yml", large_files_yaml(hashes))
        card = model_card((root / "docs" / "README.md").read_text(), inference, overlay_paths, hashes, results_path)
        if perceptual is not None:
            card += perceptual_card(hashes, (folder / PERCEPTUAL_DIR / "calibration.json").is_file())
        else:
            card += FIDELITY_ONLY
        _write_text(folder / "docs" / "README.md", card + uncertainty_note(passes))

    replace_dir_atomically(dest, fill)
    for line in notes:
        print(line)
    print(f"exported {dest} (version {meta['version']})")
    return dest


def exported_configs(configs: Path, overlay_paths: Sequence[Path]) -> tuple[dict, dict, list[str]]:
    """inference.json and train.json with the overlays folded in, the ids MONAI's check_properties wants, and
    the bundle's code on sys.path whenever the network is built; plus the notes to print about what changed."""
    inference, skipped_i = merge_config(configs / "inference.json", overlay_paths)
    train, skipped_t = merge_config(configs / "train.json", overlay_paths)
    changes = add_property_ids(inference, "inference") + add_property_ids(train, "train")
    for config in (inference, train):
        config["network_def"]["_requires_"] = SYS_PATH_EXPRESSION
    notes = [f"added for MONAI's check_properties: {line}" for line in changes]
    if skipped_i or skipped_t:
        notes.append(f"overlay ids not in the base config, left out: inference {skipped_i}, train {skipped_t}")
    return inference, train, notes


def check_fit(
    state: dict[str, torch.Tensor], inference: dict, train: dict, root: Path, ckpt: Path, overlays: Sequence[Path]
) -> None:
    """One line unless the weights fit inference.json's network and train.json builds the same network; a
    checkpoint that does not fit names the overlay that would."""
    network = build_network(inference, root, device="meta")
    problem = shape_mismatch(state, network)
    if problem is not None:
        fits = _fitting_overlays(state, root / "configs")
        used = " + ".join(["configs/inference.json", *(_shown(p) for p in overlays)])
        hint = (
            f"it fits configs/inference.json + {', '.join(_shown(p) for p in fits)}"
            if fits
            else "it fits configs/inference.json alone" if fits == [] else "no single overlay in configs/ fits it"
        )
        raise CheckpointError(f"{ckpt}: does not fit network_def of {used} ({problem}); {hint}")
    if shape_mismatch(network.state_dict(), build_network(train, root, device="meta")) is not None:
        raise ConfigError("network_def: configs/train.json and configs/inference.json build different networks")


def write_bundle_files(
    folder: Path, root: Path, state: dict[str, torch.Tensor], configs: dict[str, dict], ckpt: Path
) -> None:
    """The bundle's files in `folder`: the weights (a plain CPU state dict, whatever nesting they came in), the
    TorchScript model, `configs` and logging.conf, the code, docs and MONAI Label app, the metadata schema for
    offline `verify_metadata`, and the calibration made for this model and the operator estimator (found beside the
    checkpoint)."""
    (folder / "models").mkdir()
    torch.save(state, folder / "models" / "model.pt")
    for config_name, config in configs.items():
        _write_text(folder / "configs" / config_name, json.dumps(config, indent=4))
    shutil.copyfile(root / "configs" / "logging.conf", folder / "configs" / "logging.conf")
    shutil.copyfile(root / "LICENSE", folder / "LICENSE")
    shutil.copytree(root / "bundle", folder / "bundle", ignore=CODE_IGNORE)
    shutil.copytree(root / "docs", folder / "docs", ignore=shutil.ignore_patterns("monailabel", "__pycache__"))
    shutil.copytree(root / "docs" / "monailabel", folder / "monailabel", ignore=APP_IGNORE)
    schema = root / "tests" / "assets" / Path(str(configs["metadata.json"].get("schema", ""))).name
    if schema.is_file():  # verify_metadata offline: --filepath <bundle>/docs/<schema name>
        shutil.copyfile(schema, folder / "docs" / schema.name)
    run_ckpt_export(folder)
    calibration = ckpt.with_name("calibration.json")
    if calibration.is_file():
        shutil.copyfile(calibration, folder / "models" / "calibration.json")
    else:
        logger.warning("%s: no uncertainty calibration beside the model; exported without one", calibration)
    estimator = ckpt.with_name("operator_estimator.pt")  # consistency_operator "auto" looks beside the model
    if estimator.is_file():
        shutil.copyfile(estimator, folder / "models" / "operator_estimator.pt")
    else:
        logger.warning("%s: no operator estimator beside the model; `auto` will not project", estimator)


def write_perceptual(folder: Path, state: dict[str, torch.Tensor], ckpt: Path, fidelity_ckpt: Path) -> None:
    """models/perceptual/ of the bundle: the perceptual weights (a plain CPU state dict), the calibration made for
    them and the operator estimator, each found beside `ckpt` (the estimator else beside the fidelity model: the
    release models share one), so `--ckpt_dir <bundle>/models/perceptual` gives inference all three."""
    target = folder / PERCEPTUAL_DIR
    target.mkdir(parents=True)
    torch.save(state, target / "model.pt")
    calibration = ckpt.with_name("calibration.json")
    if calibration.is_file():
        shutil.copyfile(calibration, target / "calibration.json")
    else:
        logger.warning("%s: no uncertainty calibration beside the perceptual model; exported without one", calibration)
    for estimator in (ckpt.with_name("operator_estimator.pt"), fidelity_ckpt.with_name("operator_estimator.pt")):
        if estimator.is_file():
            shutil.copyfile(estimator, target / "operator_estimator.pt")
            break
    else:
        logger.warning("%s: no operator estimator beside the perceptual model; `auto` will not project", ckpt)


def main() -> None:
    """The CLI: every failure is one line. Nothing half-made is left (the export builds in a temporary folder)."""
    try:
        fire.Fire(export)  # the bundle's own errors (BundleError) are one line already
    except (ValueError, KeyError, OSError, RuntimeError, json.JSONDecodeError) as err:  # a config or file problem
        sys.exit(f"error: export failed: {type(err).__name__}: {' '.join(str(err).split())}")


if __name__ == "__main__":
    main()
