"""The export itself: a trained generator (and optionally the perceptual model) as a standalone bundle folder,
built in a temporary sibling and renamed into place; see the package's docstring."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bundle.core.atomic import replace_dir_atomically
from bundle.core.digest import file_sha256
from bundle.core.errors import CheckpointError, ConfigError, DatasetError, OutputError
from bundle.export.card import (
    FIDELITY_ONLY,
    PERCEPTUAL_DIR,
    ROOT,
    large_files_yaml,
    model_card,
    perceptual_card,
    shown,
    uncertainty_note,
)
from bundle.export.configs import describe_network, export_metadata, exported_configs
from bundle.inference.generator import read_generator_state
from bundle.inference.overlays import build_network, fitting_overlays, shape_mismatch

logger = logging.getLogger(__name__)

__all__ = ["check_fit", "export", "load_weights", "write_bundle_files", "write_perceptual"]

APP_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "bin", "logs", "model", ".venv*")
CODE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def load_weights(path: Path, flag: str = "--ckpt") -> dict[str, torch.Tensor]:
    """The generator's state dict from `path`, as inference reads it (`bundle.inference.generator.read_generator_state`:
    plain, or nested under "model" or "network"; non-finite weights refused). Its advice names the export's
    flag (`--ckpt`, or `--perceptual_ckpt`)."""
    try:
        return read_generator_state(path)
    except CheckpointError as err:
        raise CheckpointError(err.message.replace("--ckpt_path", flag)) from None


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


def check_fit(
    state: dict[str, torch.Tensor], inference: dict, train: dict, root: Path, ckpt: Path, overlays: Sequence[Path]
) -> None:
    """One line unless the weights fit inference.json's network and train.json builds the same network; a
    checkpoint that does not fit names the overlay that would."""
    network = build_network(inference, root, device="meta")
    problem = shape_mismatch(state, network)
    if problem is not None:
        fits = fitting_overlays(state, root / "configs")
        used = " + ".join(["configs/inference.json", *(shown(p) for p in overlays)])
        hint = (
            f"it fits configs/inference.json + {' or '.join(shown(p) for p in fits)}"
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
