"""The exported bundle's configs: the overlays folded in, the ids MONAI's check_properties needs, the bundle's
code on sys.path when the network is built, and metadata.json's version, changelog and description."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.properties import InferProperties, TrainProperties
from monai.bundle.reference_resolver import ReferenceResolver
from monai.utils import BundlePropertyConfig

from bundle.core.errors import ConfigError
from bundle.inference.overlays import merge_config

__all__ = ["add_property_ids", "describe_network", "export_metadata", "exported_configs"]


SYS_PATH_EXPRESSION = (
    "$None if os.path.abspath(@bundle_root) in sys.path else sys.path.insert(0, os.path.abspath(@bundle_root))"
)


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
        if not (isinstance(pid, str) and isinstance(ref, str)) or pid in parser or ref not in parser:
            continue
        if isinstance(parser[ref], str):
            continue
        pid_hash = ReferenceResolver.normalize_id(pid).replace(ReferenceResolver.sep, "#")
        ref_hash = ReferenceResolver.normalize_id(ref).replace(ReferenceResolver.sep, "#")
        parser.set(parser[ref], pid_hash)
        parser[ref_hash] = f"@{pid_hash}"
        changes.append(f"{workflow_type}: {ref_hash} moved to {pid_hash} and referenced as @{pid_hash}")
    return changes


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


def describe_network(description: str, config: dict) -> str:
    """metadata.json's description with the generator's size as exported (num_blocks, features, growth), where
    the repository's text gives the full-size default."""

    def value(key: str) -> Any:
        v = config.get("network_def", {}).get(key)
        return config.get(v[1:], v) if isinstance(v, str) and v.startswith("@") else v

    size = f"{value('num_blocks')} residual-in-residual dense blocks, {value('features')} features, growth {value('growth')}"
    return re.sub(r"\d+ residual-in-residual dense blocks(, \d+ features, growth \d+)?", size, description, count=1)
